"""Audio-visual agreement: how well a mouth signal follows the speech envelope (`av_sync`,
`motion_sync`), the filter's built-in lip-sync score.

Pure functions that accept odd input (empty arrays, constant or NaN series, very short clips)
and return NaN correlations instead of raising. Times are seconds from the file's time 0
(`timeline.time_origin_s`), the timeline video frames use too.
"""
from __future__ import annotations

import math

import numpy as np

from ifmdm_data.media.loudness import envelope


_NAN_SYNC = {"av_corr": float("nan"), "av_lag_s": float("nan"), "av_corr_zero": float("nan")}


def _nan_moving_mean(x: np.ndarray, win: int) -> np.ndarray:
    """Centred moving mean over `win` samples that ignores NaN (NaN where no valid sample)."""
    valid = np.isfinite(x)
    v = np.where(valid, x, 0.0)
    kernel = np.ones(win)
    s = np.convolve(v, kernel, mode="same")
    c = np.convolve(valid.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1e-12), np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if den <= 1e-12 * max(1, x.size) or not math.isfinite(den):
        return float("nan")
    return float(np.clip(np.dot(x, y) / den, -1.0, 1.0))


def av_sync(mouth: np.ndarray, env: np.ndarray, fps: float, max_lag_s: float = 0.4,
            min_overlap_s: float = 2.0, detrend_s: float | None = 1.0) -> dict:
    """Audio-visual agreement between a mouth-opening series and the speech envelope.

    Both series are sampled at the same times, `fps` per second (the longer one is cut to
    the shorter). Each is detrended (its ~`detrend_s` centred moving average subtracted,
    so slow loudness drift does not dominate; None or 0 disables) and the Pearson
    correlation (z-scored signals, no derivatives) is taken at every integer-frame lag L in
    [-max_lag_s, max_lag_s] over the pairs (mouth[i], env[i + L]) where both are finite:
    NaN frames (no face, audio missing) are excluded pairwise. A lag needs at least
    `min_overlap_s` seconds of valid pairs, else its correlation is NaN.

    Returns {'av_corr': the best (largest) correlation, 'av_lag_s': its lag in seconds,
    positive when the audio lags the video (the sound comes after the mouth moves),
    'av_corr_zero': the correlation at lag 0}. All NaN when no lag has enough overlap or a
    signal is constant. Ties go to the smallest |lag|.
    """
    try:
        fps = float(fps)
        max_lag_s = float(max_lag_s)
    except (TypeError, ValueError):
        return dict(_NAN_SYNC)
    if not (math.isfinite(fps) and fps > 0 and math.isfinite(max_lag_s)):
        return dict(_NAN_SYNC)
    m = np.asarray(mouth, dtype=np.float64).reshape(-1)
    e = np.asarray(env, dtype=np.float64).reshape(-1)
    n = min(m.size, e.size)
    m = np.where(np.isfinite(m[:n]), m[:n], np.nan)
    e = np.where(np.isfinite(e[:n]), e[:n], np.nan)
    min_pairs = max(3, int(math.ceil(min_overlap_s * fps - 1e-9)))
    if n < min_pairs:
        return dict(_NAN_SYNC)
    if detrend_s:
        win = max(3, int(round(detrend_s * fps)) | 1)  # odd, >= 3 frames
        if win < n:
            m = m - _nan_moving_mean(m, win)
            e = e - _nan_moving_mean(e, win)

    k = max(0, int(math.floor(abs(max_lag_s) * fps + 1e-9)))
    lags = np.arange(-k, k + 1)
    corrs = np.full(lags.shape, np.nan)
    for j, lag in enumerate(lags):
        if lag >= 0:
            mm, ee = m[:n - lag], e[lag:]
        else:
            mm, ee = m[-lag:], e[:n + lag]
        both = np.isfinite(mm) & np.isfinite(ee)
        if int(both.sum()) < min_pairs:
            continue
        corrs[j] = _pearson(mm[both], ee[both])

    zero = float(corrs[k])
    if not np.any(np.isfinite(corrs)):
        return {"av_corr": float("nan"), "av_lag_s": float("nan"), "av_corr_zero": zero}
    best_val = np.nanmax(corrs)
    cand = np.flatnonzero(np.isfinite(corrs) & (corrs >= best_val - 1e-12))
    best = cand[np.argmin(np.abs(lags[cand]))]
    return {"av_corr": float(corrs[best]), "av_lag_s": float(lags[best] / fps),
            "av_corr_zero": zero}


