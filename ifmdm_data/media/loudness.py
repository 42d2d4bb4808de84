"""Loudness of a waveform: its RMS level in dBFS and its speech amplitude envelope over time.

Pure functions that accept odd input (empty arrays, silence, NaN, very short clips) and return
neutral values instead of raising: loudness -120 dBFS, envelope NaN outside the audio.
Times (`envelope`'s `times`) are seconds from the start of the waveform.
"""
from __future__ import annotations

import math

import numpy as np

from ifmdm_data.media.waveform import as_mono

DB_FLOOR = -120.0


def loudness_dbfs(wav: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS),
    floored at -120 (silence, empty input). NaN/inf samples count as 0."""
    a = as_mono(wav).astype(np.float64)
    if a.size == 0:
        return DB_FLOOR
    rms = math.sqrt(float(np.mean(a * a)))
    if rms <= 0.0 or not math.isfinite(rms):
        return DB_FLOOR
    return float(max(DB_FLOOR, 20.0 * math.log10(rms)))


def bandpass_speech(wav: np.ndarray, sample_rate: int, low_hz: float = 80.0,
                    high_hz: float = 4000.0) -> np.ndarray:
    """Zero-phase 4th-order Butterworth band-pass (default 80-4000 Hz, the top edge capped
    below Nyquist). Inputs too short for filtfilt's padding come back unfiltered."""
    from scipy.signal import butter, sosfiltfilt
    a = as_mono(wav).astype(np.float64)
    sample_rate = int(sample_rate)
    nyq = sample_rate / 2.0
    if a.size == 0 or sample_rate <= 0:
        return a
    high = min(float(high_hz), 0.45 * sample_rate)
    low = float(low_hz)
    if low <= 0 or low >= high:
        return a
    sos = butter(4, [low / nyq, high / nyq], btype="bandpass", output="sos")
    padlen = 3 * (2 * len(sos) + 1)
    if a.size <= padlen:
        return a
    return sosfiltfilt(sos, a)


def envelope(wav: np.ndarray, sample_rate: int, times: np.ndarray,
             win_s: float = 0.04) -> np.ndarray:
    """Speech amplitude envelope at `times` (seconds from the start of `wav`).

    The audio is band-passed to 80-4000 Hz (rumble and hiss count less), then for each
    time the RMS in a window of `win_s` centred on it is taken and log-compressed:
    log(rms + 1e-4) (natural log; silence -> about -9.2). Windows partly outside the audio
    use the overlapping part; a window entirely outside the audio gives NaN (so `av_sync`
    ignores those frames). Returns float64 of the same length as `times`.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.full(t.shape, np.nan)
    sample_rate = int(sample_rate)
    a = as_mono(wav)
    if t.size == 0 or a.size == 0 or sample_rate <= 0:
        return out
    x = bandpass_speech(a, sample_rate)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    half = max(float(win_s), 1.0 / sample_rate) / 2.0
    ok = np.isfinite(t)
    lo = np.zeros(t.shape, dtype=np.int64)
    hi = np.zeros(t.shape, dtype=np.int64)
    lo[ok] = np.clip(np.round((t[ok] - half) * sample_rate), 0, a.size).astype(np.int64)
    hi[ok] = np.clip(np.round((t[ok] + half) * sample_rate), 0, a.size).astype(np.int64)
    good = ok & (hi > lo)
    n = (hi[good] - lo[good]).astype(np.float64)
    energy = np.maximum(csum[hi[good]] - csum[lo[good]], 0.0)  # cumsum round-off can dip < 0
    out[good] = np.log(np.sqrt(energy / n) + 1e-4)
    return out
