"""Per-core speed of `shard` (clips/s, MB/s), of the speech features and of the training loaders.

Run by hand (not a test):

    .venv/bin/python benchmarks/shard_bench.py [--manifests DIR] [--media] [--repeat N]
                                               [--min-s S] [--ray]

Inputs (setup, not timed): the manifests of a `filter` run (--manifests DIR), else the sample
set made and filtered (`run_filter`, workers=1) in a temp folder; --media also filters the real
media folder (../shared/media/video). Then, pinned to ONE core (affinity, 1 thread for torch /
OpenCV / BLAS), rates per CPU-second of this process (robust to other load on the core; cpu% =
cpu / wall time shows that load):

- shard:   `make_sample` in-process for every accepted segment (log-mel), size 512 and 256,
           x264 preset medium and veryfast, best of N: clips/s, source s/s, output MB/s (member
           bytes / time), frames/s. --ray also times `run_shard` end to end (Ray, 2 workers);
- speech:  log-mel and a wav2vec2-BASE-size model (`Wav2Vec2Config()` defaults, random init,
           saved to a temp folder outside the repo, deleted after) through `Wav2Vec2Features(dir,
           device="cpu")`: audio s/s on a 10 s clip (best of 3), `.batch` on 8 clips of 4-6 s;
- loaders: 256 px shards of every set (`run_shard`, untimed) plus random float32 motion sidecars
           (n_frames, 20); stage-1 pairs/s (num_workers=0, size 256, pairs_per_clip 16 / 32,
           +- augment) and stage-2 windows/s (window 32), whole epochs for >= --min-s cpu-s.
           The sample set's clips are 4 s; --media also cuts the media segments into 8 s windows.

Target (issue): one loader worker per core feeds >= 200 stage-1 pairs/s at 256x256 (pairs per
CPU-second, pairs_per_clip 16, no augment).
"""
from __future__ import annotations

import os

from _onecore import pin_one_core, quiet_stderr

_CPU, _ALL_CPUS = pin_one_core("max")  # filter_bench takes the lowest core

import argparse, contextlib, json, math, shutil, sys, tempfile, time  # noqa: E401,E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ifmdm_data.features import LogMelFeatures, Wav2Vec2Features  # noqa: E402
from ifmdm_data.loaders import (TarShard, read_meta, stage1_dataset, stage2_dataset,  # noqa: E402
                                write_motion_sidecar)
from ifmdm_data.schema import read_clips, read_tracks  # noqa: E402
from ifmdm_data.shard.segment import ShardConfig, make_sample  # noqa: E402
from ifmdm_data.shard.pipeline import _row_dict, run_shard  # noqa: E402

TARGET_PAIRS = 200.0


@contextlib.contextmanager
def all_cores():
    """Untimed setup and Ray runs: every core, Ray stopped afterwards; then one core again."""
    import ray
    os.sched_setaffinity(0, _ALL_CPUS)
    try:
        with quiet_stderr():
            yield
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, {_CPU})


def timed(fn, n=1):
    """(cpu s, wall s, result) of the call with the least CPU time of n."""
    def once():
        t, c = time.perf_counter(), time.process_time()
        r = fn()
        return time.process_time() - c, time.perf_counter() - t, r
    return min((once() for _ in range(n)), key=lambda x: x[0])


def ratio(a, b):
    return a / b if b else math.nan


def accepted(manifest):
    c = read_clips(manifest)
    return [_row_dict(r) for r in c[c["accepted"].fillna(False).astype(bool)].to_dict("records")]


