"""Log-mel speech features (the default extractor), numpy only: `LogMelFeatures`.

float32 mono 16 kHz audio in, float32 (T_native, n_mels) out at 100 Hz (default 10 ms hop);
frame i is centred at (i + 0.5) / rate_hz seconds (the time convention of
`ifmdm_data.features.speech`).
"""
from __future__ import annotations

import numpy as np

from ifmdm_data.features.common import SAMPLE_RATE, FeatureError
from ifmdm_data.media.waveform import as_mono, clean_nonfinite, mono_view


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, peak 1, no area
    normalisation (torchaudio's `melscale_fbanks(..., norm=None, mel_scale="htk")`)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lo) / np.maximum(mid - lo, 1e-12)
    down = (hi - freqs[None, :]) / np.maximum(hi - mid, 1e-12)
    return np.maximum(0.0, np.minimum(up, down))


class LogMelFeatures:
    """log(mel power + eps) of 25 ms Hann windows every 10 ms (defaults), numpy only.

    Frame i's window is centred at (i + 0.5) * hop samples (the audio is zero-padded at both
    ends as needed), so there are ceil(n_samples / hop) frames and frame i is centred at
    (i + 0.5) / rate_hz seconds. Power spectrum of an n_fft-point real FFT (n_fft = the next
    power of two >= the window), HTK mel filters from 0 Hz to sr / 2, natural log.
    """

    type = "logmel"

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, win_s: float = 0.025,
                 hop_s: float = 0.01, eps: float = 1e-6):
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win = int(round(float(win_s) * self.sample_rate))
        self.hop = int(round(float(hop_s) * self.sample_rate))
        if self.sample_rate <= 0 or self.n_mels <= 0 or self.win <= 0 or self.hop <= 0:
            raise FeatureError(f"log-mel: invalid settings sample_rate={sample_rate} "
                               f"n_mels={n_mels} win_s={win_s} hop_s={hop_s}")
        self.win_s = self.win / self.sample_rate
        self.hop_s = self.hop / self.sample_rate
        self.eps = float(eps)
        self.n_fft = 1 << max(0, (self.win - 1).bit_length())
        self.dim = self.n_mels
        self.rate_hz = self.sample_rate / self.hop
        self.offset_s = 0.5 / self.rate_hz
        # periodic Hann (torch.hann_window's default)
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win) / self.win))
        self._fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels).T.astype(np.float32)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        a = as_mono(wav)
        return self._frames(a, 0, -(-a.size // self.hop))  # ceil(n / hop) frames

    def stream(self, wav: np.ndarray, block_s: float = 2.0):
        """The frames of `__call__(wav)` as consecutive blocks of `block_s` seconds, each
        computed when asked for (log-mel is frame-local: a block reads only its own windows)."""
        a = mono_view(wav)
        n_frames = -(-a.size // self.hop)
        block = max(1, int(round(float(block_s) * self.rate_hz)))
        for i0 in range(0, n_frames, block):
            yield self._frames(a, i0, min(n_frames, i0 + block))

    def _frames(self, a: np.ndarray, i0: int, i1: int) -> np.ndarray:
        """Frames i0..i1-1 of the clip `a`: frame i's window is samples
        [i * hop - front, i * hop - front + win), front = win // 2 - hop // 2 (centred at
        (i + 0.5) * hop), zero outside the clip."""
        if i1 <= i0:
            return np.zeros((0, self.dim), dtype=np.float32)
        front = self.win // 2 - self.hop // 2
        s0 = i0 * self.hop - front
        s1 = (i1 - 1) * self.hop - front + self.win
        seg = np.zeros(s1 - s0, dtype=np.float32)
        lo, hi = max(s0, 0), min(s1, a.size)
        if hi > lo:
            seg[lo - s0:hi - s0] = clean_nonfinite(a[lo:hi])
        frames = np.lib.stride_tricks.sliding_window_view(seg, self.win)[::self.hop]  # (i1-i0, win)
        spec = np.fft.rfft(frames * self._window, n=self.n_fft, axis=-1)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        return np.log(power @ self._fb + self.eps).astype(np.float32)

    def info(self) -> dict:
        return {"type": self.type, "dim": int(self.dim), "rate_hz": float(self.rate_hz),
                "layers": None, "checkpoint": None, "offset_s": float(self.offset_s),
                "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "win_s": float(self.win_s), "hop_s": float(self.hop_s), "n_fft": self.n_fft,
                "eps": self.eps, "mel_scale": "htk", "log": "natural"}
