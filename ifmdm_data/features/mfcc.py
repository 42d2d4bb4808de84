"""python_speech_features' MFCC, re-implemented in numpy/scipy (no dependency): what
syncnet_python feeds SyncNet's audio stream (`filter --syncnet`, `ifmdm-eval` LSE-D / LSE-C).
Checked against python_speech_features 0.6 itself (tests/data holds its output for a test
signal)."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

AUDIO_RATE = 16000


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_filters: int = 26, n_fft: int = 512, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(n_filters, n_fft // 2 + 1) triangular mel filters on FFT bins, built as
    python_speech_features' `get_filterbanks`: n_filters + 2 points evenly spaced in mel from
    0 Hz to sample_rate / 2, each put on bin b = floor((n_fft + 1) f / sample_rate); filter j
    rises as (k - b_j) / (b_j+1 - b_j) on bins b_j <= k < b_j+1 and falls as
    (b_j+2 - k) / (b_j+2 - b_j+1) on b_j+1 <= k < b_j+2 (peak 1 at b_j+1, no area normalisation)."""
    b = np.floor((n_fft + 1) * mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_filters + 2))
                 / sample_rate)
    k = np.arange(n_fft // 2 + 1)[None, :]
    lo, mid, hi = b[:-2, None], b[1:-1, None], b[2:, None]
    rise = np.where((k >= lo) & (k < mid), (k - lo) / np.maximum(mid - lo, 1.0), 0.0)
    fall = np.where((k >= mid) & (k < hi), (hi - k) / np.maximum(hi - mid, 1.0), 0.0)
    return rise + fall


def mel_energies(signal: np.ndarray, sample_rate: int = AUDIO_RATE, win_s: float = 0.025,
                 hop_s: float = 0.01, n_filters: int = 26, n_fft: int = 512,
                 preemph: float = 0.97) -> Tuple[np.ndarray, np.ndarray]:
    """Mel filterbank energies (T, n_filters) and total frame energies (T,), as
    python_speech_features' `fbank` with its defaults: pre-emphasis y[0] = x[0],
    y[t] = x[t] - 0.97 x[t-1]; frames of round(0.025 sr) = 400 samples every 160 (no taper:
    a rectangular window), T = 1 + ceil((len - 400) / 160) (1 when shorter), the last frame
    zero-padded; power |rfft(frame, 512)|^2 / 512; energy = the sum of a frame's power
    spectrum; exact zeros replaced by float eps (so the log is finite)."""
    x = np.asarray(signal, np.float64).reshape(-1)
    if len(x) == 0:
        return np.zeros((0, n_filters)), np.zeros(0)
    x = np.concatenate([x[:1], x[1:] - preemph * x[:-1]])
    win, hop = int(math.floor(win_s * sample_rate + 0.5)), int(math.floor(hop_s * sample_rate + 0.5))
    n = 1 if len(x) <= win else 1 + int(math.ceil((len(x) - win) / hop))
    x = np.pad(x, (0, (n - 1) * hop + win - len(x)))
    frames = x[np.arange(n)[:, None] * hop + np.arange(win)[None, :]]   # (T, 400)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft             # (T, 257)
    mel = power @ mel_filterbank(n_filters, n_fft, sample_rate).T       # (T, 26)
    energy = power.sum(1)
    eps = np.finfo(np.float64).eps
    return np.where(mel == 0, eps, mel), np.where(energy == 0, eps, energy)


def syncnet_mfcc(signal: np.ndarray, sample_rate: int = AUDIO_RATE, n_ceps: int = 13,
                 lifter: int = 22) -> np.ndarray:
    """The MFCC syncnet_python feeds its audio stream, (13, T) at 100 frames per second.

    syncnet_python calls `python_speech_features.mfcc(audio, 16000)` on the int16 samples
    that scipy's wavfile.read gives (pass the signal in int16 units: only c0 depends on the
    scale). With that function's defaults this is: `mel_energies` (25 ms frames every 10 ms,
    pre-emphasis 0.97, rectangular window, 512-point FFT, 26 mel filters), natural log,
    DCT-II with norm="ortho" (scipy's, as python_speech_features uses scipy.fftpack's), the
    first 13 coefficients, lifter c_n *= 1 + (22 / 2) sin(pi n / 22), and c0 replaced by the
    log of the frame's total energy (appendEnergy=True). Row t starts at sample 160 t, so MFCC
    frames 4i .. 4i+19 start with video frame i at 25 fps (640 samples per frame).
    Checked against python_speech_features 0.6 itself: equal to 1e-13 on 9.6 s of speech;
    tests/data holds its output for a test signal (test_syncnet_mfcc_equals_python_speech_features)."""
    from scipy.fft import dct
    mel, energy = mel_energies(signal, sample_rate)
    if len(mel) == 0:
        return np.zeros((n_ceps, 0))
    ceps = dct(np.log(mel), type=2, axis=1, norm="ortho")[:, :n_ceps]
    ceps = ceps * (1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(n_ceps) / lifter))
    ceps[:, 0] = np.log(energy)
    return ceps.T


def to_int16_scale(wav: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> the values of its 16-bit PCM samples (as wavfile.read gives)."""
    return np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768.0, 32767.0)
