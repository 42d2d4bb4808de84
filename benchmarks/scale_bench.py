"""Scale of `filter` + `shard` (issue 12 item 4): per-clip cost and driver memory at N clips.

Run by hand (not a test):

    .venv/bin/python benchmarks/scale_bench.py [--clips 500,2000] [--seconds 3] [--workers 2]
                                               [--work DIR] [--keep]

Inputs (setup, not timed): the sample set (`make_sample_set`, made once into WORK/src) cut
into N clips of --seconds each by `ffmpeg -ss T -t S -c copy` at offsets 0, 0.5, 1.0, ... s of
each sample clip (keyframe-aligned stream copies: some cuts of one source are the same bytes;
each file has its own name, so its own clip id); cuts are made once and reused.

Each N runs in a fresh Python process (the driver's peak RSS is per process): `run_filter`
then `run_shard` (size 128, veryfast), in process on a local Ray (--workers CPUs). Core
seconds are the CPU time of the driver and all its descendant processes (raylet, Ray
workers), sampled every 0.25 s and at each stage boundary (stage = between the pipeline's own
`StageBar`s: probe, analyse (analysis + the part files the actors write), finalise (merge,
identity clustering, manifests, tracks) and shard (the writing of shards)); a worker that
exits between samples loses at most 0.25 s of its CPU. Ray start-up is outside the stages.
Prints one table row per N: clips/s end to end, core-s per clip by stage, driver peak RSS
(getrusage ru_maxrss), files written by `filter` and by `shard`, and `filter`'s files per clip
(with those under _work/, the parts and the probe cache, and under tracks/).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ inputs
def make_inputs(work: Path, n: int, seconds: float) -> Path:
    """WORK/clips_N with n cut clips (made once; setup, not timed)."""
    src = work / "src"
    if not (src / "labels.csv").exists():
        from ifmdm_data.sample import make_sample_set
        make_sample_set(src)
    cuts = work / "cuts"
    cuts.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in src.glob("*.mp4"))
    import av
    windows = []  # (source, offset): every window of every source, round robin by offset
    lens = {}
    for s in sources:
        with av.open(str(s)) as c:
            lens[s] = (c.duration or 0) / 1e6
    k = 0
    while True:
        new = [(s, 0.5 * k) for s in sources if k == 0 or 0.5 * k + seconds <= lens[s] + 1e-6]
        if not new:
            break
        windows += new
        k += 1
    plan = [windows[i % len(windows)] for i in range(n)]   # past len(windows): copies, new names
    out = work / f"clips_{n}"
    if out.exists() and len(list(out.glob("*.mp4"))) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, (s, off) in enumerate(plan):
        cut = cuts / f"{s.stem}_{int(off * 10):04d}.mp4"
        if not cut.exists():
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{off:.2f}", "-i", str(s), "-t",
                            f"{seconds:g}", "-c", "copy", "-avoid_negative_ts", "make_zero", str(cut)],
                           check=True)
        os.link(cut, out / f"c{i:06d}_{cut.name}")
    return out


def _driver_rss() -> tuple:
    """(VmRSS, RssAnon) of this process in bytes (/proc/self/status): RssAnon leaves out the
    mapped files and shared memory (libraries, Ray's object store pages) that VmRSS counts."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0]) * 1024
    return out.get("VmRSS", 0), out.get("RssAnon", 0)


# ------------------------------------------------------------------------------ CPU of the tree
class TreeCPU:
    """CPU seconds (user + system) of this process and all its descendants, last value seen per
    pid (a background thread samples every `period` s)."""

    def __init__(self, period: float = 0.25):
        import psutil
        self.psutil, self.me, self.seen, self.lock = psutil, psutil.Process(), {}, threading.Lock()
        self.rss = []          # (wall time, driver RSS bytes, driver anonymous RSS bytes) per sample
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self.thread.start()

    def sample(self) -> float:
        ps = self.psutil
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except ps.Error:
            pass
        self.rss.append((time.perf_counter(), *_driver_rss()))
        with self.lock:
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system + t.children_user + t.children_system
                except ps.Error:
                    pass
            return sum(self.seen.values())

    def _run(self, period):
        while not self.stop.wait(period):
            self.sample()


def _count_files(folder: Path) -> dict:
    out = {}
    for dirpath, _, names in os.walk(folder):
        top = Path(dirpath).relative_to(folder).parts[:1]
        key = top[0] if top else "."
        out[key] = out.get(key, 0) + len(names)
    return out


def one(n: int, seconds: float, workers: int, work: Path, keep: bool) -> dict:
    """Run filter + shard on n clips in this process; returns the measurements."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    clips = make_inputs(work, n, seconds)
    import ray
    from ifmdm_data.io import console
    from ifmdm_data.filter import pipeline
    from ifmdm_data.shard import pipeline as shard_pipeline
    from ifmdm_data.filter.config import load_config
    from ifmdm_data.shard.segment import ShardConfig

    cpu = TreeCPU()
    marks = []   # (name, cpu, wall) at each stage boundary

    def mark(name):
        marks.append((name, cpu.sample(), time.perf_counter()))

    class TimedBar(console.StageBar):
        def __init__(self, stage, *a, **kw):
            mark(f"{stage}:start")
            super().__init__(stage, *a, **kw)
            self._stage = stage

        def close(self, *a, **kw):
            r = super().close(*a, **kw)
            mark(f"{self._stage}:end")
            return r

    pipeline.StageBar = TimedBar
    shard_pipeline.StageBar = TimedBar
    fout, sout = work / f"out_{n}" / "manifests", work / f"out_{n}" / "shards"
    shutil.rmtree(work / f"out_{n}", ignore_errors=True)
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    mark("start")
    fsum = pipeline.run_filter([str(clips)], str(fout), load_config(), workers=workers, progress=False)
    mark("filter:end")
    mark("shard:begin")
    ssum = shard_pipeline.run_shard(str(fout), str(sout), cfg=ShardConfig(size=128, preset="veryfast"),
                                    workers=workers, progress=False)
    mark("shard:done")
    cpu.stop.set()
    at = {name: (c, w) for name, c, w in marks}

    def span(a, b):
        return at[b][0] - at[a][0], at[b][1] - at[a][1]

    stages = {"probe": span("start", "probe:end"),
              "analyse": span("probe:end", "analyse:end"),
              "finalise": span("analyse:end", "filter:end"),
              "shard": span("shard:begin", "shard:done")}
    total = span("start", "shard:done")
    res = {"clips": n, "seconds": seconds, "workers": workers,
           "wall_s": round(total[1], 1), "core_s": round(total[0], 1),
           "clips_per_s": round(n / total[1], 3),
           "filter_wall_s": round(span("start", "filter:end")[1], 1),
           "stages": {k: {"core_s_per_clip": round(c / n, 4), "wall_s": round(w, 1)} for k, (c, w) in stages.items()},
           "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           # the driver's peak RSS / anonymous RSS (MB) within each stage, from the 0.25 s samples
           "driver_rss_by_stage_mb": {k: _peak_in(cpu.rss, at, *bounds) for k, bounds in STAGE_BOUNDS.items()},
           "files_filter": _count_files(fout), "files_shard": _count_files(sout),
           "segments": {k: fsum.get(k) for k in ("segments", "accepted", "rejected") if k in fsum},
           "shard_summary": {k: ssum.get(k) for k in ("clips", "shards", "written", "failed") if k in ssum}}
    ray.shutdown()
    if not keep:
        shutil.rmtree(work / f"out_{n}", ignore_errors=True)
    return res


STAGE_BOUNDS = {"start": (None, "start"), "probe": ("start", "probe:end"), "analyse": ("probe:end", "analyse:end"),
                "finalise": ("analyse:end", "filter:end"), "shard": ("shard:begin", "shard:done")}


def _peak_in(samples: list, at: dict, a, b) -> list:
    """[peak VmRSS, peak RssAnon] in MB over the samples between marks a and b (a None: from the start)."""
    t0 = at[a][1] if a else float("-inf")
    t1 = at[b][1]
    inside = [(r, anon) for t, r, anon in samples if t0 <= t <= t1]
    if not inside:
        return [None, None]
    return [round(max(r for r, _ in inside) / 2 ** 20), round(max(a for _, a in inside) / 2 ** 20)]


def table(rows: list) -> str:
    head = ("| clips | wall s | clips/s | core-s/clip total | probe | analyse | finalise | shard "
            "| driver peak RSS | files (filter / shard) | filter files / clip (_work/, tracks/) |"
            "\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        st = r["stages"]
        lines.append(f"| {r['clips']} | {r['wall_s']} | {r['clips_per_s']} | {r['core_s'] / r['clips']:.3f} "
                     f"| {st['probe']['core_s_per_clip']:.4f} | {st['analyse']['core_s_per_clip']:.3f} "
                     f"| {st['finalise']['core_s_per_clip']:.4f} | {st['shard']['core_s_per_clip']:.3f} "
                     f"| {r['driver_peak_rss_mb']:.0f} MB | {sum(r['files_filter'].values())} / "
                     f"{sum(r['files_shard'].values())} | {sum(r['files_filter'].values()) / r['clips']:.3f} "
                     f"({r['files_filter'].get('_work', 0)}, {r['files_filter'].get('tracks', 0)}) |")
    lines.append("\ndriver RSS / anonymous RSS (MB), peak within each stage:\n")
    lines.append("| clips | " + " | ".join(STAGE_BOUNDS) + " |\n|---|" + "---|" * len(STAGE_BOUNDS))
    for r in rows:
        by = r.get("driver_rss_by_stage_mb", {})
        lines.append(f"| {r['clips']} | " + " | ".join(
            f"{v[0]} / {v[1]}" if v and v[0] is not None else "" for v in (by.get(k) for k in STAGE_BOUNDS)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="2000", help="comma-separated clip counts, e.g. 500,2000")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", default="/tmp/ifmdm_scale_bench")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)     # internal: one N, JSON out
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.seconds, a.workers, work, a.keep)), flush=True)
        return 0
    rows = []
    for n in [int(x) for x in a.clips.split(",")]:
        cmd = [sys.executable, __file__, "--one", str(n), "--seconds", str(a.seconds),
               "--workers", str(a.workers), "--work", str(work)] + (["--keep"] if a.keep else [])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        got = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not got:
            print(p.stdout[-3000:], file=sys.stderr)
            return p.returncode or 1
        rows.append(json.loads(got[-1][7:]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
