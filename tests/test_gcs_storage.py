"""gs:// end to end, against a GCS JSON-API emulator started here (gcp-storage-emulator, in this
process on 127.0.0.1, reached through STORAGE_EMULATOR_HOST as Google's own clients reach one):
`ifmdm-data filter gs://...` then `ifmdm-data shard gs://...` (the CLI, on the session's Ray) equal
the session's local run row for row and leave no hidden temporary object; the stage-1 loader
streams the gs:// shards; an upload whose last step fails leaves neither the object nor its
temporary; an endpoint that is down is one line and exit code 2.

The three short clips and the comparisons of the s3:// tests (tests/test_object_storage.py)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_port
from ifmdm_data.io import storage
from test_object_storage import (NOT_COMPARED, _clips, _index, _ours,  # noqa: F401
                                 clips_local, local_run)   # clips_local, local_run: fixtures

CLI = [sys.executable, "-m", "ifmdm_data.cli"]
BUCKET = "ifmdm-gcs-test"
ENV = dict(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")


@pytest.fixture(scope="session")
def unreachable_run(tmp_path_factory):
    """`filter` from a bucket whose endpoint is down (a port nobody listens on), started first:
    gcsfs retries 6 times (~35 s of back-off) before it gives up, which overlaps the rest."""
    env = dict(os.environ, **ENV, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}")
    out = tmp_path_factory.mktemp("gcs-down") / "m"
    proc = subprocess.Popen(CLI + ["filter", f"gs://{BUCKET}/raw/videos", "-o", str(out), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def gcs_server():
    """The emulator on a free port (in memory), with STORAGE_EMULATOR_HOST pointing at it."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        yield f"gs://{BUCKET}"
    server.stop()


@pytest.fixture(scope="module")
def clips_gs(gcs_server, clips_local) -> str:
    fs, _ = storage.filesystem(gcs_server)
    for f in sorted(clips_local.iterdir()):
        fs.put_file(str(f), f"{BUCKET}/raw/videos/{f.name}")
    return f"{gcs_server}/raw/videos"


@pytest.fixture(scope="module")
def gs_run(ray_session, clips_gs, gcs_server):
    """The two commands of a user (`ifmdm-data` is `cli.main`), in this process: they join the
    session's Ray, whose workers started before STORAGE_EMULATOR_HOST was set and see it only
    through `forward_env`. Shards as the local run's: 64 px, one sample a tar."""
    from ifmdm_data.cli import main

    m, s = f"{gcs_server}/run/manifests", f"{gcs_server}/run/shards"
    assert main(["filter", clips_gs, "-o", m, "--workers", "2", "--no-progress"]) == 0
    assert main(["shard", m, "-o", s, "--size", "64", "--shard-size", "1e-9", "--workers", "2", "--no-progress"]) == 0
    return m, s


def test_filter_and_shard_cli_on_gs_equal_the_local_run(unreachable_run, local_run, gs_run, clips_gs):
    lm, ls = local_run
    gm, gsh = gs_run
    got, ref = _clips(gm), _ours(_clips(lm))
    assert len(ref) >= 3 and ref["accepted"].sum() >= 2
    assert got["path"].tolist() == [f"{clips_gs}/{Path(p).name}" for p in ref["path"]]
    cols = [c for c in ref.columns if c not in NOT_COMPARED]
    pd.testing.assert_frame_equal(got[cols], ref[cols])
    for c in ("identity_id", "dup_group"):
        assert pd.factorize(got[c])[0].tolist() == pd.factorize(ref[c])[0].tolist(), c
    for name in ("coarse", "lip", "hard", "rejected"):
        assert len(storage.read_parquet(f"{gm}/{name}.parquet")) == len(_ours(pd.read_parquet(lm / f"{name}.parquet")))
    saved = json.loads(storage.read_text(f"{gm}/summary.json"))
    assert sum(saved["subsets"].values()) == int(ref["accepted"].sum())
    for seg in ref["segment_id"][ref["accepted"]]:
        from ifmdm_data.schema import read_segment_tracks
        assert read_segment_tracks(gm, seg)[0].equals(read_segment_tracks(lm, seg)[0])
    idx_g, idx_l = _index(gsh), _index(ls, set(ref["segment_id"]))
    assert len(idx_g) == int(ref["accepted"].sum())
    pd.testing.assert_frame_equal(idx_g.drop(columns=["shard", "bytes"]), idx_l.drop(columns=["shard", "bytes"]))
    assert all(storage.isfile(f"{gsh}/{t}") for t in idx_g["shard"])
    # no hidden temporary object anywhere under the run (every final object was copied from one)
    fs, _ = storage.filesystem(gm)
    objects = fs.find(f"{BUCKET}/run")
    assert objects and [p for p in objects if p.rsplit("/", 1)[-1].startswith(".")] == []


