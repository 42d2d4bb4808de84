"""Local paths and object-storage URLs (`s3://bucket/key`, `gs://...`): the one module that
knows the difference. Every other module reads, lists and writes through these functions.

A *location* is a str: a local path (absolute or relative, as before) or a URL with a scheme
fsspec knows (`s3://`, `gs://`, `memory://`; `file://` is treated as local). Object storage is
reached with fsspec (s3fs for `s3://`, gcsfs for `gs://`); credentials and the endpoint come
from the standard variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_PROFILE`; for `gs://`
`GOOGLE_APPLICATION_CREDENTIALS` or gcloud's application-default login, and
`STORAGE_EMULATOR_HOST` for a GCS emulator, reached without credentials as Google's own clients
do): nothing is hard-coded.

Writes are atomic everywhere: `atomic_local(loc)` hands out a local file to write; on success it
becomes `loc` in one step (local: rename in the same folder; object storage: upload to a hidden
temporary key `.<name>.<random>.tmp` beside it, then a server-side copy to the final key and
the temporary deleted: s3fs's `mv`; on GCS the same two calls, spelled out, since gcsfs's `mv`
tries the newer `moveTo` call first, which emulators lack), so a reader never sees a
half-written object under a final name and a killed writer leaves at most a hidden `.tmp`
(which no listing of `*.parquet` / `*.tar` matches).

Errors of the storage itself (no bucket, no permission, endpoint unreachable) in the queries
(`exists`, `isdir`, `isfile`, `find`, `glob`, `list_names`), uploads (`atomic_local`,
`commit_file`, `check_writable`) and `spool` raise `StorageError`: one line naming the
location, never a per-clip rejection. Reads (`open_read`, `read_parquet`) raise
FileNotFoundError for a missing object and the client's own error otherwise.

The clients themselves (endpoint, credentials, gcsfs's class) are made in `ifmdm_data.io.clients`.

Traps: fsspec caches directory listings by default (stale after another process writes), so
every filesystem here is made with `use_listings_cache=False`; and a Ray worker started
before the AWS_* / GCS variables were set does not see them, so the drivers pass `forward_env()` to
their tasks and actors, which call `apply_env` first.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from ifmdm_data.errors import SpoolLimitError, StorageError  # noqa: F401  (re-exported)
from ifmdm_data.io.clients import filesystem, is_gcs, storage_options, url_of

# environment variables the object-storage clients read; forwarded to Ray workers
ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG", "GCSFS_DEFAULT_PROJECT", "STORAGE_EMULATOR_HOST")
# largest file `spool` copies to local disk (bytes); IFMDM_SPOOL_MAX_BYTES overrides
SPOOL_MAX_BYTES = 20 * 1024 ** 3


def is_url(loc) -> bool:
    """True for a URL with a scheme other than `file://` (object storage)."""
    s = os.fspath(loc) if not isinstance(loc, str) else loc
    head, sep, _ = s.partition("://")
    return bool(sep) and head.isidentifier() and head.lower() != "file" and len(head) > 1


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(/*)(.*)", re.S)


def check_location(flag: str, value) -> None:
    """InputError (one line) for a command-line location that reads as a mistyped object-storage
    URL, before anything is read or written: a scheme with one or three slashes (`s3:/bucket/x`,
    `s3:///x`: no bucket), in capitals (`S3://bucket/x`), without a bucket (`s3://`, `s3:///x`)
    or with an empty key component (`s3://bucket//x`, usually a join of a trailing slash: S3
    would store a different key than the user meant). Left alone, the first would become a
    local folder named `s3:`, the others fail deep in the client or read nothing. Local paths
    (no `scheme:` prefix, or a one-letter one such as a Windows drive) and `file://` pass."""
    from ifmdm_data.errors import InputError

    if value is None:
        return
    v = os.fspath(value)
    m = _SCHEME.match(v)
    if m is None or len(m.group(1)) < 2 or not m.group(2):
        return
    scheme, slashes, rest = m.groups()
    want = scheme.lower()
    if want == "file":
        return
    why = None
    if scheme == want and slashes == "///" or slashes == "//" and not rest.split("/", 1)[0]:
        why = "no bucket after the scheme"
    elif slashes != "//" or scheme != want:
        why = "the scheme in lower case, then two slashes"
    elif "//" in rest.rstrip("/"):
        why = "an empty path component ('//') in the key"
    if why:
        raise InputError(f"{flag} {v}: not a valid object-storage URL ({why}; write {want}://bucket/key)")


def local(loc) -> str:
    """A local location as a plain path (`file://` stripped)."""
    s = os.fspath(loc)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base, *parts: str) -> str:
    """`base` / parts with '/' for URLs (no normalisation), os.path.join for local paths."""
    base = os.fspath(base)
    if is_url(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts if p])
    return os.path.join(local(base), *parts)


def name(loc) -> str:
    """Last component of a location (the file name)."""
    return os.fspath(loc).rstrip("/").rsplit("/", 1)[-1]


def parent(loc) -> str:
    s = os.fspath(loc).rstrip("/")
    if is_url(s):
        return s.rsplit("/", 1)[0]
    return os.path.dirname(local(s))



def _wrap(loc, e: Exception) -> StorageError:
    return StorageError(f"{loc}: {type(e).__name__}: {e}".splitlines()[0][:400])


# ------------------------------------------------------------------------------------------
# queries


_BUCKETS_SEEN: set = set()      # (protocol, endpoint, bucket) known to exist in this process


def _check_bucket(loc, fs, path: str) -> None:
    """Called when a query found nothing at `loc`: a StorageError when its bucket itself does not
    exist (so that a mistyped bucket reads as that, not as "no manifest here"). Asked once per
    bucket and process; an error while asking (no permission to list buckets) says nothing."""
    bucket = path.split("/", 1)[0]
    protocol = os.fspath(loc).split("://", 1)[0].lower()
    ep = storage_options(protocol).get("endpoint_url", "")
    key = (protocol, ep, bucket)
    if not bucket or key in _BUCKETS_SEEN:
        return
    try:
        there = fs.exists(bucket)
    except Exception:  # noqa: BLE001 - cannot tell: leave the caller's "not found"
        return
    if there:
        _BUCKETS_SEEN.add(key)
        return
    where = f" at {ep}" if ep else ""
    raise StorageError(f"{loc}: bucket '{bucket}' does not exist{where} (or these credentials cannot see it)")


def _ask(loc, local_test, method: str) -> bool:
    """A yes/no query: `local_test(path)` for a local path, `fs.<method>(path)` for a URL
    (a missing object is False; a missing bucket or a storage failure is a StorageError)."""
    if not is_url(loc):
        return local_test(local(loc))
    fs, p = filesystem(loc)
    try:
        found = getattr(fs, method)(p)
    except FileNotFoundError:
        found = False
    except Exception as e:  # noqa: BLE001 - no bucket access, endpoint down
        raise _wrap(loc, e) from None
    if not found:
        _check_bucket(loc, fs, p)
    return found


def exists(loc) -> bool:
    return _ask(loc, os.path.exists, "exists")


def isdir(loc) -> bool:
    """A local folder, or an object-storage prefix that holds at least one object."""
    if is_url(loc):
        fs, p = filesystem(loc)
        if is_gcs(fs):   # gcsfs's isdir answers False to any OSError, an endpoint that is down included
            try:
                return fs.info(p)["type"] == "directory"
            except FileNotFoundError:
                _check_bucket(loc, fs, p)
                return False
            except Exception as e:  # noqa: BLE001
                raise _wrap(loc, e) from None
    return _ask(loc, os.path.isdir, "isdir")


def isfile(loc) -> bool:
    """A local file, or an object. (fsspec's own `isfile` answers False to any error, an
    endpoint that is down included; this one asks `info`, so that such a failure is a
    StorageError, not "no such file".)"""
    if not is_url(loc):
        return os.path.isfile(local(loc))
    fs, p = filesystem(loc)
    try:
        return fs.info(p)["type"] == "file"
    except FileNotFoundError:
        _check_bucket(loc, fs, p)
        return False
    except Exception as e:  # noqa: BLE001 - no bucket access, endpoint down
        raise _wrap(loc, e) from None


def size(loc) -> int:
    """Bytes of a file / object; FileNotFoundError when absent."""
    if not is_url(loc):
        return os.path.getsize(local(loc))
    fs, p = filesystem(loc)
    return int(fs.size(p))


def find(loc, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every file under a folder / prefix, recursively, as locations of the same kind (sorted);
    only names ending in one of `suffixes` (lower-cased compare) when given."""
    if not is_url(loc):
        root = Path(local(loc))
        hits = [str(f) for f in root.rglob("*") if not f.is_dir()]
    else:
        fs, p = filesystem(loc)
        try:
            hits = [url_of(fs, h) for h in fs.find(p)]
        except FileNotFoundError:
            hits = []
        except Exception as e:  # noqa: BLE001
            raise _wrap(loc, e) from None
        if not hits:
            _check_bucket(loc, fs, p)
    if suffixes:
        hits = [h for h in hits if h.lower().endswith(tuple(s.lower() for s in suffixes))]
    return sorted(hits)


