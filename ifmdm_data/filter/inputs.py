"""Resolve the `filter` inputs (folders, globs, files, CSV/Parquet lists; local or object
storage URLs such as `s3://bucket/prefix`) to a sorted list of locations with stable clip ids.

Clip ids survive a move: a clip's id hashes its *key*, the path relative to the input root it
was found under (see `resolve_keyed`), not its absolute path, so the same dataset mounted at
another path or copied to a bucket keeps its ids (and a resumed run its finished work).
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ifmdm_data.io import storage
from ifmdm_data.io.paths import manifest_path
from ifmdm_data.errors import InputError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".ts", ".mts", ".wmv", ".3gp"}
PATH_COLUMNS = ("path", "video", "file", "filepath", "video_path")
ID_COLUMN = "id"


def key_under(path: str, root: str) -> str:
    """`path` relative to `root`, '/'-separated (both local or both URLs)."""
    if storage.is_url(path):
        return path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/") + "/") else storage.name(path)
    return Path(os.path.relpath(path, root)).as_posix()


def glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard component."""
    head = []
    for part in pattern.split("/"):
        if any(ch in part for ch in "*?["):
            break
        head.append(part)
    return "/".join(head) or "."


def read_input_list(loc: str) -> list[tuple[str, str]]:
    """(location, key) of every entry of a CSV / Parquet input list (its path column; the key is
    the `id` column when present, else the path as written or relative to a shared folder)."""
    import pandas as pd

    try:
        with storage.open_read(loc) as f:
            df = pd.read_parquet(f) if loc.endswith(".parquet") else pd.read_csv(f)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read the input list {loc}: {e}") from None
    col = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if col is None:
        raise InputError(f"{loc}: no path column (expected one of: {', '.join(PATH_COLUMNS)}; "
                         f"found: {', '.join(map(str, df.columns))})")
    df = df[df[col].notna()]
    base = storage.parent(loc) if storage.is_url(loc) else str(Path(loc).parent)
    raw = [str(p) for p in df[col]]
    paths = [p if storage.is_url(p) or os.path.isabs(p) else storage.join(base, p) for p in raw]
    if ID_COLUMN in df.columns:
        ids = df[ID_COLUMN]
        if ids.isna().any() or ids.astype(str).duplicated().any():
            raise InputError(f"{loc}: the '{ID_COLUMN}' column has empty or repeated values")
        return [(p, f"id:{i}") for p, i in zip(paths, ids.astype(str))]
    # relative entries: as written; absolute ones: relative to the folder they all share
    absolute = [p for p, r in zip(paths, raw) if storage.is_url(r) or os.path.isabs(r)]
    common = ""
    if absolute:
        dirs = [storage.parent(p) for p in absolute]
        if all(storage.is_url(d) for d in dirs):
            common = posixpath.commonpath([d.split("://", 1)[1] for d in dirs])
            common = f"{dirs[0].split('://', 1)[0]}://{common}"
        elif not any(storage.is_url(d) for d in dirs):
            common = os.path.commonpath([os.path.abspath(d) for d in dirs])
    out = []
    for p, r in zip(paths, raw):
        if storage.is_url(r) or os.path.isabs(r):
            key = key_under(p if storage.is_url(p) else os.path.abspath(p), common) if common else storage.name(p)
        else:
            key = posixpath.normpath(r.replace(os.sep, "/"))
        out.append((p, key))
    return out


def resolve_keyed(args: list[str]) -> list[tuple[str, str]]:
    """(location, key) of every input, sorted by location; `clip_id(key)` is the clip id.

    Each argument is a folder / object-storage prefix (searched recursively for video
    extensions), a glob, a video file, or a .csv/.parquet list with a path column (relative
    paths are relative to the list). The key is the file's path relative to its argument: to
    the folder for a folder, to the part before the first wildcard for a glob, the base name
    for a single file; for a list, its `id` column when it has one (key `id:<value>`), else
    the path as written when relative, else relative to the folder all its absolute paths share.

    Files named in a list that do not exist still become rows (`unreadable`): a list is data.
    A folder, glob or file argument that matches nothing is an up-front InputError, and so are
    two different files with the same key (e.g. `a/x.mp4` and `b/x.mp4` given as the folders
    `a` and `b`: give their parent folder instead). Local paths come back absolute, in their
    manifest form (`manifest_path`: valid UTF-8, what every table and Ray row holds); the
    functions that open a file map it back with `fs_path`. URLs come back as given.
    """
    if not args:
        raise InputError("no inputs given")
    found: list[tuple[str, str]] = []
    for arg in args:
        remote = storage.is_url(arg)
        p = Path(storage.local(arg)) if not remote else None
        is_list = arg.lower().endswith((".csv", ".parquet"))
        try:
            if p.is_dir() if p is not None else storage.isdir(arg):
                hits = storage.find(arg, tuple(VIDEO_EXTENSIONS))
                if not hits:
                    raise InputError(f"{arg}: folder has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
                root = arg.rstrip("/") if remote else os.path.abspath(storage.local(arg))
                found += [(h, key_under(h if remote else os.path.abspath(h), root)) for h in hits]
            elif is_list and storage.isfile(arg):
                found += read_input_list(arg)
            elif (p.exists() or p.is_symlink()) if p is not None else storage.isfile(arg):
                found.append((arg if remote else str(p), storage.name(arg)))
            elif any(ch in arg for ch in "*?["):
                hits = storage.glob(arg)
                if not hits:
                    raise InputError(f"{arg}: the pattern matches no file")
                root = glob_root(arg)
                root = root if remote else os.path.abspath(storage.local(root))
                found += [(h, key_under(h if remote else os.path.abspath(h), root)) for h in hits]
            else:
                raise InputError(f"{arg}: no such file or folder")
        except storage.StorageError as e:
            raise InputError(str(e) if str(e).startswith(arg) else f"{arg}: cannot list it: {e}") from None
    by_path: dict[str, str] = {}
    for f, key in found:
        loc = f if storage.is_url(f) else manifest_path(os.path.abspath(f))
        by_path.setdefault(loc, manifest_path(key))
    by_key: dict[str, str] = {}
    for loc, key in sorted(by_path.items()):
        other = by_key.setdefault(key, loc)
        if other != loc:
            raise InputError(f"{other} and {loc} get the same clip id (the same path '{key}' relative "
                             f"to their input arguments): give their common parent folder, or a "
                             f"list with an '{ID_COLUMN}' column")
    return sorted(by_path.items())


def resolve_inputs(args: list[str]) -> list[str]:
    """The locations of `resolve_keyed` (sorted), without keys."""
    return [loc for loc, _ in resolve_keyed(args)]
