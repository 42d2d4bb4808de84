"""Per-core speed of `filter`'s analysis against decoding alone and against a naive baseline.

Run by hand (not a test):

    .venv/bin/python benchmarks/filter_bench.py [--media DIR] [--sample DIR] [--repeat N]
                                                [--limit-s S] [--ray]

Pinned to ONE CPU core (affinity, 1 thread for torch / OpenCV / BLAS), for every video file of
the real media folder (default: ../shared/media/video) and of the sample set (made in a temp
folder with `ifmdm_data.sample.make_sample_set` unless --sample is given), it times, best of N:

- decode:  `video.decode_only` over the clip: every frame decoded, nothing converted;
- filter:  `analyse.analyse_unit` over all the clip's work units (`work.plan_units`, default
           config), models and VAD loaded once beforehand; includes audio and speech detection.
           Also a per-stage breakdown (decode+resize, detector, mesh, segmenter, audio, VAD);
- naive:   every frame decoded at full resolution to RGB (PyAV rgb24), then mediapipe FaceMesh
           (static_image_mode, refine_landmarks, 1 face) and SelfieSegmentation (landscape)
           on every frame, in one process.

Targets (DESIGN.md): filter <= 3x decode time, and >= 3x faster than naive, per core.
--limit-s S caps the analysed duration of each clip for all three methods alike (quick runs).
--ray also times the real end-to-end `pipeline.run_filter` on the media folder with 2 workers
(Ray start included; affinity restored to all cores first).
The identify step (face descriptors, pHashes, audio fingerprint per segment: `identity:` in the
config; off with a --config that sets `identity: {enabled: false}`) is timed as its own stage,
with its cost per segment.
--syncnet FILE adds the SyncNet sync check (`filter --syncnet`) to `filter` (syncnet_python
layout; a random-init one has the same cost: `--syncnet random` makes one in a temp dir) and
its own line in the breakdown ("syncnet": the network and MFCC; the crops count under
decode+resize).
"""
from __future__ import annotations

import os

from _onecore import pin_one_core, quiet_stderr

_CPU, _ALL_CPUS = pin_one_core("min")

import argparse, math, sys, tempfile, time  # noqa: E401,E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ifmdm_data.filter import analyse  # noqa: E402
from ifmdm_data.media import audio
from ifmdm_data.filter.config import FilterConfig, load_config  # noqa: E402
from ifmdm_data.errors import ClipError  # noqa: E402
from ifmdm_data.filter.inputs import VIDEO_EXTENSIONS  # noqa: E402
from ifmdm_data.media.probe import probe_file  # noqa: E402
from ifmdm_data.media.video import decode_only  # noqa: E402
from ifmdm_data.filter.work import plan_units  # noqa: E402

STAGES = ("decode+resize", "detector", "mesh", "mesh reset", "segmenter", "audio load", "vad", "syncnet", "identify")


def best_of(n, fn):
    best, out = math.inf, None
    for _ in range(n):
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        if dt < best:
            best, out = dt, r
    return best, out


class StageTimer:
    """Wraps the models' methods, the frame iterator and the audio loader with timers."""

    def __init__(self, models, speech):
        self.t = defaultdict(float)
        from ifmdm_data.faces import syncnet as sn
        sn.sync_scores = self._wrap(sn.sync_scores, "syncnet")
        for obj, name, stage in ((models.detector, "detect", "detector"),
                                 (models.landmarks, "landmarks", "mesh"),
                                 (models.landmarks, "reset", "mesh reset"),
                                 (models.segmenter, "person_mask", "segmenter"),
                                 (speech, "speech_ratio", "vad")):
            setattr(obj, name, self._wrap(getattr(obj, name), stage))
        audio.load_audio = self._wrap(audio.load_audio, "audio load")
        orig_iter = analyse.iter_frames

        def timed_iter(*a, **k):
            it = orig_iter(*a, **k)
            while True:
                t0 = time.perf_counter()
                x = next(it, None)
                self.t["decode+resize"] += time.perf_counter() - t0
                if x is None:
                    return
                yield x
        analyse.iter_frames = timed_iter

    def _wrap(self, fn, stage):
        def f(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.t[stage] += time.perf_counter() - t0
            return out
        return f


class Naive:
    def __init__(self):
        import mediapipe as mp
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                                   max_num_faces=1)
        self.seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=1)

    def run(self, path, limit_s):
        import av
        n = 0
        with av.open(path) as c:
            st = c.streams.video[0]
            st.thread_type, st.codec_context.thread_count = "SLICE", 1
            tb = float(st.time_base)
            for fr in c.decode(st):
                if fr.pts is not None and fr.pts * tb >= limit_s:
                    break
                rgb = fr.to_ndarray(format="rgb24")
                self.mesh.process(rgb)
                self.seg.process(rgb)
                n += 1
        return n