def glob(pattern: str) -> list[str]:
    """Files (not folders) matching a glob (`**` recursive), sorted, as locations."""
    if not is_url(pattern):
        return sorted(h for h in _glob.glob(local(pattern), recursive=True) if not os.path.isdir(h))
    fs, p = filesystem(pattern)
    try:
        hits = fs.glob(p, detail=True)
    except FileNotFoundError:
        hits = {}
    except Exception as e:  # noqa: BLE001
        raise _wrap(pattern, e) from None
    if not hits:
        _check_bucket(pattern, fs, p)
    return sorted(url_of(fs, h) for h, info in hits.items() if info.get("type") != "directory")


def list_names(folder, suffix: str) -> list[str]:
    """Names (not paths) of the files directly in `folder` ending in `suffix`, hidden ones
    (temporaries) left out; [] when the folder does not exist."""
    if not is_url(folder):
        d = Path(local(folder))
        return sorted(p.name for p in d.glob(f"*{suffix}") if not p.name.startswith(".")) if d.is_dir() else []
    fs, p = filesystem(folder)
    try:
        names = [h.rstrip("/").rsplit("/", 1)[-1] for h in fs.ls(p, detail=False)]
    except FileNotFoundError:
        _check_bucket(folder, fs, p)
        return []
    except Exception as e:  # noqa: BLE001
        raise _wrap(folder, e) from None
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