def test_stage1_loader_streams_gs_shards(local_run, gs_run, tmp_path):
    """Ranged reads of the gs:// tars give what the same tars give on disk (downloaded whole
    here); the samples and frame pairs are the local run's (its pixels differ: the CLI encodes
    with the default preset, the session's shards with veryfast)."""
    from ifmdm_data.loaders import list_shards, stage1_dataset

    _, ls = local_run
    _, gsh = gs_run
    remote = list_shards(gsh)
    assert remote and all(s.startswith(gsh + "/") for s in remote)
    fs, _ = storage.filesystem(gsh)
    copies = []
    for i, s in enumerate(remote):
        copies.append(str(tmp_path / f"{i:03d}.tar"))
        fs.get_file(fs._strip_protocol(s), copies[-1])
    take = lambda ds: [(x["key"], tuple(x["frames"]), x["motion"].numpy().tobytes()) for x in ds]  # noqa: E731
    a = take(stage1_dataset(gsh, size=32, pairs_per_clip=2, shuffle_buffer=1, seed=3))
    b = take(stage1_dataset(copies, size=32, pairs_per_clip=2, shuffle_buffer=1, seed=3))
    assert a == b and len(a) > 0
    key_of = dict(zip(_index(gsh)["shard"], _index(gsh)["key"]))
    local_of = dict(zip(_index(ls)["key"], _index(ls)["shard"]))
    here = [str(ls / local_of[key_of[s[len(gsh) + 1:]]]) for s in remote]
    c = take(stage1_dataset(here, size=32, pairs_per_clip=2, shuffle_buffer=1, seed=3))
    assert [x[:2] for x in a] == [x[:2] for x in c]


def test_gcs_writes_are_atomic(gcs_server, monkeypatch):
    loc = f"{gcs_server}/unit/a/x.bin"
    fs, _ = storage.filesystem(loc)
    with pytest.raises(RuntimeError):
        with storage.atomic_local(loc) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("killed while writing")
    assert not storage.exists(loc) and fs.find(f"{BUCKET}/unit") == []
    # the upload reached the store but the step that makes it the final object failed: no
    # object under the final name, and the temporary is removed
    uploaded = []
    put = fs.put_file
    monkeypatch.setattr(fs, "put_file", lambda lpath, rpath, **kw: (uploaded.append(rpath), put(lpath, rpath, **kw)))

    def refused(*a, **kw):
        raise OSError("copy refused")
    monkeypatch.setattr(fs, "cp_file", refused)
    with pytest.raises(storage.StorageError, match="copy refused"):
        storage.write_bytes_atomic(b"whole", loc)
    assert uploaded and not storage.exists(loc) and fs.find(f"{BUCKET}/unit") == []
    monkeypatch.undo()
    storage.write_bytes_atomic(b"whole", loc)
    assert storage.read_bytes(loc) == b"whole" and storage.list_names(f"{gcs_server}/unit/a", ".bin") == ["x.bin"]
    assert fs.find(f"{BUCKET}/unit") == [f"{BUCKET}/unit/a/x.bin"]
    fs.pipe_file(f"{BUCKET}/unit/a/y.bin", b"y")                 # written by "another process"
    assert storage.list_names(f"{gcs_server}/unit/a", ".bin") == ["x.bin", "y.bin"]
    assert storage.isdir(f"{gcs_server}/unit") and not storage.isdir(f"{gcs_server}/nothing")


def test_unreachable_endpoint_is_one_clear_line(unreachable_run):
    proc, out = unreachable_run
    _, err = proc.communicate(timeout=150)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-3000:]
    assert len(lines) == 1 and f"gs://{BUCKET}/raw/videos" in lines[0] and "Cannot connect" in lines[0], err[-3000:]
    assert "Traceback" not in err and not out.exists()
