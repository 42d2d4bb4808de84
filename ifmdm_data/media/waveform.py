"""Make any waveform safe to analyse: float32 mono with NaN/inf zeroed (copy or view).

Shared by the audio analyses (`vad`, `loudness`) and the speech-feature extractors
(`ifmdm_data.features`).
"""
from __future__ import annotations

import numpy as np


def as_mono(wav) -> np.ndarray:
    """float32 1-D copy with NaN/inf replaced by 0 (channels averaged when 2-D)."""
    a = np.asarray(wav, dtype=np.float32)
    if a.ndim == 0:
        a = a.reshape(1)
    elif a.ndim == 2:  # the shorter axis holds the channels
        a = a.mean(axis=int(np.argmin(a.shape)))
    elif a.ndim > 2:
        a = a.reshape(-1)
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def mono_view(wav) -> np.ndarray:
    """float32 1-D audio without a copy when it already is (`as_mono` otherwise); NaN/inf
    are zeroed later, block by block (`clean_nonfinite`), so a long clip is not copied whole."""
    a = np.asarray(wav, dtype=np.float32)
    return a if a.ndim == 1 else as_mono(a)


def clean_nonfinite(a: np.ndarray) -> np.ndarray:
    """NaN/inf -> 0, as `as_mono` does (a copy)."""
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
