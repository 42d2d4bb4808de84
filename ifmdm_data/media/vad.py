"""Speech presence of a waveform: silero-vad speech probabilities, segments and ratio.

`SpeechDetector` holds the silero-vad model (shipped inside the silero-vad wheel, so it loads
offline). Odd input (empty arrays, silence, NaN, very short clips) gives neutral values
instead of raising: no segments, speech ratio 0.
"""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np

from ifmdm_data.media.waveform import as_mono

VAD_RATES = (8000, 16000)


def _resample_for_vad(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    if sample_rate in VAD_RATES:
        return wav, sample_rate
    from scipy.signal import resample_poly
    frac = Fraction(16000, int(sample_rate))
    out = resample_poly(wav, frac.numerator, frac.denominator).astype(np.float32)
    return out, 16000


class SpeechDetector:
    """silero-vad speech detector (the jit model shipped in the silero-vad wheel).

    Load once per worker and reuse; not safe to share between threads (the model is
    recurrent and keeps state). Importing silero_vad calls torch.set_num_threads(1) as a
    side effect; this class restores the caller's thread count after the import.
    Audio at any rate is accepted: rates other than 8/16 kHz are resampled to 16 kHz.
    """

    def __init__(self, threshold: float = 0.5):
        import torch
        n_threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
            from silero_vad.utils_vad import get_speech_timestamps_from_probs
        finally:
            torch.set_num_threads(n_threads)
        with warnings.catch_warnings():
            # torch.jit.load and importlib.resources.path deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = load_silero_vad(onnx=False)
        self.threshold = float(threshold)
        self._from_probs = get_speech_timestamps_from_probs
        self._torch = torch

    def speech_probs(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        """Per-window speech probabilities and the window hop in samples at the VAD rate
        (512 samples = 32 ms at 16 kHz, 256 at 8 kHz). Returns (probs, hop) with the VAD
        rate implied: hop 512 -> 16 kHz, hop 256 -> 8 kHz."""
        a, sr = _resample_for_vad(as_mono(wav), int(sample_rate))
        hop = 512 if sr == 16000 else 256
        if len(a) == 0:
            return np.zeros(0, dtype=np.float32), hop
        if len(a) < hop:  # the model refuses less than one window
            a = np.concatenate([a, np.zeros(hop - len(a), dtype=np.float32)])
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        with torch.inference_mode():
            if hasattr(self.model, "audio_forward"):
                probs = self.model.audio_forward(x.unsqueeze(0), sr)[0].numpy()
            else:  # pragma: no cover - other model flavours
                self.model.reset_states()
                pad = (-len(a)) % hop
                x = torch.nn.functional.pad(x, (0, pad))
                probs = np.array([self.model(x[i:i + hop], sr).item()
                                  for i in range(0, len(x), hop)], dtype=np.float32)
        return np.asarray(probs, dtype=np.float32).reshape(-1), hop

    def speech_segments(self, wav: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
        """Speech segments as (start_s, end_s) seconds relative to the start of `wav`,
        sorted, non-overlapping, clipped to the duration. Empty for empty/silent input."""
        sample_rate = int(sample_rate)
        if sample_rate <= 0:
            return []
        a = as_mono(wav)
        duration = len(a) / sample_rate
        if len(a) == 0 or not np.any(a):
            return []
        probs, hop = self.speech_probs(a, sample_rate)
        vad_sr = 16000 if hop == 512 else 8000
        n_vad = int(round(duration * vad_sr))
        stamps = self._from_probs(
            probs.tolist(), sampling_rate=vad_sr, threshold=self.threshold,
            return_seconds=False, audio_length_samples=n_vad)
        segs = []
        for s in stamps:
            t0 = max(0.0, s["start"] / vad_sr)
            t1 = min(duration, s["end"] / vad_sr)
            if t1 > t0:
                if segs and t0 <= segs[-1][1]:
                    segs[-1] = (segs[-1][0], max(segs[-1][1], t1))
                else:
                    segs.append((t0, t1))
        return segs

    def speech_ratio(self, wav: np.ndarray, sample_rate: int) -> float:
        """Fraction of the duration of `wav` inside speech segments, in [0, 1]."""
        sample_rate = int(sample_rate)
        a = as_mono(wav)
        if sample_rate <= 0 or a.size == 0:
            return 0.0
        duration = len(a) / sample_rate
        covered = sum(t1 - t0 for t0, t1 in self.speech_segments(a, sample_rate))
        return float(min(1.0, max(0.0, covered / duration)))
