"""Resolve the `filter` inputs (folders, globs, files, CSV/Parquet lists) to a sorted list of
absolute paths with stable clip ids."""
from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

from .errors import InputError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".ts", ".mts", ".wmv", ".3gp"}
PATH_COLUMNS = ("path", "video", "file", "filepath", "video_path")


def clip_id(path: str) -> str:
    """Stable id of an input file: the first 16 hex digits of sha1 of its absolute path's bytes
    (`path` as `resolve_inputs` gives it or as the file system does)."""
    return hashlib.sha1(os.fsencode(os.path.abspath(fs_path(path)))).hexdigest()[:16]


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


def _from_list(path: Path) -> list[str]:
    import pandas as pd

    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read the input list {path}: {e}") from None
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise InputError(f"{path}: no path column (expected one of: {', '.join(PATH_COLUMNS)}; "
                         f"found: {', '.join(map(str, df.columns))})")
    out = []
    for p in df[col].dropna().astype(str):
        out.append(p if os.path.isabs(p) else str(path.parent / p))
    return out


def resolve_inputs(args: list[str]) -> list[str]:
    """Each argument is a folder (searched recursively for video extensions), a glob, a video
    file, or a .csv/.parquet list with a path column (relative paths are relative to the list).

    Files named in a list that do not exist still become rows (`unreadable`): a list is data.
    A folder, glob or file argument that matches nothing is an up-front InputError.
    Paths come back in their manifest form (`manifest_path`: valid UTF-8, what every table and
    Ray row holds); the functions that open a file (`probe_file`, `load_audio`,
    `video.iter_frames`, `shard.make_sample`) map it back with `fs_path`.
    """
    if not args:
        raise InputError("no inputs given")
    found: list[str] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            hits = [str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and not f.is_dir()]
            if not hits:
                raise InputError(f"{arg}: folder has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
            found += hits
        elif p.suffix.lower() in (".csv", ".parquet") and p.is_file():
            found += _from_list(p)
        elif p.exists() or p.is_symlink():
            found.append(str(p))
        elif any(ch in arg for ch in "*?["):
            hits = [h for h in glob.glob(arg, recursive=True) if not os.path.isdir(h)]
            if not hits:
                raise InputError(f"{arg}: the pattern matches no file")
            found += hits
        else:
            raise InputError(f"{arg}: no such file or folder")
    return sorted({manifest_path(os.path.abspath(f)) for f in found})
