"""Object storage end to end, against a real S3 API server started here (moto's server mode on
127.0.0.1, an HTTP endpoint like MinIO's): `filter` -> `shard` -> stage-1 loader from `s3://`
equals the local run row for row; a run killed half way on object storage re-runs to the same
manifests; storage failures are one clear line, never `worker_crash`.

Three short clips of the sample set keep it small (the session's Ray is reused)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import moto_s3
from ifmdm_data.io import clients, storage
from ifmdm_data.filter.config import load_config
from ifmdm_data.filter.pipeline import run_filter
from ifmdm_data.shard.segment import ShardConfig
from ifmdm_data.shard.pipeline import run_shard

CLI = [sys.executable, "-m", "ifmdm_data.cli"]
CLIPS = ("lip_talk.mp4", "noaudio_talk.mp4", "short_talk.mp4")   # accepted, accepted (no audio), rejected
BUCKET = "ifmdm-test"
# columns that name where a file is, or measure time, not what was found in it
# identity_id / dup_group / identity_ids are numbered over a run's segments (the local run has
# more clips): compared as partitions in the test instead
NOT_COMPARED = {"path", "error", "analysis_s", "identity_id", "dup_group", "identity_ids"}


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server with an empty bucket (conftest.moto_s3)."""
    with moto_s3(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def clips_local(sample_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips3") / "videos"
    d.mkdir()
    for name in CLIPS:
        shutil.copy(sample_dir / name, d / name)
    return d


@pytest.fixture(scope="module")
def clips_s3(s3_server, clips_local) -> str:
    fs, _ = storage.filesystem(s3_server)
    for f in sorted(clips_local.iterdir()):
        fs.put_file(str(f), f"{BUCKET}/raw/videos/{f.name}")
    return f"{s3_server}/raw/videos"


SHARD_CFG = dict(size=64, preset="veryfast", target_shard_bytes=1)   # as conftest's sample_shards


@pytest.fixture(scope="module")
def local_run(sample_manifests, sample_shards):
    """The session's local run of the whole sample set (its rows for CLIPS do not depend on
    the other clips: the shipped thresholds are absolute) and its shards (one sample each)."""
    return sample_manifests[0], sample_shards


@pytest.fixture(scope="module")
def s3_run(ray_session, clips_s3, s3_server):
    m, s = f"{s3_server}/run/manifests", f"{s3_server}/run/shards"
    summary = run_filter([clips_s3], m, load_config(), workers=2, progress=False)
    run_shard(m, s, cfg=ShardConfig(**SHARD_CFG), workers=2, progress=False)
    return m, s, summary


def _ours(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["path"].map(lambda p: Path(p).name).isin(CLIPS)].reset_index(drop=True)


def _clips(loc) -> pd.DataFrame:
    df = storage.read_parquet(storage.join(str(loc), "clips.parquet")).to_pandas()
    for c in df.columns:   # list columns -> lists, for comparison
        if df[c].map(lambda v: hasattr(v, "tolist")).any():
            df[c] = df[c].map(lambda v: v.tolist() if hasattr(v, "tolist") else v)
    return df.sort_values("segment_id").reset_index(drop=True)


def _index(loc, keys=None) -> pd.DataFrame:
    idx = storage.read_parquet(storage.join(str(loc), "index.parquet")).to_pandas()
    if keys is not None:
        idx = idx[idx["key"].isin(keys)]
    return idx.sort_values("key").reset_index(drop=True)


def test_filter_and_shard_from_s3_equal_the_local_run(local_run, s3_run, clips_s3):
    lm, ls = local_run
    sm, ss, ssum = s3_run
    got, ref = _clips(sm), _ours(_clips(lm))
    assert len(ref) >= 3 and ref["accepted"].sum() >= 2
    assert got["path"].tolist() == [f"{clips_s3}/{Path(p).name}" for p in ref["path"]]
    cols = [c for c in ref.columns if c not in NOT_COMPARED]
    pd.testing.assert_frame_equal(got[cols], ref[cols])     # same ids (relative keys), same numbers
    for c in ("identity_id", "dup_group"):                  # the same grouping of these segments
        assert pd.factorize(got[c])[0].tolist() == pd.factorize(ref[c])[0].tolist(), c
    for name in ("coarse", "lip", "hard", "rejected"):
        assert len(storage.read_parquet(f"{sm}/{name}.parquet")) == len(_ours(pd.read_parquet(lm / f"{name}.parquet")))
    saved = json.loads(storage.read_text(f"{sm}/summary.json"))
    assert saved["subsets"] == ssum["subsets"] and sum(saved["subsets"].values()) == int(ref["accepted"].sum())
    assert storage.exists(f"{sm}/curriculum.yaml")
    # tracks: one object per batch (here one per part), each segment's row group read back with the same content
    from ifmdm_data.schema import read_segment_tracks
    assert len(storage.list_names(f"{sm}/tracks", ".parquet")) == len(storage.list_names(f"{sm}/_work/parts", ".parquet"))
    for seg in ref["segment_id"][ref["accepted"]]:
        a, ma = read_segment_tracks(sm, seg)
        b, mb = read_segment_tracks(lm, seg)
        assert a.equals(b) and ma.keys() == mb.keys()
    # shards: the same samples. `shard` names differ (the local run has more samples per subset);
    # `bytes` counts the json member, whose `source` names the URL / the local path
    idx_s, idx_l = _index(ss), _index(ls, set(ref["segment_id"]))
    assert len(idx_s) == int(ref["accepted"].sum())
    pd.testing.assert_frame_equal(idx_s.drop(columns=["shard", "bytes"]), idx_l.drop(columns=["shard", "bytes"]))
    # no temporary object is left under the output prefixes
    fs, _ = storage.filesystem(sm)
    left = [p for p in fs.find(f"{BUCKET}/run") if p.rsplit("/", 1)[-1].startswith(".")]
    assert left == []


def test_stage1_loader_streams_s3_shards(local_run, s3_run):
    from ifmdm_data.loaders import list_shards, stage1_dataset, stage1_loader

    _, ls = local_run
    _, ss, _ = s3_run
    remote = list_shards(ss)
    assert remote and all(s.startswith(ss + "/") for s in remote)
    # the local tars of the same samples, in the same order (one sample per tar)
    key_of = dict(zip(_index(ss)["shard"], _index(ss)["key"]))
    local_of = dict(zip(_index(ls)["key"], _index(ls)["shard"]))
    here = [str(ls / local_of[key_of[s[len(ss) + 1:]]]) for s in remote]
    assert list_shards(here) == here
    take = lambda ds: [(x["key"], tuple(x["frames"]), float(x["motion"].sum())) for x in ds]  # noqa: E731
    a = take(stage1_dataset(ss, size=32, pairs_per_clip=2, shuffle_buffer=1, seed=3))
    b = take(stage1_dataset(here, size=32, pairs_per_clip=2, shuffle_buffer=1, seed=3))
    assert a == b and len(a) > 0
    # the DataLoader's worker processes (forkserver) open the s3 tars themselves
    loader = stage1_loader(ss, batch_size=2, num_workers=2, size=32, pairs_per_clip=2, shuffle_buffer=1)
    assert sorted(k for batch in loader for k in batch["key"]) == sorted(k for k, _, _ in a)


def _killed_run(out: str, clips_s3: str) -> int:
    """Start `filter` into `out`, SIGKILL it once a unit is committed; returns the units done
    once the dead driver's workers (ended by Ray asynchronously) have stopped writing."""
    from ifmdm_data.filter.work import PartStore

    def n_parts() -> int:                        # units in a committed part (the workers write them)
        try:
            return len(PartStore(out).done())
        except FileNotFoundError:
            return 0

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(CLI + ["filter", clips_s3, "-o", out, "--workers", "1", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and n_parts() < 1:
        time.sleep(0.3)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done, quiet_since = -1, time.time()
    while time.time() - quiet_since < 3.0 and time.time() < deadline + 60:
        n = n_parts()
        if n != n_done:
            n_done, quiet_since = n, time.time()
        time.sleep(0.3)
    return n_done


def test_killed_run_on_s3_resumes_to_the_same_manifests(ray_session, s3_run, clips_s3, s3_server):
    # the workers go on after the driver dies: on a busy machine they may finish every unit
    # before Ray stops them, so the kill is tried again (a new prefix) until it lands half way
    for attempt in range(3):
        out = f"{s3_server}/killed{attempt}/manifests"
        n_done = _killed_run(out, clips_s3)
        if n_done < len(CLIPS):
            break
    fs, _ = storage.filesystem(out)
    assert 1 <= n_done < len(CLIPS)
    assert not storage.exists(f"{out}/clips.parquet")          # nothing final from a killed run
    for p in fs.find(f"{BUCKET}/killed{attempt}"):              # every visible parquet is complete
        if p.endswith(".parquet"):
            with fs.open(p, "rb") as f:
                pq.read_metadata(f)

    summary = run_filter([clips_s3], out, load_config(), workers=2, progress=False)
    assert summary["units_skipped"] == n_done and summary["units_analysed"] == len(CLIPS) - n_done
    got, ref = _clips(out), _clips(s3_run[0])
    cols = [c for c in ref.columns if c not in NOT_COMPARED - {"path"}]
    pd.testing.assert_frame_equal(got[cols], ref[cols])


def test_a_bad_bucket_is_one_clear_line(ray_session, clips_s3, s3_server, tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    res = subprocess.run(CLI + ["filter", clips_s3, "-o", "s3://no-such-bucket-x/m", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket-x" in lines[0] and "worker_crash" not in res.stderr, res.stderr
    res = subprocess.run(CLI + ["filter", "s3://no-such-bucket-x/videos", "-o", str(tmp_path / "m"), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "bucket 'no-such-bucket-x' does not exist" in res.stderr, res.stderr


def test_a_missing_bucket_reads_as_that_not_as_a_missing_file(s3_server, tmp_path, capsys):
    """A mistyped bucket is named as such (not "no manifest here" / "no curriculum"); a missing key
    in a bucket that exists is still a plain False / the command's own message."""
    from ifmdm_data.cli import main as data_main
    from ifmdm_model.cli.train import train_main

    for query in (storage.exists, storage.isfile, storage.isdir, storage.find):
        with pytest.raises(storage.StorageError, match="bucket 'no-such-bkt' does not exist at http://127.0.0.1"):
            query("s3://no-such-bkt/manifests/clips.parquet")
    assert not storage.exists(f"{s3_server}/nothing/here") and storage.find(f"{s3_server}/nothing/") == []
    assert data_main(["shard", "s3://no-such-bkt/m", "-o", str(tmp_path / "s")]) == 2
    assert train_main(["--curriculum", "s3://no-such-bkt/m", "-o", str(tmp_path / "r")]) == 2
    assert train_main(["--curriculum", f"{s3_server}/m", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("bucket 'no-such-bkt' does not exist" in e for e in err[:2]), err
    assert "no curriculum at" in err[2], err


def test_a_host_that_does_not_resolve_fails_at_once(monkeypatch, tmp_path, capsys):
    """No network / no DNS / a mistyped endpoint: one line naming the host, before the clients'
    credential lookups and retries (gcsfs took ~50 s for the same failure)."""
    from ifmdm_data.cli import main as data_main
    for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://no-such-host.invalid:9000")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "no-such-host.invalid:4443")
    for url in ("s3://bkt/m", "gs://bkt/m"):
        with pytest.raises(storage.StorageError, match="cannot resolve no-such-host.invalid"):
            storage.exists(url)
    assert data_main(["shard", "s3://bkt/m", "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resolve no-such-host.invalid" in err[0] and "AWS_ENDPOINT_URL" in err[0], err
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # behind a proxy the name is not ours to resolve
    clients.check_resolves("s3://bkt/m", "s3", "http://no-such-host.invalid:9000")


def test_storage_writes_are_atomic_and_listings_fresh(s3_server):
    loc = f"{s3_server}/unit/a/x.bin"
    with pytest.raises(RuntimeError):
        with storage.atomic_local(loc) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("killed while writing")
    assert not storage.exists(loc)
    fs, _ = storage.filesystem(loc)
    assert fs.find(f"{BUCKET}/unit") == []                       # no temporary left behind
    storage.write_bytes_atomic(b"whole", loc)
    assert storage.read_bytes(loc) == b"whole"
    assert storage.list_names(f"{s3_server}/unit/a", ".bin") == ["x.bin"]
    fs.pipe_file(f"{BUCKET}/unit/a/y.bin", b"y")                 # written by "another process"
    assert storage.list_names(f"{s3_server}/unit/a", ".bin") == ["x.bin", "y.bin"]
    with storage.spool(loc) as p:
        assert Path(p).read_bytes() == b"whole"
        spooled = p
    assert not os.path.exists(spooled) and not os.path.exists(os.path.dirname(spooled))


def test_decide_inspect_and_report_read_s3_manifests(s3_run, sample_dir, tmp_path, capsys):
    from ifmdm_data.report.inspect import inspect_manifest
    from ifmdm_data.filter.finalise import redecide
    from ifmdm_data.report import write_report

    sm, _, ssum = s3_run
    before = _clips(sm)
    counts = redecide(sm, load_config())                       # the same thresholds: the same rows
    assert counts["subsets"] == ssum["subsets"]
    after = _clips(sm)
    pd.testing.assert_frame_equal(after, before)
    labels = pd.read_csv(sample_dir / "labels.csv")
    labels[labels["file"].isin(CLIPS)].to_csv(tmp_path / "labels.csv", index=False)
    assert inspect_manifest(sm, str(tmp_path / "labels.csv"))  # every labelled segment as expected
    assert "lip_talk.mp4" in capsys.readouterr().out
    page = write_report(sm, tmp_path / "report", examples_per_subset=1)
    html_text = Path(page).read_text()
    assert sm in html_text
    assert not any(bad in html_text for bad in ("source missing", "cannot decode", "no tracks file"))
    # split from and to object storage (the stored signals: nothing is decoded)
    from ifmdm_data.split import run_split
    sp = sm.rsplit("/", 1)[0] + "/splits"
    s = run_split([sm], sp, test_fraction=0.3)
    assert s["annotate_s_per_segment"] is None and s["identities"] >= 1
    parts = [storage.read_parquet(f"{sp}/{n}.parquet").to_pandas() for n in ("train", "test")]
    assert sorted(pd.concat(parts)["segment_id"]) == sorted(before["segment_id"])


def test_s3_inputs_folders_globs_and_lists(clips_s3, s3_server):
    from ifmdm_data.errors import InputError
    from ifmdm_data.filter.inputs import resolve_keyed

    want = [(f"{clips_s3}/{n}", n) for n in sorted(CLIPS)]
    assert resolve_keyed([clips_s3]) == want                                   # a prefix is a folder
    assert resolve_keyed([clips_s3 + "/"]) == want
    assert resolve_keyed([f"{s3_server}/raw/**/*_talk.mp4"]) == [(u, f"videos/{k}") for u, k in want]
    assert resolve_keyed([f"{clips_s3}/{CLIPS[0]}"]) == [(f"{clips_s3}/{CLIPS[0]}", CLIPS[0])]
    storage.write_bytes_atomic(f"path,id\nvideos/{CLIPS[0]},a1\nvideos/missing.mp4,a2\n".encode(),
                               f"{s3_server}/raw/list.csv")
    assert resolve_keyed([f"{s3_server}/raw/list.csv"]) == [
        (f"{clips_s3}/{CLIPS[0]}", "id:a1"), (f"{clips_s3}/missing.mp4", "id:a2")]  # relative to the list
    with pytest.raises(InputError, match="no such file or folder"):
        resolve_keyed([f"{s3_server}/nothing-here"])
    with pytest.raises(InputError, match="matches no file"):
        resolve_keyed([f"{s3_server}/raw/*.webm"])


# ------------------------------------------------------------------------------------------
# Training from s3:// shards through stage 2 (motion extraction writes its sidecars to s3)

S2_CURRICULUM = """\
shards: {shards}
stage1:
  model: S1-tiny
  batch_size: 2
  pairs_per_clip: 2
  num_workers: 0
  warmup_steps: 1
  log_every: 1
  image_every: 100
  checkpoint_every: 100
  levels:
    - {{name: all, subsets: [coarse, lip, hard], steps: 1, lr: 1.0e-3}}
stage2:
  model: M2-tiny
  batch_size: 2
  window: 8
  steps: 2
  lr: 1.0e-3
  warmup_steps: 1
  num_workers: 0
  log_every: 1
  checkpoint_every: 100
  extract_batch: 16
"""


@pytest.fixture(scope="module")
def stage2_runs(sample_shards, s3_server, tmp_path_factory):
    """The session's shards (no motion/ folder) copied to a local folder and to the bucket,
    byte for byte; `ifmdm-train` (stage 1, extraction, 2 stage-2 steps) on each, into run
    folders of the same name (so the encoder ids can match)."""
    import io
    from contextlib import redirect_stdout

    from ifmdm_model.cli.train import train_main

    base = tmp_path_factory.mktemp("s3stage2")
    local = base / "shards"
    shutil.copytree(sample_shards, local, ignore=lambda d, names: ["motion"] if Path(d) == sample_shards else [])
    remote = f"{s3_server}/s2/shards"
    fs, _ = storage.filesystem(remote)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{BUCKET}/s2/shards/{f.relative_to(local).as_posix()}")
    (base / "manifests").mkdir()
    (base / "manifests" / "curriculum.yaml").write_text(S2_CURRICULUM.format(shards=local))
    outs = {}
    for where, extra in (("local", []), ("s3", ["--shards", remote + "/"])):
        run = base / where / "run"
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = train_main(["--curriculum", str(base / "manifests"), "-o", str(run)] + extra)
        assert rc == 0, buf.getvalue()
        outs[where] = (run, json.loads(buf.getvalue()))
    return local, remote, outs, base


def _sidecars(root) -> dict:
    """{relative name: {key: (motion.npy array, motion.json)}} of the sidecar tars under root."""
    from ifmdm_data.loaders import TarShard

    root = str(root).rstrip("/")
    out = {}
    for loc in storage.find(root, (".tar",)):
        with TarShard(loc) as t:
            out[loc[len(root) + 1:]] = {k: (t.read(k, "motion.npy"), t.read(k, "motion.json")) for k in t.keys()}
    return out


def test_train_stage2_from_s3_shards_writes_the_same_sidecars_to_s3(stage2_runs, s3_server):
    import numpy as np

    from ifmdm_data.loaders import stage2_dataset

    local, remote, outs, base = stage2_runs
    (_, out_l), (run_s, out_s) = outs["local"], outs["s3"]
    assert out_s["stage1"]["steps"] == 1 and out_s["stage2"]["steps"] == 2
    eid = out_s["stage2"]["encoder"]
    assert eid == out_l["stage2"]["encoder"]                   # same stage-1 weights from the same bytes
    # the sidecars went beside the s3 shards (as beside the local ones), never to a local disk
    m_l, m_s = local / "motion" / eid, f"{remote}/motion/{eid}"
    assert json.loads(storage.read_text(f"{m_s}/encoder.json"))["encoder_id"] == eid
    assert not list((base / "s3").rglob("*.tar")) and not Path("s3:").exists()
    side_l, side_s = _sidecars(m_l), _sidecars(m_s)
    assert side_l and sorted(side_s) == sorted(side_l)
    for name in side_l:
        assert list(side_s[name]) == list(side_l[name]), name          # same keys, same order
        for key, (motion, meta) in side_l[name].items():
            np.testing.assert_array_equal(side_s[name][key][0], motion)
            assert side_s[name][key][0].dtype == np.float32 and side_s[name][key][1] == meta
    fs, _ = storage.filesystem(remote)                          # no temporary object left behind
    assert [p for p in fs.find(f"{BUCKET}/s2") if p.rsplit("/", 1)[-1].startswith(".")] == []
    # the stage-2 loader reads them back from s3: the same windows as from the local sidecars
    take = lambda ds: [(x["key"], x["start"], x["motion"].numpy().tobytes(), x["speech"].numpy().tobytes())  # noqa: E731
                       for x in ds]
    a = take(stage2_dataset(remote, m_s, window=8, shuffle_buffer=1, seed=1))
    b = take(stage2_dataset(local, m_l, window=8, shuffle_buffer=1, seed=1))
    assert a == b and len(a) > 0
    assert out_s["stage2"]["last"] == out_l["stage2"]["last"]   # the same training steps
    # `shards: s3://...` in curriculum.yaml is kept as a URL (not made a local path)
    from ifmdm_model.curriculum import load_curriculum
    from ifmdm_model.stage1.train import subset_samples
    (base / "m2").mkdir(exist_ok=True)
    (base / "m2" / "curriculum.yaml").write_text(S2_CURRICULUM.format(shards=remote + "/"))
    assert load_curriculum(base / "m2").shards == remote
    assert subset_samples(remote) == subset_samples(local)
    # again: the extraction finds its complete sidecars on s3 and skips them
    from ifmdm_model.stage2.extract import extract_motion
    again = extract_motion(run_s, remote, progress=False, decode_workers=0)
    assert again["out_root"] == m_s and again["shards_written"] == 0 and again["shards_skipped"] == len(side_s)


def test_unreachable_bucket_is_one_clear_line(stage2_runs, s3_server, monkeypatch, capsys):
    from ifmdm_data.errors import IfmdmError
    from ifmdm_model.cli.train import train_main
    from ifmdm_model.stage2.extract import ExtractionError, extract_motion

    _, remote, outs, base = stage2_runs
    run = outs["s3"][0]
    # shards readable, but the sidecars' location is a bucket that does not exist
    with pytest.raises(ExtractionError, match="cannot write the motion sidecars to s3://no-such-bucket-x/motion") as e:
        extract_motion(run, remote, out_root="s3://no-such-bucket-x/motion", progress=False)
    assert len(str(e.value).splitlines()) == 1
    capsys.readouterr()
    args = ["--curriculum", str(base / "manifests"), "-o", str(run), "--stage", "2"]
    # the shards in a bucket that does not exist
    assert train_main(args + ["--shards", "s3://no-such-bucket-x/shards"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-bucket-x" in err[0], err
    # the endpoint is down: one line naming the location, not "no shards" (no retries: fast)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert train_main(args + ["--shards", remote]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and remote in err[0] and "Could not connect" in err[0], err
    with pytest.raises(IfmdmError, match="Could not connect"):
        extract_motion(run, remote, progress=False)


def test_motion_sidecar_on_s3_is_whole_or_absent(s3_server):
    import numpy as np

    from ifmdm_data.loaders import TarShard
    from ifmdm_data.shard.motion_sidecar import write_motion_sidecar

    loc = f"{s3_server}/sidecar-unit/motion/coarse/000000.tar"

    def killed():
        yield "a", np.ones((3, 4), np.float32), "enc"
        raise RuntimeError("killed while extracting")
    with pytest.raises(RuntimeError):
        write_motion_sidecar(loc, killed())
    fs, _ = storage.filesystem(loc)
    assert not storage.exists(loc) and fs.find(f"{BUCKET}/sidecar-unit") == []   # no half tar, no temporary
    items = [("a", np.ones((3, 4), np.float32), "enc"), ("b", np.arange(8, dtype=np.float32).reshape(2, 4), "enc")]
    assert write_motion_sidecar(loc, items) == {"path": loc, "clips": 2, "dim": 4, "encoder": "enc"}
    with TarShard(loc) as t:
        assert t.keys() == ["a", "b"] and t.read("b", "motion.json")["dim"] == 4
        np.testing.assert_array_equal(t.read("b", "motion.npy"), items[1][1])
    assert [p.rsplit("/", 1)[-1] for p in fs.find(f"{BUCKET}/sidecar-unit")] == ["000000.tar"]