def clip_units(path, cfg, limit_s):
    probe = probe_file(path)
    units = []
    for u in plan_units("bench", path, probe, cfg.segment.max_duration_s):
        if u["start_s"] < limit_s:
            u["end_s"] = min(u["end_s"], limit_s)
            units.append(u)
    return probe, units


def bench_set(name, files, cfg, models, speech, timer, naive, args, syncnet=None, identify=None):
    rows, stages = [], defaultdict(float)
    for path in files:
        try:
            probe, units = clip_units(path, cfg, args.limit_s)
        except ClipError as e:
            print(f"  [{name}] skip {Path(path).name}: probe failed ({e.reason})", flush=True)
            continue
        dur = min(probe["duration_s"], args.limit_s)
        t_dec, n_src = best_of(args.repeat, lambda: decode_only(path, 0.0, args.limit_s))
        best_filt, best_st = math.inf, {}
        for _ in range(args.repeat):
            timer.t.clear()
            t0 = time.perf_counter()
            for u in units:
                try:
                    res = analyse.analyse_unit(u, cfg, models, speech, syncnet)
                except ClipError as e:
                    print(f"  [{name}] {Path(path).name}: {e.reason}", flush=True)
                    continue
                for r in res if identify else ():      # filter's identify step (work.run_unit)
                    t1, a1 = time.perf_counter(), timer.t["audio load"]
                    identify(path, r["row"]["start_s"], r["row"]["end_s"], probe.get("rotation") or 0,
                             face_rel=r["row"].get("face_rel"), frames=r.get("frames") or None)
                    timer.t["audio load"] = a1           # its audio decode counts under identify
                    timer.t["identify"] += time.perf_counter() - t1
                    timer.t["identify segments"] += 1
            dt = time.perf_counter() - t0
            if dt < best_filt:
                best_filt, best_st = dt, dict(timer.t)
        t_naive = best_of(args.repeat, lambda: naive.run(path, args.limit_s))[0] if naive else math.nan
        for k, v in best_st.items():
            stages[k] += v
        stages["total"] += best_filt
        rows.append(dict(clip=Path(path).name, dur=dur, frames=n_src, dec=t_dec, filt=best_filt,
                         naive=t_naive))
        print(f"  [{name}] {Path(path).name}: decode {t_dec:.2f}s filter {best_filt:.2f}s "
              f"naive {t_naive:.2f}s", flush=True)
    return rows, stages


def ratio(a, b):
    return a / b if b else math.nan


def print_table(name, rows, stages):
    hdr = f"{'clip':34s} {'dur s':>6s} {'frames':>6s} {'decode s':>8s} {'filter s':>8s} " \
          f"{'naive s':>8s} {'filt/dec':>8s} {'naive/filt':>10s} {'filt fr/s':>9s}"
    print(f"\n== {name} (one core: cpu {_CPU}) ==\n{hdr}\n{'-' * len(hdr)}")
    for r in rows:
        print(f"{r['clip'][:34]:34s} {r['dur']:6.1f} {r['frames']:6d} {r['dec']:8.2f} {r['filt']:8.2f} "
              f"{r['naive']:8.2f} {ratio(r['filt'], r['dec']):8.2f} {ratio(r['naive'], r['filt']):10.2f} "
              f"{ratio(r['frames'], r['filt']):9.1f}")
    if not rows:
        return
    n = len(rows)
    fr, dur = sum(r["frames"] for r in rows), sum(r["dur"] for r in rows)
    dec, filt, naive = (sum(r[k] for r in rows) for k in ("dec", "filt", "naive"))
    print(f"{'TOTAL':34s} {dur:6.1f} {fr:6d} {dec:8.2f} {filt:8.2f} {naive:8.2f} "
          f"{ratio(filt, dec):8.2f} {ratio(naive, filt):10.2f} {ratio(fr, filt):9.1f}")
    print(f"per core:  {'':8s} {'clips/s':>8s} {'frames/s':>9s} {'x realtime':>10s}")
    for label, t in (("decode", dec), ("filter", filt), ("naive", naive)):
        print(f"           {label:8s} {ratio(n, t):8.3f} {ratio(fr, t):9.1f} {ratio(dur, t):10.2f}")
    r1, r2 = ratio(filt, dec), ratio(naive, filt)
    print(f"target filter <= 3x decode:   {r1:5.2f}x  {'MET' if r1 <= 3 else 'NOT MET'}")
    print(f"target >= 3x faster than naive: {r2:5.2f}x  {'MET' if r2 >= 3 else 'n/a' if math.isnan(r2) else 'NOT MET'}")
    tot = stages.get("total", 0.0)
    parts = [(k, stages.get(k, 0.0)) for k in STAGES if k not in ("syncnet", "identify") or stages.get(k)]
    parts.append(("other (cuts, signals, stats)", tot - sum(v for _, v in parts)))
    print("filter stages: " + ", ".join(f"{k} {v:.2f}s ({100 * ratio(v, tot):.0f}%)" for k, v in parts))
    if stages.get("identify segments"):
        n_seg = stages["identify segments"]
        print(f"identify (pHashes, dlib descriptors, Chromaprint; included in filter): {stages['identify']:.2f}s "
              f"for {n_seg:.0f} segments = {stages['identify'] / n_seg:.2f} s per segment")


