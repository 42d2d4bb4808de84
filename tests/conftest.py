"""Shared fixtures: one local Ray per session, the sample set and its filtered manifests."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"


def media(*parts: str) -> Path:
    """A file of ../shared/media, or skip the test with the reason."""
    p = MEDIA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real media not found at {p} (../shared/media is absent)")
    return p


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A real S3 API server (moto's server mode) on a free 127.0.0.1 port holding an empty
    `bucket`; the standard AWS variables (AWS_ENDPOINT_URL, keys, region) point at it while the
    block runs. Yields "s3://<bucket>"."""
    from moto.server import ThreadedMotoServer

    from ifmdm_data.io import storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                         "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
                mp.setenv(k, v)
            fs, _ = storage.filesystem(f"s3://{bucket}")
            fs.mkdir(bucket)
            yield f"s3://{bucket}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # address="local": never join a `ray start` cluster another process left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    from ifmdm_data.sample import make_sample_set

    out = tmp_path_factory.mktemp("sample")
    make_sample_set(out)
    return out


@pytest.fixture(scope="session")
def sample_manifests(ray_session, sample_dir, tmp_path_factory):
    from ifmdm_data.filter.config import load_config
    from ifmdm_data.filter.pipeline import run_filter

    out = tmp_path_factory.mktemp("manifests")
    summary = run_filter([str(sample_dir)], str(out), load_config(), workers=2, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def sample_shards(sample_manifests, tmp_path_factory):
    """Shards of the sample set at 64 px (log-mel features), for loader and trainer tests."""
    from ifmdm_data.shard.segment import ShardConfig
    from ifmdm_data.shard.pipeline import run_shard

    out = tmp_path_factory.mktemp("shards")
    # one sample per shard: several shards per subset, so DDP ranks and loader workers all get data
    run_shard(str(sample_manifests[0]), str(out), cfg=ShardConfig(size=64, preset="veryfast", target_shard_bytes=1),
              workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    the test machine is shared, one thread is faster than two fighting for cores."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
