"""ROC of the built-in AV-sync score of `ifmdm-data filter` (run by hand, not a test).

    .venv/bin/python benchmarks/av_sync_bench.py [--media ../shared/media] [--clips a.mp4,b.mp4]
                                                 [--max-seconds 10] [--no-wav] [--config FILE]
                                                 [--landmarks-only]

Issue 11 ("AV sync without SyncNet weights is weak"). The score measured is exactly the one
`filter` computes without `--syncnet`: `analyse.av_score` -> av_corr, av_lag_s: the lip motion
of every decoded frame (`signals.DenseMouth`) correlated with the speech envelope on a 25 Hz
grid (`avsync.motion_sync`), blended with the landmark mouth-opening correlation at the
analysis fps (`avsync.av_sync`); `--landmarks-only` (`analysis.dense_mouth: false`) measures
the landmark score alone, the score before. The decision is `decide.av_out_of_sync` with the
config's `decide.min_av_corr` / `decide.max_av_lag_s` (no SyncNet confidence, so the landmark
rule).

Design: `analyse.analyse_unit` runs ONCE per talking clip (default models, one unit covering
[0, min(duration, --max-seconds)), no speech detector, no SyncNet) and its per-frame tracks
(`t`, `mouth_open`, and the lip motion `motion_t`, `mouth_motion`) are kept. Then, for every
(clip, audio) pair, the audio window is built and scored the way `analyse._audio_stats` does
it (`audio.load_audio` at the config's sample rate, then `analyse.av_score`):
- positive: the clip's own audio over the segment's [start_s, end_s) (the pipeline's own path;
  the bench checks it reproduces the row's av_corr);
- negative: every OTHER talking clip's audio and (unless --no-wav) every speech wav in
  MEDIA/audio, decoded from its time 0 and TRIMMED to the segment length when longer or
  LOOP-PADDED (repeated from its start) when shorter, so there is speech over the whole segment.
A clip split into several segments (scene cut) gives one pair per segment.

Prints one row per pair (score, lag, out-of-sync verdict) and a summary: AUC of av_corr
(Mann-Whitney U / (n_pos * n_neg), ties count one half; NaN scores rank lowest, as decide()
treats NaN as out of sync), the false-reject rate of clean (own-audio) pairs at the default
threshold, and the fraction of mismatched pairs caught (flagged out of sync); over all segments
and again over segments at least `segment.min_duration_s` long (shorter ones are rejected
`too_short` by filter, so its AV-sync verdict never applies to them).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)
cv2.setNumThreads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ifmdm_data.filter import analyse  # noqa: E402
from ifmdm_data.media import audio, avsync
from ifmdm_data.filter.config import load_config  # noqa: E402
from ifmdm_data.filter.decide import av_out_of_sync  # noqa: E402
from ifmdm_data.media.probe import probe_file  # noqa: E402
from ifmdm_data.filter.work import plan_units  # noqa: E402

# talking clips whose soundtrack is the speech of the person on screen (../shared/media/README.md)
TALKING = ("aoc_talking.mp4", "man_suit_static_talking.mp4", "woman_quiet_talking.mp4",
           "woman_fullbody_smallface_hevc.mp4", "man_halfbody_talking_hevc.mp4", "man_talking_2s.mp4")


# ---------------------------------------------------------------- pure helpers (tested)
def auc_mann_whitney(pos, neg) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2
    (Mann-Whitney U / (n_pos * n_neg)). NaN scores rank below every finite score (and tie
    with each other). NaN when either side is empty."""
    p = np.asarray(pos, dtype=np.float64).reshape(-1)
    n = np.asarray(neg, dtype=np.float64).reshape(-1)
    if p.size == 0 or n.size == 0:
        return float("nan")
    p = np.where(np.isnan(p), -np.inf, p)
    n = np.where(np.isnan(n), -np.inf, n)
    gt = (p[:, None] > n[None, :]).sum()
    eq = (p[:, None] == n[None, :]).sum()
    return float((gt + 0.5 * eq) / (p.size * n.size))