# ------------------------------------------------------------------------------------------
# reading


def open_read(loc):
    """A binary file object for reading (use in `with`)."""
    if not is_url(loc):
        return open(local(loc), "rb")
    fs, p = filesystem(loc)
    return fs.open(p, "rb")


def read_bytes(loc) -> bytes:
    with open_read(loc) as f:
        return f.read()


def read_text(loc) -> str:
    return read_bytes(loc).decode("utf-8")


def read_parquet(loc, columns=None):
    """pyarrow Table of a Parquet file (local or object storage)."""
    import pyarrow.parquet as pq

    if not is_url(loc):
        return pq.read_table(local(loc), columns=columns)
    with open_read(loc) as f:
        return pq.read_table(f, columns=columns)


@contextlib.contextmanager
def spool(loc, max_bytes: int | None = None):
    """A local file path holding the content of `loc`, for tools that need a file (ffprobe,
    PyAV, decord). A local location is yielded as it is (nothing copied); an object is
    downloaded to a private temporary folder that is removed when the block ends, however it
    ends. Raises FileNotFoundError when the object does not exist and StorageError when it is
    larger than `max_bytes` (default $IFMDM_SPOOL_MAX_BYTES or 20 GiB) or than the free space
    of the temporary folder ($TMPDIR) (SpoolLimitError: callers make it that clip's failure)."""
    if not is_url(loc):
        yield local(loc)
        return
    fs, p = filesystem(loc)
    try:
        n = int(fs.size(p))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - no access, endpoint down: not the clip's fault
        raise _wrap(loc, e) from None
    limit = max_bytes or int(os.environ.get("IFMDM_SPOOL_MAX_BYTES", SPOOL_MAX_BYTES))
    tmpdir = tempfile.mkdtemp(prefix="ifmdm-spool-")
    try:
        free = shutil.disk_usage(tmpdir).free
        if n > limit or n > free:
            raise SpoolLimitError(f"{loc}: {n / 1e9:.2f} GB is more than the local spool allows "
                               f"({min(limit, free) / 1e9:.2f} GB: IFMDM_SPOOL_MAX_BYTES / free space of {tmpdir})")
        dst = os.path.join(tmpdir, "media" + os.path.splitext(name(loc))[1][:16])
        try:
            fs.get_file(p, dst)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _wrap(loc, e) from None
        yield dst
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# writing


