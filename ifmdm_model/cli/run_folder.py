"""Run folders on the command line: they are local paths (checkpoints, EMA weights, TensorBoard logs,
adapters are read and written on disk); an object-storage URL there is a one-line error with the copy
command that moves a run between disk and a bucket."""
from __future__ import annotations


def sync_hint(src: str, dst: str) -> str:
    """The copy command for a run folder between local disk and object storage."""
    url = src if "://" in src else dst
    if url.split("://", 1)[0].lower() in ("gs", "gcs"):
        return f"`gcloud storage rsync -r {src} {dst}`"
    return f"`aws s3 sync {src} {dst}`"


def reject_malformed_url(flag: str, value) -> None:
    """InputError (one line) for a mistyped object-storage URL (`ifmdm_data.io.storage.check_location`)."""
    from ifmdm_data.io.storage import check_location

    check_location(flag, value)


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
