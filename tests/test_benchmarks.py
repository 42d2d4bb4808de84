"""The hand-run benchmarks still run: smoke runs on tiny inputs, no timing asserted.
(benchmarks/shard_bench.py is left out: its smallest run takes about a minute.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_filter_bench_smoke(sample_dir):
    out = _run("filter_bench.py", "--media", "/nonexistent", "--sample", str(sample_dir),
               "--limit-s", "0.5", "--no-naive", "--syncnet", "random")
    assert "== sample set" in out and "TOTAL" in out and "SyncNet check every" in out
    assert "syncnet" in out.split("filter stages:")[-1]


def test_infer_bench_smoke():
    out = _run("infer_bench.py", "--pairs", "tiny", "--steps", "2", "--seconds", "0.4")
    assert "S1-tiny/M2-tiny" in out and "GFLOP/frame" in out


def test_stage_benches_smoke():
    assert "S1-256" in _run("stage1_bench.py", "--iters", "1", "--warmup", "0")
    assert "M2-A0" in _run("stage2_bench.py", "--iters", "1", "--warmup", "0")
