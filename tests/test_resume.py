"""Resumability and crash isolation: a killed run, re-run, ends with the same manifests; a
worker that dies on one clip costs that clip (a `worker_crash` row), not the run."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ifmdm_data.filter.config import load_config
from ifmdm_data.filter.pipeline import run_filter
from ifmdm_data.filter.work import PartStore
from ifmdm_data.schema import CLIPS_SCHEMA

CLI = [sys.executable, "-m", "ifmdm_data.cli"]
DECISIONS = ["segment_id", "start_s", "end_s", "subset", "stage2_ok"]


def _table(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "clips.parquet")
    df["reasons"] = df["reasons"].map(list)
    return df.sort_values("segment_id").reset_index(drop=True)


def test_killed_run_resumes_to_identical_manifests(ray_session, sample_dir, sample_manifests, tmp_path):
    out = tmp_path / "m"
    # batches of 2 units (the default, 64, would hold the whole sample set): the run is killed
    # with some batches committed
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", IFMDM_BATCH_UNITS="2")
    proc = subprocess.Popen(CLI + ["filter", str(sample_dir), "-o", str(out), "--workers", "1", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out / "_work" / "parts"

    def n_units() -> int:                        # units in a committed part
        return len(PartStore(out).done()) if parts.exists() else 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if n_units() >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Ray ends the dead driver's workers asynchronously: one may still finish the unit in hand
    # (with a local OUT the driver writes the parts: none should come). Count once it is quiet.
    n_done, quiet_since = -1, time.time()
    while time.time() - quiet_since < 3.0 and time.time() < deadline + 60:
        n = n_units()
        if n != n_done:
            n_done, quiet_since = n, time.time()
        time.sleep(0.2)
    assert not (out / "clips.parquet").exists()          # nothing final from a killed run
    for f in out.rglob("*.parquet"):                      # every visible file is complete
        pq.read_metadata(f)

    # the parts of the killed run, as files: a unit that is really skipped is not rewritten
    # (write_parquet_atomic replaces the file: a new inode), so `units_skipped` below is backed by
    # what happened, not only by the count of parts found at the start
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in parts.glob("*.parquet")}
    assert 1 <= len(before) <= -(-n_done // 2)                 # batches of <= 2 units
    summary = run_filter([str(sample_dir)], str(out), load_config(), workers=2, progress=False)
    assert summary["units_skipped"] == n_done
    n_all = len(PartStore(sample_manifests[0]).done())           # uninterrupted
    assert sample_manifests[1]["units_skipped"] == 0 and n_all > n_done
    after = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns, f.read_bytes()) for f in parts.glob("*.parquet")}
    assert len(after) == len(before) + 1                        # the rest: one batch (of up to 64)
    assert len(PartStore(out).done()) == n_all
    assert summary["units_analysed"] == n_all - n_done          # only the missing units were analysed
    assert {k: after[k] for k in before} == before              # skipped units were not redone
    got, ref = _table(out), _table(sample_manifests[0])
    assert got["segment_id"].is_unique
    pd.testing.assert_frame_equal(got[DECISIONS], ref[DECISIONS])
    assert got["reasons"].tolist() == ref["reasons"].tolist()
    assert pq.read_schema(out / "clips.parquet").remove_metadata() == CLIPS_SCHEMA.remove_metadata()

    again = run_filter([str(sample_dir)], str(out), load_config(), workers=2, progress=False)
    assert again["units_analysed"] == 0 and again["units_skipped"] == n_all
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in parts.glob("*.parquet")} == \
        {k: v[:2] for k, v in after.items()}
    pd.testing.assert_frame_equal(_table(out)[DECISIONS], got[DECISIONS])


def test_worker_crash_costs_one_clip(sample_dir, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(sample_dir / "coarse_head.mp4", d / "good.mp4")
    shutil.copy(sample_dir / "coarse_head.mp4", d / "crashme.mp4")
    out = tmp_path / "m"
    # tests/fault_crash/sitecustomize.py, loaded by the driver and the Ray workers it starts
    # (they inherit this environment), kills the worker that analyses crashme.mp4
    hook = str(Path(__file__).resolve().parent / "fault_crash")
    # IFMDM_BATCH_SECONDS=0: the driver commits what has come back at once (the time cap)
    env = dict(os.environ, IFMDM_FAULT_CRASH="crashme", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               IFMDM_BATCH_SECONDS="0",
               PYTHONPATH=os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run(CLI + ["filter", str(d), "-o", str(out), "--workers", "1", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_parquet(out / "clips.parquet")
    by = {Path(p).name: list(r) for p, r in zip(df["path"], df["reasons"])}
    assert by["crashme.mp4"] == ["worker_crash"]
    assert by["good.mp4"] == []
    assert "worker_crash" in res.stdout
    # good.mp4's unit as it came back, then the worker_crash row: two batches of one
    assert len(list((out / "_work" / "parts").glob("*.parquet"))) == 2


def test_moved_input_folder_resumes_with_the_new_paths(ray_session, sample_dir, tmp_path):
    """The same clips under another folder (a dataset mounted elsewhere) into the same output:
    every unit is skipped (same clip ids), and the manifest keeps every segment, at its new path
    (not an empty manifest: the parts carry the old paths)."""
    a, b = tmp_path / "a", tmp_path / "mnt" / "b"
    a.mkdir()
    for f in ("lip_talk.mp4", "static_still.mp4"):
        shutil.copy(sample_dir / f, a / f)
    shutil.copytree(a, b)
    out = tmp_path / "m"
    first = run_filter([str(a)], str(out), load_config(), workers=1, progress=False)
    again = run_filter([str(b)], str(out), load_config(), workers=1, progress=False)
    assert again["units_skipped"] == first["units_analysed"] == 2 and again["units_analysed"] == 0
    df = _table(out)
    assert again["segments"] == first["segments"] == len(df) >= 2
    assert all(p.startswith(str(b)) for p in df["path"])