def rates(pos_flagged, neg_flagged) -> tuple[float, float]:
    """(false-reject rate: fraction of clean pairs flagged out of sync, catch rate: fraction of
    mismatched pairs flagged). NaN for an empty side."""
    p = np.asarray(pos_flagged, dtype=bool).reshape(-1)
    n = np.asarray(neg_flagged, dtype=bool).reshape(-1)
    return (float(p.mean()) if p.size else float("nan"), float(n.mean()) if n.size else float("nan"))


def fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    """Trim `wav` to n samples, or loop-pad it (repeat from its start) up to n."""
    wav = np.asarray(wav).reshape(-1)
    if n <= 0:
        return wav[:0]
    if wav.size == 0:
        return np.zeros(n, dtype=np.float32)
    if wav.size >= n:
        return wav[:n]
    return np.tile(wav, int(math.ceil(n / wav.size)))[:n]


# ---------------------------------------------------------------- bench
def analyse_clip(path: Path, cfg, models, max_s: float) -> list[dict]:
    """One analyse_unit run over [0, min(duration, max_s)): per segment the row and tracks."""
    probe = probe_file(str(path))
    dur = probe.get("duration_s", float("nan"))
    unit = plan_units(path.stem, str(path), probe, max(cfg.segment.max_duration_s, 1e9))[0]
    unit["end_s"] = min(unit["end_s"], max_s) if math.isfinite(unit["end_s"]) else max_s
    segs = analyse.analyse_unit(unit, cfg, models, speech=None, syncnet=None)
    out = []
    for s in segs:
        r, tr = s["row"], s["tracks"]
        out.append(dict(clip=path.name, path=str(path), start_s=float(r["start_s"]), end_s=float(r["end_s"]),
                        t=np.asarray(tr["t"], np.float64), mouth=np.asarray(tr["mouth_open"], np.float64),
                        dense=(tr["motion_t"], tr["mouth_motion"]) if cfg.analysis.dense_mouth else None,
                        row_corr=float(r.get("av_corr", float("nan"))), duration=dur))
    return out


def score(seg: dict, wav: np.ndarray, cfg) -> dict:
    """The filter's score of a segment's mouth tracks against `wav` (starting at seg start_s)."""
    return analyse.av_score(seg["t"], seg["mouth"], seg["dense"], wav, seg["start_s"], seg["end_s"], cfg)


