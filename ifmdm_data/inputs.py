"""Resolve the `filter` inputs (folders, globs, files, CSV/Parquet lists) to a sorted list of
absolute paths with stable clip ids."""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from .errors import InputError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".ts", ".mts", ".wmv", ".3gp"}
PATH_COLUMNS = ("path", "video", "file", "filepath", "video_path")


def clip_id(path: str) -> str:
    """Stable id of an input file: the first 16 hex digits of sha1 of its absolute path."""
    return hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]


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
    return sorted({os.path.abspath(f) for f in found})