def readable_mode(path: str) -> None:
    """mkstemp creates 0600 files: give the final file the usual umask-derived mode, so that
    other users of a shared cluster file system can read the manifests."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def makedirs(loc) -> None:
    """Create a local folder (and parents); object storage has no folders: nothing to do."""
    if not is_url(loc):
        os.makedirs(local(loc), exist_ok=True)


@contextlib.contextmanager
def atomic_local(loc):
    """Yield a local temporary path to write; when the block ends without an exception, the
    file becomes `loc` atomically (see the module doc); otherwise it is deleted. Raises
    StorageError when the object store refuses the upload."""
    dst = os.fspath(loc)
    if not is_url(dst):
        dst = local(dst)
        folder = os.path.dirname(dst) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            yield tmp
            readable_mode(tmp)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fd, tmp = tempfile.mkstemp(prefix="ifmdm-upload-", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        commit_file(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def commit_file(local_file: str, loc) -> None:
    """Upload / move a finished local file to `loc` atomically (the local file is consumed)."""
    dst = os.fspath(loc)
    if not is_url(dst):
        os.makedirs(os.path.dirname(local(dst)) or ".", exist_ok=True)
        os.replace(local_file, local(dst))
        return
    fs, p = filesystem(dst)
    folder, _, base = p.rpartition("/")
    tmp_key = f"{folder}/.{base}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fs.put_file(local_file, tmp_key)
        if is_gcs(fs):
            fs.cp_file(tmp_key, p)          # server-side rewrite: the final object appears whole
            fs.rm_file(tmp_key)
        else:
            fs.mv(tmp_key, p)
    except Exception as e:  # noqa: BLE001
        with contextlib.suppress(Exception):
            fs.rm_file(tmp_key)
        raise _wrap(dst, e) from None
    os.unlink(local_file)


def write_bytes_atomic(data: bytes, loc) -> None:
    with atomic_local(loc) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def remove(loc) -> None:
    """Delete one file / object if it exists."""
    if not is_url(loc):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local(loc))
        return
    fs, p = filesystem(loc)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(p)


def remove_tree(loc) -> None:
    """Delete a folder / every object under a prefix, if any."""
    if not is_url(loc):
        shutil.rmtree(local(loc), ignore_errors=True)
        return
    fs, p = filesystem(loc)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(p):
            fs.rm(p, recursive=True)


def check_writable(loc) -> None:
    """Write, read back and delete a small object under `loc`; StorageError (one line) if any
    step fails. Used before a run starts, so that a bad bucket fails fast."""
    probe = join(loc, "_work", f".write-check-{uuid.uuid4().hex[:12]}")
    if is_url(loc):                           # a missing bucket reads as that (`_check_bucket`)
        fs, p = filesystem(loc)
        _check_bucket(loc, fs, p)
    try:
        write_bytes_atomic(b"ok", probe)
        if read_bytes(probe) != b"ok":
            raise StorageError(f"{loc}: a test object read back differently")
        remove(probe)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"cannot write to {loc}: {type(e).__name__}: {e}".splitlines()[0][:400]) from None


# ------------------------------------------------------------------------------------------
# Ray workers


def prepare_output(loc):
    """Create the output folder `loc` and check it can be written (object storage: a test
    object). Returns it as a Path (local) or a URL str without a trailing '/'. Raises
    StorageError (one line naming the folder) when it cannot be created or written."""
    out = str(loc).rstrip("/") if is_url(loc) else Path(loc)
    try:
        makedirs(out)
        if is_url(out):
            check_writable(out)             # a bad bucket / credentials fail here, in one line
    except OSError as e:
        raise StorageError(f"cannot create the output folder {out}: {e}") from None
    return out


def forward_env() -> dict:
    """The storage variables set in this process, to hand to Ray workers (`apply_env`): a
    worker started before they were set (a long-lived local Ray) would not see them."""
    return {k: os.environ[k] for k in ENV_VARS if k in os.environ}


def apply_env(env: dict | None) -> None:
    """Set the variables of `forward_env` in a worker process."""
    for k, v in (env or {}).items():
        os.environ[k] = v