def summary(df: pd.DataFrame, d, clip_names: tuple, title: str) -> None:
    pos, neg = df[df["own"]], df[~df["own"]]
    neg_v = neg[neg["audio"].isin(clip_names)]
    fr, caught = rates(pos["out_of_sync"], neg["out_of_sync"])
    print(f"\n== summary: {title}")
    print(f"positives (own audio): {len(pos)}   negatives (other audio): {len(neg)}"
          f" ({len(neg_v)} from other clips, {len(neg) - len(neg_v)} from MEDIA/audio wavs)")
    print(f"AUC av_corr (best lag): {auc_mann_whitney(pos['av_corr'], neg['av_corr']):.3f}")
    print(f"AUC av_corr_zero (lag 0): {auc_mann_whitney(pos['av_corr_zero'], neg['av_corr_zero']):.3f}")
    print(f"AUC av_corr, clip-audio negatives only: {auc_mann_whitney(pos['av_corr'], neg_v['av_corr']):.3f}")
    print(f"false-reject rate of clean clips at min_av_corr={d.min_av_corr}: {fr:.3f}"
          f" ({int(pos['out_of_sync'].sum())}/{len(pos)}: {', '.join(pos[pos['out_of_sync']]['clip']) or '-'})")
    print(f"mismatches caught at min_av_corr={d.min_av_corr}: {caught:.3f}"
          f" ({int(neg['out_of_sync'].sum())}/{len(neg)})")
    print(f"clean av_corr: min {pos['av_corr'].min():.3f} median {pos['av_corr'].median():.3f};"
          f" mismatched av_corr: median {neg['av_corr'].median():.3f} max {neg['av_corr'].max():.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", default=str(ROOT.parent / "shared" / "media"))
    ap.add_argument("--clips", default=",".join(TALKING), help="comma-separated files under MEDIA/video")
    ap.add_argument("--max-seconds", type=float, default=10.0, help="analyse at most this much of each clip")
    ap.add_argument("--no-wav", action="store_true", help="do not use MEDIA/audio/*.wav as extra negatives")
    ap.add_argument("--config", default=None, help="filter config (default: the shipped defaults)")
    ap.add_argument("--landmarks-only", action="store_true",
                    help="the old score: landmark mouth opening at the analysis fps (analysis.dense_mouth off)")
    args = ap.parse_args(argv)

    media = Path(args.media)
    cfg = load_config(args.config)
    if args.landmarks_only:
        cfg.analysis.dense_mouth = False
    sr = cfg.audio.sample_rate
    d = cfg.decide
    clips = [media / "video" / c.strip() for c in args.clips.split(",") if c.strip()]
    missing = [str(c) for c in clips if not c.is_file()]
    if missing:
        print(f"missing clips: {missing}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    models, _ = analyse.load_models(cfg)

    segs, t_an = [], {}
    for c in clips:
        t1 = time.perf_counter()
        segs += analyse_clip(c, cfg, models, args.max_seconds)
        t_an[c.name] = time.perf_counter() - t1
        print(f"analysed {c.name}: {t_an[c.name]:.1f} s", flush=True)

    # audio sources: each talking clip's whole soundtrack (from time 0) and the speech wavs
    sources: dict[str, np.ndarray] = {}
    for c in clips:
        sources[c.name] = audio.load_audio(str(c), 0.0, None, sr)
    if not args.no_wav:
        for w in sorted((media / "audio").glob("*.wav")):
            sources[w.name] = audio.load_audio(str(w), 0.0, None, sr)

    rows = []
    for seg in segs:
        n = int(round((seg["end_s"] - seg["start_s"]) * sr))
        for name, src in sources.items():
            own = name == seg["clip"]
            if own:   # the pipeline's own path: the clip's audio over the segment
                wav = audio.load_audio(seg["path"], seg["start_s"], seg["end_s"], sr)
                fit = "own"
            else:
                wav = fit_length(src, n)
                fit = "trim" if src.size >= n else "loop"
            s = score(seg, wav, cfg)
            rows.append(dict(clip=seg["clip"], seg=f"{seg['start_s']:.1f}-{seg['end_s']:.1f}", audio=name,
                             dur_s=seg["end_s"] - seg["start_s"],
                             own=own, fit=fit, av_corr=s["av_corr"], av_lag_s=s["av_lag_s"],
                             av_corr_zero=s["av_corr_zero"], row_corr=seg["row_corr"] if own else np.nan))
    df = pd.DataFrame(rows)
    nan = pd.Series(np.nan, index=df.index)
    df["out_of_sync"] = av_out_of_sync(df["av_corr"], df["av_lag_s"], nan, nan, d).to_numpy()

    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    what = (f"avsync.motion_sync (lip motion of every decoded frame at {avsync.MOTION_RATE_HZ} Hz)"
            if cfg.analysis.dense_mouth else f"avsync.av_sync (landmark mouth opening at {cfg.analysis.fps} fps)")
    print(f"\nscore: {what}, lags within +-{cfg.audio.max_lag_s} s;"
          f" rule: av_corr < {d.min_av_corr} or |av_lag_s| > {d.max_av_lag_s} -> out of sync")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    own = df[df["own"]]
    bad = own[np.isfinite(own["row_corr"]) & ~np.isclose(own["av_corr"], own["row_corr"], atol=1e-6)]
    if len(bad):
        print(f"\nWARNING: own-audio score differs from analyse_unit's av_corr on {len(bad)} segment(s)")
    names = tuple(c.name for c in clips)
    summary(df, d, names, "all segments")
    long_ = df["dur_s"] >= cfg.segment.min_duration_s
    if not long_.all():
        summary(df[long_], d, names, f"segments >= min_duration_s={cfg.segment.min_duration_s} s"
                " (filter only gives av_out_of_sync to accepted segments; shorter ones are too_short)")
    print(f"time: {time.perf_counter() - t0:.1f} s (analysis {sum(t_an.values()):.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
