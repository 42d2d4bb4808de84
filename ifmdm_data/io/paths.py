"""File names as manifests store them: the stable id of an input (`clip_id`) and the escaped,
valid-UTF-8 form of a name that is not UTF-8 (`manifest_path`, its inverse `fs_path`), shared
by every stage that writes or opens a manifest's `path`."""
from __future__ import annotations

import hashlib
import os
import re


def clip_id(key: str) -> str:
    """Stable id of an input file: the first 16 hex digits of sha1 of its key's UTF-8 bytes
    (the key as `resolve_keyed` gives it: the path relative to its input root, '/'-separated,
    in manifest form; or `id:<value>` for a list's `id` column)."""
    return hashlib.sha1(str(key).encode("utf-8", "surrogateescape")).hexdigest()[:16]


# File names that are not UTF-8 (issue 11 E). POSIX names are bytes; Python holds a name with a
# byte that is not UTF-8 (b"caf\xe9.mp4", Latin-1 media) as a str with a lone surrogate
# (os.fsdecode, "surrogateescape"), which opens the file but cannot go into Parquet, pandas'
# Arrow strings or JSON, so every table and Ray row holds the manifest form instead. Manifests
# therefore store such a path in an escaped, valid-UTF-8 form: each undecodable byte as the four
# characters `\xNN` and each literal backslash as `\\`. Paths that are UTF-8 (nearly all) are
# stored unchanged. `fs_path` undoes it when the text holds an escaped byte (`\x80`..`\xff`) and
# does not name an existing file as it is; the only ambiguous case is a UTF-8 name that
# literally contains such `\xNN` text and is missing (or has a non-UTF-8 twin).


def manifest_path(path: str) -> str:
    """`path` (str, possibly holding surrogate-escaped bytes) -> the str stored in manifests."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "".join("\\\\" if ch == "\\" else
                       f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else ch
                       for ch in path)


_ESCAPE = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F])")
_ESCAPED_BYTE = re.compile(r"\\x[89a-fA-F][0-9a-fA-F]")   # only bytes >= 0x80 are escaped


def fs_path(text: str) -> str:
    """The inverse of `manifest_path`: the path to open (str, surrogate-escaped like
    os.fsdecode) for a manifest's `path` value."""
    text = str(text)
    if not _ESCAPED_BYTE.search(text) or os.path.lexists(text):
        return text
    raw = _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)
    return os.fsdecode(raw.encode("utf-8", "surrogateescape"))