def setup_manifests(args, tmp):
    sets = [("given", args.manifests)] if args.manifests else []
    todo = [] if args.manifests else [("sample set", None)]
    if args.media:
        media = Path(__file__).resolve().parents[2] / "shared" / "media" / "video"
        if not media.is_dir():
            sys.exit(f"--media: {media} not found")
        todo.append(("media", str(media)))
    if todo:
        print("setup (not timed): " + ", ".join(n for n, _ in todo) + " -> filter, workers=1", flush=True)
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.filter.pipeline import run_filter
    from ifmdm_data.sample import make_sample_set
    for name, src in todo:
        out = tmp / f"manifests_{name.split()[0]}"
        with all_cores():
            if src is None:
                src = str(tmp / "sample")
                make_sample_set(src)
            run_filter([src], str(out), FilterConfig(), workers=1, progress=False)
        sets.append((name, str(out)))
    return sets


def eight_second_manifest(manifest, out, seconds=8.0):
    """Accepted segments cut into `seconds` windows (tracks linked): a manifest for `run_shard`."""
    import pandas as pd
    c, rows = read_clips(manifest), []
    (out / "tracks").mkdir(parents=True, exist_ok=True)
    for r in c[c["accepted"].fillna(False).astype(bool)].to_dict("records"):
        for k in range(int((r["end_s"] - r["start_s"]) // seconds)):
            sid = f"{r['segment_id']}w{k}"
            s = r["start_s"] + k * seconds
            rows.append({**r, "segment_id": sid, "start_s": s, "end_s": s + seconds, "duration_s": seconds})
            (out / "tracks" / f"{sid}.parquet").symlink_to(Path(manifest) / "tracks" / f"{r['segment_id']}.parquet")
    pd.DataFrame(rows, columns=c.columns).to_parquet(out / "clips.parquet")
    return str(out) if rows else None


def bench_shard(name, manifest, args, feats):
    rows = accepted(manifest)  # every accepted segment, timed one by one
    tracks = {r["segment_id"]: read_tracks(Path(manifest, "tracks", f"{r['segment_id']}.parquet"))[0] for r in rows}
    make_sample(rows[0], tracks[rows[0]["segment_id"]], ShardConfig(size=256), feats)  # warm-up
    out = []
    for size in (512, 256):
        for preset in ("medium", "veryfast"):
            cfg = ShardConfig(size=size, preset=preset)
            wall = cpu = src_s = nbytes = frames = 0.0
            for r in rows:
                c, w, smp = timed(lambda: make_sample(r, tracks[r["segment_id"]], cfg, feats), args.repeat)
                wall, cpu, src_s = wall + w, cpu + c, src_s + r["end_s"] - r["start_s"]
                nbytes += sum(len(v) for v in smp.values())
                frames += json.loads(smp["json"])["n_frames"]
            out.append(dict(set=name, size=size, preset=preset, n=len(rows), wall=wall, cpu=cpu,
                            src=src_s, mb=nbytes / 1e6, frames=frames))
            print(f"  [{name}] {size} px {preset}: {len(rows)} clips in {cpu:.2f} cpu-s", flush=True)
    return out


def print_shard(rows):  # rates per CPU-second
    hdr = (f"{'set':10s} {'size':>4s} {'preset':8s} {'clips':>5s} {'src s':>6s} {'cpu s':>7s} {'cpu%':>5s} "
           f"{'clips/s':>7s} {'src s/s':>7s} {'MB out':>7s} {'MB/s':>6s} {'frames/s':>8s}")
    print(f"\n== shard: make_sample in-process, log-mel (one core: cpu {_CPU}) ==\n{hdr}\n{'-' * len(hdr)}")
    for r in rows:
        c = r["cpu"]
        print(f"{r['set']:10s} {r['size']:4d} {r['preset']:8s} {r['n']:5d} {r['src']:6.1f} {c:7.2f} "
              f"{100 * ratio(c, r['wall']):5.0f} {ratio(r['n'], c):7.3f} {ratio(r['src'], c):7.2f} "
              f"{r['mb']:7.2f} {ratio(r['mb'], c):6.2f} {ratio(r['frames'], c):8.1f}")


def bench_ray(sets, tmp):
    print(f"\n== run_shard end to end, Ray, workers=2, {len(_ALL_CPUS)} cpus, size 512 medium, log-mel ==")
    for name, manifest in sets:
        with all_cores():
            _, w, s = timed(lambda: run_shard(manifest, str(tmp / f"ray_{name.split()[0]}"), workers=2, progress=False))
        n, mb = s["written"]["samples"], s["written"]["bytes"] / 1e6
        print(f"{name:10s} {n} clips in {sum(s['shards'].values())} shards, {mb:.2f} MB in {w:.1f} s wall "
              f"(Ray start included): {ratio(n, w):.3f} clips/s, {ratio(mb, w):.2f} MB/s; failed {s['failed']}")


def bench_speech():
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    rng = np.random.default_rng(0)
    wav10 = (0.1 * rng.standard_normal(160000)).astype(np.float32)
    clips = [(0.1 * rng.standard_normal(int(16000 * d))).astype(np.float32) for d in rng.uniform(4, 6, 8)]
    clip_s = sum(len(c) for c in clips) / 16000
    ckpt = tempfile.mkdtemp(prefix="w2v2_base_random_")
    try:
        with quiet_stderr():
            torch.manual_seed(0)
            Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(ckpt)
        rows = []
        for name, fx in (("log-mel (80)", LogMelFeatures()),
                         ("wav2vec2-base random", Wav2Vec2Features(ckpt, device="cpu"))):
            fx(wav10[:16000])  # warm-up
            t10, t_seq = timed(lambda: fx(wav10), 3)[0], timed(lambda: [fx(c) for c in clips])[0]
            t_b = timed(lambda: fx.batch(clips))[0] if hasattr(fx, "batch") else math.nan
            rows.append((name, fx.dim, t10, t_seq, t_b, clip_s))
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    hdr = (f"{'extractor':22s} {'dim':>4s} {'10 s clip s':>11s} {'audio s/s':>9s} {'8 clips s':>9s} "
           f"{'1-by-1 s/s':>10s} {'batch s':>8s} {'batch s/s':>9s}")
    print(f"\n== speech features, one core: 10 s clip (best of 3); 8 clips of 4-6 s ({clip_s:.1f} s) "
          f"one by one and .batch ==\n{hdr}\n{'-' * len(hdr)}")
    for name, dim, t10, ts, tb, _ in rows:
        print(f"{name:22s} {dim:4d} {t10:11.4f} {ratio(10, t10):9.1f} {ts:9.3f} {ratio(clip_s, ts):10.1f} "
              f"{tb:8.3f} {ratio(clip_s, tb):9.1f}")
    return rows


def make_loader_shards(name, manifest, out):
    """256 px shards of `manifest` plus motion sidecars: (name, out, clips, mean clip s)."""
    with all_cores():
        run_shard(manifest, str(out / "shards"), cfg=ShardConfig(size=256), workers=1, progress=False)
    rng, n_clips = np.random.default_rng(0), 0
    for tar in sorted((out / "shards").glob("*/*.tar")):
        with TarShard(str(tar)) as t:
            side = [(k, rng.standard_normal((int(read_meta(t, k)["n_frames"]), 20)).astype(np.float32), "bench")
                    for k in t.keys()]
        write_motion_sidecar(out / "motion" / tar.parent.name / tar.name, side)
        n_clips += len(side)
    return name, out, n_clips, float(np.mean([r["end_s"] - r["start_s"] for r in accepted(manifest)]))


def rate(ds, min_s):
    """Warm-up epoch, then whole epochs (>= 2) for min_s cpu-s: (items per wall s, per cpu s, items)."""
    ds.set_epoch(0)
    sum(1 for _ in ds)
    n, e, t, c = 0, 1, time.perf_counter(), time.process_time()
    while e < 3 or time.process_time() - c < min_s:
        ds.set_epoch(e)
        n, e = n + sum(1 for _ in ds), e + 1
    return n / (time.perf_counter() - t), n / (time.process_time() - c), n


def bench_loaders(loader_sets, args):
    rows = []
    for name, root, n_clips, clip_s in loader_sets:
        for ppc in (16, 32):
            for aug in (False, True):
                w, c, n = rate(stage1_dataset(root / "shards", size=256, pairs_per_clip=ppc, augment=aug), args.min_s)
                rows.append((name, n_clips, clip_s, f"stage-1 pairs ppc={ppc}" + (" augment" if aug else ""), w, c, n))
        w, c, n = rate(stage2_dataset(root / "shards", root / "motion", window=32), args.min_s)
        rows.append((name, n_clips, clip_s, "stage-2 windows w=32 (D=20)", w, c, n))
    hdr = f"{'set':14s} {'clips':>5s} {'clip s':>6s} {'what':32s} {'items':>7s} {'per wall s':>10s} {'per cpu s':>9s}"
    print(f"\n== loaders: 256 px shards, num_workers=0 (one worker, one core) ==\n{hdr}\n{'-' * len(hdr)}")
    for name, nc, cs, what, w, c, n in rows:
        print(f"{name:14s} {nc:5d} {cs:6.1f} {what:32s} {n:7d} {w:10.0f} {c:9.0f}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifests", default=None, help="a filter output folder (default: sample set, filtered)")
    ap.add_argument("--media", action="store_true", help="also filter ../shared/media/video (real clips)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N make_sample timings")
    ap.add_argument("--min-s", type=float, default=3.0, help="loader timing: epochs for at least S cpu-s")
    ap.add_argument("--ray", action="store_true", help="also time run_shard with Ray, 2 workers")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shard_bench_"))
    try:
        sets = setup_manifests(args, tmp)
        for name, m in sets:
            rs = accepted(m)
            print(f"  {name}: {len(rs)} accepted segments, {sum(r['end_s'] - r['start_s'] for r in rs):.1f} s, "
                  f"source sizes {sorted({(int(r['width']), int(r['height'])) for r in rs})}", flush=True)
        shard_rows = [r for name, m in sets for r in bench_shard(name, m, args, LogMelFeatures())]
        print_shard(shard_rows)
        if args.ray:
            bench_ray(sets, tmp)
        speech = bench_speech()
        loader_sets = [make_loader_shards(name, m, tmp / f"loader_{name.split()[0]}") for name, m in sets]
        m8 = eight_second_manifest(dict(sets)["media"], tmp / "manifests_media8") if "media" in dict(sets) else None
        loader_sets += [make_loader_shards("media 8 s", m8, tmp / "loader_media8")] if m8 else []
        loaders = bench_loaders(loader_sets, args)

        print("\n== summary (one core, per CPU-second) ==")
        for r in [x for x in shard_rows if x["preset"] == "medium"]:
            print(f"shard {r['set']:10s} {r['size']} px medium: {ratio(r['n'], r['cpu']):.3f} clips/s, "
                  f"{ratio(r['src'], r['cpu']):.2f} source s/s, {ratio(r['mb'], r['cpu']):.2f} MB/s")
        for name, dim, t10, _, tb, clip_s in speech:
            print(f"speech {name}: {ratio(10, t10):.1f} s audio/s (10 s clip)"
                  + ("" if math.isnan(tb) else f", .batch of 8 clips: {ratio(clip_s, tb):.1f} s audio/s"))
        for name, _, cs, what, w, c, _ in loaders:
            if what in ("stage-1 pairs ppc=16", "stage-2 windows w=32 (D=20)"):
                target = f"  target >= {TARGET_PAIRS:.0f}/s: {'MET' if c >= TARGET_PAIRS else 'NOT MET'}"
                print(f"loader {name} ({cs:.1f} s clips, 256 px): {what}: {c:.0f}/s ({w:.0f} per wall-s)"
                      + (target if what.startswith("stage-1") else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