def load_bench_syncnet(path):
    from ifmdm_data.faces.syncnet import SyncNetPython, load_filter_syncnet
    if path != "random":
        return load_filter_syncnet(path)
    return SyncNetPython().eval().requires_grad_(False)


def list_videos(d):
    return sorted(str(p) for p in Path(d).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)


def run_ray(media):
    from ifmdm_data.filter.pipeline import run_filter
    os.sched_setaffinity(0, _ALL_CPUS)
    n = len(list_videos(media))
    with tempfile.TemporaryDirectory() as out, quiet_stderr():
        t0 = time.perf_counter()
        summary = run_filter([str(media)], out, FilterConfig(), workers=2, progress=False)
        dt = time.perf_counter() - t0
    print(f"\n== run_filter end to end, Ray, workers=2, {len(_ALL_CPUS)} cpus ==\n"
          f"{n} files in {dt:.1f} s wall (Ray start included): {n / dt:.3f} files/s "
          f"(summary elapsed_s {summary.get('elapsed_s')}, accepted {summary.get('accepted', '?')})")


def main():
    default_media = Path(__file__).resolve().parents[2] / "shared" / "media" / "video"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", default=str(default_media))
    ap.add_argument("--sample", default=None, help="sample set folder (default: make one in a temp dir)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N timings")
    ap.add_argument("--limit-s", type=float, default=math.inf, help="analyse at most S s of each clip")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--ray", action="store_true", help="also time run_filter with Ray, 2 workers")
    ap.add_argument("--config", default=None, help="filter YAML (any subset of keys) instead of the defaults")
    ap.add_argument("--syncnet", default=None,
                    help="syncnet_v2.model (or 'random': a random-init one) to time the SyncNet check too")
    args = ap.parse_args()

    sets = []
    if Path(args.media).is_dir():
        sets.append(("shared media", list_videos(args.media)))
    else:
        print(f"note: media folder {args.media} not found: skipping it")
    tmp = None
    if args.sample:
        sets.append(("sample set", list_videos(args.sample)))
    else:
        try:
            from ifmdm_data.sample import make_sample_set
            tmp = tempfile.TemporaryDirectory()
            with quiet_stderr():
                make_sample_set(tmp.name)
            sets.append(("sample set", list_videos(tmp.name)))
        except Exception as e:  # noqa: BLE001 - the sample module may be unfinished
            print(f"note: could not make the sample set ({type(e).__name__}: {e}): skipping it")

    cfg = load_config(args.config) if args.config else FilterConfig()
    with quiet_stderr():
        models, speech = analyse.load_models(cfg)
        naive = None if args.no_naive else Naive()
        timer = StageTimer(models, speech)
        syncnet = load_bench_syncnet(args.syncnet) if args.syncnet else None
        identify = None
        if cfg.identity.enabled:
            from ifmdm_data.filter.identify import identifier
            identify = identifier(cfg.identity, cfg.audio.sample_rate)
        if sets and sets[0][1]:  # warm-up: first graph runs, first VAD call
            p = sets[0][1][0]
            _, us = clip_units(p, cfg, 1.0)
            analyse.analyse_unit(us[0], cfg, models, speech, syncnet)
            if naive:
                naive.run(p, 0.2)
    results = []
    for name, files in sets:
        with quiet_stderr():
            results.append((name, *bench_set(name, files, cfg, models, speech, timer, naive, args, syncnet,
                                              identify)))
    lim = "" if math.isinf(args.limit_s) else f", each clip capped at {args.limit_s:g} s"
    print(f"\nfilter_bench: best of {args.repeat}{lim}; default config "
          f"(analysis {cfg.analysis.fps} fps, long side {cfg.analysis.max_side}, "
          f"detect {cfg.analysis.detect_fps} fps, segment {cfg.analysis.segmentation_fps} fps, "
          f"backend {cfg.analysis.backend}"
          f"{(', SyncNet check every %g s' % cfg.audio.sync_every_s) if args.syncnet else ''})")
    for name, rows, stages in results:
        print_table(name, rows, stages)
    if args.ray and Path(args.media).is_dir():
        run_ray(args.media)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
