"""The fsspec filesystem (client) of an object-storage URL, made the one way this project
needs: the endpoint and credentials from the standard variables (see `storage`), listings never
cached, gcsfs's JSON-API class against an emulator, and a host name that does not resolve
reported at once. `storage` is the public face; this module only builds clients."""
from __future__ import annotations

import logging
import os

from ifmdm_data.errors import StorageError


def storage_options(protocol: str) -> dict:
    # the endpoint is part of the options so that fsspec's instance cache does not hand out a
    # client made for another endpoint (tests start servers on fresh ports)
    if protocol in ("s3", "s3a"):
        ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"endpoint_url": ep} if ep else {}
    if protocol in ("gs", "gcs"):
        ep = gcs_emulator()
        # an emulator takes no credentials (google-cloud-storage uses anonymous ones there too);
        # otherwise gcsfs's default chain: GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, metadata
        return {"endpoint_url": ep, "token": "anon"} if ep else {}
    return {}


def gcs_emulator() -> str | None:
    """`STORAGE_EMULATOR_HOST` as a URL (`host:port` gets `http://`), or None."""
    ep = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if not ep or ep == "default":
        return None
    return ep if "://" in ep else f"http://{ep}"


class _DropRaised(logging.Filter):
    """gcsfs logs, with its traceback, each error it then raises (`... out of retries`); the
    caller reports that error in one line, so the log record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


def _gcs_class(emulator: bool):
    """The gcsfs filesystem class. gcsfs >= 2026 defaults to `ExtendedGcsFileSystem`, which
    first asks the gRPC storage-control API for each bucket's layout (hierarchical / zonal);
    emulators implement only the JSON API (that call waits 60 s, then falls back), so with
    STORAGE_EMULATOR_HOST the plain JSON-API class is used (what the extended one falls back
    to for an ordinary bucket)."""
    import warnings

    with warnings.catch_warnings():   # google.api_core's notice about Python 3.11's end of life
        warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)
        import gcsfs
        import gcsfs.core
    log = logging.getLogger("gcsfs")
    if not any(isinstance(f, _DropRaised) for f in log.filters):
        log.addFilter(_DropRaised())
    return gcsfs.core.GCSFileSystem if emulator else gcsfs.GCSFileSystem


_RESOLVED: set = set()        # storage hosts whose name resolved in this process


def check_resolves(loc, protocol: str, endpoint: str | None) -> None:
    """StorageError at once when the storage service's host name does not resolve (no network or
    no DNS here): gcsfs otherwise spends ~15 s looking for credentials and ~30 s retrying the
    lookup, and s3fs retries too, before the same failure. Skipped behind an HTTP(S) proxy. The host: the endpoint's (AWS_ENDPOINT_URL,
    STORAGE_EMULATOR_HOST) or the service's public one (storage.googleapis.com, s3.amazonaws.com)."""
    import socket
    from urllib.parse import urlsplit

    if protocol not in ("s3", "s3a", "gs", "gcs"):
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return                                # a proxy resolves the name, not this machine
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    else:
        host, port = ("storage.googleapis.com" if protocol in ("gs", "gcs") else "s3.amazonaws.com"), 443
    if not host or host in _RESOLVED:
        return
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise StorageError(f"{loc}: cannot resolve {host} ({e.strerror if isinstance(e, socket.gaierror) else e}): "
                           "no network or DNS on this machine, or a wrong endpoint"
                           + (" (AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST)" if endpoint else "")) from None
    _RESOLVED.add(host)


def filesystem(loc):
    """(fsspec filesystem, path without protocol) of a URL; listings are never cached (other
    processes write the same prefixes). Raises StorageError when the scheme is unsupported or
    the storage service's host name does not resolve (`check_resolves`)."""
    import fsspec

    s = os.fspath(loc)
    protocol = s.split("://", 1)[0].lower()
    opts = storage_options(protocol)
    check_resolves(s, protocol, opts.get("endpoint_url"))
    try:
        if protocol in ("gs", "gcs"):
            fs = _gcs_class(emulator="endpoint_url" in opts)(use_listings_cache=False, **opts)
        else:
            fs = fsspec.filesystem(protocol, use_listings_cache=False, **opts)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{s}: no support for {protocol}:// ({e}); "
                           "for s3:// install s3fs, for gs:// gcsfs") from None
    return fs, fs._strip_protocol(s)


def is_gcs(fs) -> bool:
    return "gs" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def url_of(fs, path: str) -> str:
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{proto}://{path}"
