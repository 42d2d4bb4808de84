"""Run folders on the command line: they are local paths (checkpoints, EMA weights, TensorBoard logs,
adapters are read and written on disk); an object-storage URL there is a one-line error with the copy
command that moves a run between disk and a bucket."""
from __future__ import annotations

import re

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(/*)")


def sync_hint(src: str, dst: str) -> str:
    """The copy command for a run folder between local disk and object storage."""
    url = src if "://" in src else dst
    if url.split("://", 1)[0].lower() in ("gs", "gcs"):
        return f"`gcloud storage rsync -r {src} {dst}`"
    return f"`aws s3 sync {src} {dst}`"


def reject_malformed_url(flag: str, value) -> None:
    """InputError (one line) for a value that reads as a mistyped object-storage URL: a scheme
    with one or three slashes (`s3:/bucket/x`) or in capitals (`S3://bucket/x`). Left alone, the
    first would become a local folder named `s3:` and the second fails deep in the S3 client."""
    from ifmdm_data.errors import InputError

    m = _SCHEME.match(str(value)) if value is not None else None
    if m is None or not m.group(2) or (m.group(2) == "//" and m.group(1) == m.group(1).lower()):
        return
    raise InputError(f"{flag} {value}: not a valid object-storage URL (write {m.group(1).lower()}://bucket/key: "
                     "the scheme in lower case, then two slashes)")


def reject_url_run_folder(flag: str, value, writes: str | None = None, example: str = "runs/x",
                          what: str = "the run folder") -> None:
    """InputError (one line) when a run folder argument is an object-storage URL: run folders
    (checkpoints, logs, adapters) are read and written on local disk only. `writes`: what the
    command writes there (an output run folder), else the folder is read (an input run)."""
    from ifmdm_data.errors import InputError
    from ifmdm_data.io import storage

    reject_malformed_url(flag, value)
    if value is None or not storage.is_url(str(value)):
        return
    v = str(value)
    if writes:
        raise InputError(f"{flag} {v}: {what} must be a local path ({writes} written locally; copy "
                         f"it to object storage afterwards, e.g. {sync_hint(example, v)})")
    raise InputError(f"{flag} {v}: {what} must be a local path (its checkpoints are read from local "
                     f"disk; copy it from object storage first, e.g. {sync_hint(v, example)}, then "
                     f"pass {flag} {example})")
