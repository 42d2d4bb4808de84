"""The sample set's audio: espeak-ng speech, noise, the speech envelope that drives the mouth,
and the dubbed track chosen to be out of sync with the mouth (`ifmdm-data sample`).

All audio is float32 mono at 16 kHz; envelopes are one value per video frame.
"""
from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ifmdm_data.errors import InputError

SAMPLE_RATE = 16000
MAX_LAG_S = 0.4
SENTENCES = (
    "Please call Stella and ask her to bring these things with her.",
    "The birch canoe slid on the smooth planks of the pond.",
    "Glue the sheet to the dark blue background over there.",
    "We talked about the weather for a while, then went home.",
    "A large orange cat was sleeping on the warm window sill.",
    "Every morning she walks along the beach with her dog.",
    "Four hours of steady work faced us after lunch today.",
    "My brother plays the piano better than anyone I know.",
)


def speak(text: str, workdir: Path) -> np.ndarray:
    """Synthesise `text` with espeak-ng; returns 16 kHz mono float32 in [-1, 1]."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise InputError("the sample set needs espeak-ng to synthesise speech: install it "
                         "(apt-get install espeak-ng)")
    path = workdir / "speech.wav"
    proc = subprocess.run([exe, "-w", str(path), "-s", "150", text], capture_output=True)
    if proc.returncode != 0 or not path.exists():
        raise InputError(f"espeak-ng failed ({proc.stderr.decode(errors='replace').strip()}); "
                         "check the install (apt-get install espeak-ng)")
    with wave.open(str(path)) as w:
        sr, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        if width != 2:
            raise InputError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, ch)
    x = pcm.mean(axis=1) / 32768.0
    g = np.gcd(SAMPLE_RATE, sr)
    x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    return (0.5 * x / max(np.abs(x).max(), 1e-6)).astype(np.float32)


def noise_track(rng: np.random.Generator, n: int, level: float = 0.003) -> np.ndarray:
    """Low-level, slightly low-passed noise (room tone): no speech in it."""
    x = rng.standard_normal(n + 2)
    x = (x[2:] + x[1:-1] + x[:-2]) / 3.0
    return (level * x / x.std()).astype(np.float32)


def place(speech: np.ndarray, n: int, rng: Optional[np.random.Generator],
           lead_s: float = 0.1) -> np.ndarray:
    """Speech at `lead_s` into an `n`-sample track over a quiet noise floor (faded if cut).

    With `rng` None the floor is digital silence (used to score candidates quickly).
    """
    out = np.zeros(n, np.float32) if rng is None else noise_track(rng, n, level=0.0005)
    lead = int(lead_s * SAMPLE_RATE)
    seg = speech[: max(n - lead, 0)].copy()
    if len(seg) < len(speech):
        fade = min(len(seg), SAMPLE_RATE // 50)
        seg[len(seg) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    out[lead:lead + len(seg)] += seg
    return out


def _frame_rms(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """RMS per video frame; frame i covers samples [round(i sr / fps), round((i+1) sr / fps))."""
    edges = np.round(np.arange(n_frames + 1) * sample_rate / fps).astype(np.int64)
    x = np.asarray(audio, np.float64).ravel()[: edges[-1]]
    energy = np.concatenate([[0.0], np.cumsum(x * x)])[np.minimum(edges, len(x))]
    return np.sqrt(np.maximum(np.diff(energy), 0) / np.maximum(np.diff(edges), 1))


def speech_envelope(audio: np.ndarray, n_frames: int, fps: float,
                    sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RMS per video frame, smoothed over 3 frames, scaled so its 95th percentile is 1.

    Samples missing at the end count as silence. This drives the mouth opening.
    """
    rms = _frame_rms(audio, n_frames, fps, sample_rate)
    env = np.convolve(np.pad(rms, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return env / max(float(np.percentile(env, 95)), 1e-9)


def _detrend(x: np.ndarray, fps: float) -> np.ndarray:
    """Subtract a centred ~1 s moving average (what a sync check does against slow drift)."""
    win = max(3, int(round(fps)) | 1)
    return x - np.convolve(np.pad(x, win // 2, mode="edge"), np.ones(win) / win, mode="valid")


def lagged_corr(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson r of a[t] and b[t + lag] for lag in [-max_lag, max_lag].

    `b` may be one series (n,) or a stack (m, n); the result is (2 * max_lag + 1,) or
    (m, 2 * max_lag + 1). A constant segment gives r = 0.
    """
    a = np.asarray(a, np.float64)
    bb = np.atleast_2d(np.asarray(b, np.float64))
    n = min(a.shape[-1], bb.shape[-1])
    out = np.zeros((bb.shape[0], 2 * max_lag + 1))
    for k, lag in enumerate(range(-max_lag, max_lag + 1)):
        x = a[max(0, -lag):n - max(0, lag)]
        y = bb[:, max(0, lag):n - max(0, -lag)]
        x = x - x.mean()
        y = y - y.mean(axis=1, keepdims=True)
        den = np.sqrt((x @ x) * (y * y).sum(axis=1))
        out[:, k] = (y @ x) / np.where(den > 0, den, np.inf)
    return out[0] if np.ndim(b) == 1 else out


def _quiet_points(speech: np.ndarray, k: int = 6) -> list:
    """Up to `k` well-separated quiet 20 ms spots in the middle of a sentence (word gaps)."""
    w = SAMPLE_RATE // 50
    m = len(speech) // w
    energy = (speech[:m * w].reshape(m, w) ** 2).mean(axis=1)
    idx = np.arange(int(0.2 * m), int(0.8 * m))
    picked: list = []
    for i in idx[np.argsort(energy[idx], kind="stable")]:
        if all(abs(i - j) > 10 for j in picked):
            picked.append(int(i))
        if len(picked) == k:
            break
    return [i * w for i in picked]


def _sync_scores(env_a: np.ndarray, audios: Sequence[np.ndarray], n: int,
                 fps: float) -> tuple:
    """How much a mouth driven by `env_a` seems to agree with each track in `audios`.

    Views, as sync checks look at them: linear envelope vs linear envelope, and the
    detrended mouth opening vs the detrended log RMS, at `fps` and at half of it (a check
    that analyses every other frame). Returns arrays (largest r, largest |r|) over every
    view and every lag within +-MAX_LAG_S, one value per track.
    """
    env_b = np.stack([speech_envelope(x, n, fps) for x in audios])
    log_b = np.log(np.stack([_frame_rms(x, n, fps, SAMPLE_RATE) for x in audios]) + 1e-4)
    mouth = np.clip(env_a, 0, 1)
    views = [(env_a, env_b, fps),
             (_detrend(mouth, fps), np.apply_along_axis(_detrend, 1, log_b, fps), fps),
             (_detrend(mouth[::2], fps / 2),
              np.apply_along_axis(_detrend, 1, log_b[:, ::2], fps / 2), fps / 2)]
    r = np.concatenate([lagged_corr(a, b, int(round(MAX_LAG_S * f))) for a, b, f in views],
                       axis=1)
    return r.max(axis=1), np.abs(r).max(axis=1)


def pick_dub(env_a: np.ndarray, speech: Sequence[np.ndarray], n: int, fps: float,
              rng: np.random.Generator) -> tuple:
    """Audio for the dubbed clip: another sentence, re-timed to disagree with `env_a`.

    Candidates are each other sentence with a pause (0.25 to 1 s) inserted at one of its
    word gaps, started 0.05 to 0.45 s in. The winner has the lowest max(largest r,
    largest |r| / 2) (see `_sync_scores`): positive agreement is what would pass for sync,
    so it is pushed lowest, while anti-correlation is kept small too.
    Returns (audio, largest r, largest |r|) of the winner.
    """
    ns = int(round(n / fps * SAMPLE_RATE))
    cands = []
    for sp in speech:
        for cut in _quiet_points(sp):
            for pause in (0.25, 0.5, 0.75, 1.0):
                x = np.concatenate([sp[:cut], np.zeros(int(pause * SAMPLE_RATE), np.float32),
                                    sp[cut:]])
                cands += [(x, lead) for lead in (0.05, 0.15, 0.25, 0.35, 0.45)]
    pos, mag = _sync_scores(env_a, [place(x, ns, None, lead) for x, lead in cands], n, fps)
    x, lead = cands[int(np.argmin(np.maximum(pos, mag / 2)))]
    audio = place(x, ns, rng, lead)
    pos, mag = _sync_scores(env_a, [audio], n, fps)
    return audio, float(pos[0]), float(mag[0])