MOTION_RATE_HZ = 25.0        # the uniform grid the dense lip-motion track is resampled to
MOTION_DETREND_S = 2.0       # its detrending window (bench clips, prototype: 1 s AUC 0.93, 2 s 0.965)
# The mouth moves before the sound it shapes: on the real talking clips the motion energy
# leads the speech envelope by 0.04-0.4 s (median 0.2 s). The lag search is centred on this
# lead, and av_lag_s is reported relative to it.
MOTION_LEAD_S = 0.16
# The built-in score (`analyse.av_score`) is a weighted mean of the lip-motion score (weight
# 1 - this) and the landmark mouth-opening score at the analysis rate (this). On the real
# clips (benchmarks/av_sync_bench.py, segments >= 2.5 s) the lip motion carries it: AUC
# 0.945 alone, 0.965 blended, 0.625 landmark alone; on mouths that open exactly with the
# loudness (the synthetic sample set) the landmark score is the stronger one.
AV_LANDMARK_WEIGHT = 0.3


def resample_track(t: np.ndarray, x: np.ndarray, start_s: float, end_s: float, rate: float,
                   max_gap_s: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values): an irregularly sampled track (times `t`, values `x`; NaN ignored)
    linearly interpolated onto the uniform grid start_s, start_s + 1/rate, ... < end_s. Grid
    points outside the samples' span or in a gap longer than `max_gap_s` are NaN; an infinite
    end_s ends the grid at the last sample."""
    t = np.asarray(t, np.float64).reshape(-1)
    x = np.asarray(x, np.float64).reshape(-1)[:t.size]
    ok = np.isfinite(t) & np.isfinite(x)
    t, x = t[ok], x[ok]
    end = min(float(end_s), float(t.max()) + 1.0 / float(rate)) if t.size else float(start_s)
    g = np.arange(float(start_s), end - 1e-9, 1.0 / float(rate)) if end > start_s else np.zeros(0)
    out = np.full(g.shape, np.nan)
    if t.size < 2:
        return g, out
    y = np.interp(g, t, x)
    lo = np.clip(np.searchsorted(t, g, "right") - 1, 0, t.size - 1)   # last sample <= g
    hi = np.clip(np.searchsorted(t, g, "left"), 0, t.size - 1)        # first sample >= g
    gap = t[hi] - t[lo]
    inside = (g >= t[0]) & (g <= t[-1]) & (gap <= max_gap_s)
    out[inside] = y[inside]
    return g, out


def motion_sync(t: np.ndarray, motion: np.ndarray, wav: np.ndarray, sample_rate: int,
                start_s: float, end_s: float, max_lag_s: float = 0.4,
                rate: float = MOTION_RATE_HZ, detrend_s: float = MOTION_DETREND_S,
                lead_s: float = MOTION_LEAD_S) -> dict:
    """`av_sync` of the lip-motion energy of every decoded frame (`signals.DenseMouth`: times
    `t` in seconds from the start of the file, `motion`) against the speech envelope of
    `wav` (which starts at `start_s`): both on a uniform `rate` grid over [start_s, end_s)
    (`resample_track`; the envelope at the grid times), detrended over `detrend_s`, offset
    search within +-max_lag_s in 1/rate steps around `lead_s` (the motion at time t is paired
    with the envelope at t + lead_s + lag). Same keys as `av_sync`; av_lag_s and
    av_corr_zero are relative to the lead."""
    g, m = resample_track(np.asarray(t, np.float64) + float(lead_s), motion, start_s, end_s, rate)
    if g.size == 0:
        return dict(_NAN_SYNC)
    env = envelope(wav, sample_rate, g - float(start_s))
    return av_sync(m, env, rate, max_lag_s, detrend_s=detrend_s)
