"""A small labelled sample clip set, made locally with no downloads (`ifmdm-data sample OUT/`).

Every clip is synthesised from material installed on the machine: the face is the astronaut
photo that ships with scikit-image (`skimage.data.astronaut()`), cropped around the face; a
second identity is the same photo mirrored, with a blue suit and a recoloured background.
Speech is real synthetic speech from espeak-ng (a few English sentences, 16 kHz mono).
Head motion is a smooth rigid motion (rotation, translation, scale: sums of low-frequency
sinusoids) of the person, composited over a static background (so it is head motion, not
camera motion; the person matte comes from mediapipe selfie segmentation, run once). Lip
motion: the lip landmarks are found once on the photo with mediapipe's face mesh; per frame
the lower lip and jaw are moved down by a smooth displacement field in proportion to the
speech envelope (RMS per video frame, smoothed) and a dark mouth interior is drawn between
the lips, so that a face-mesh tracker sees the mouth open and close with the speech
(inner-lip gap / inter-ocular distance vs envelope: Pearson r ~0.96). At rest the lips are
closed.

Clips (`size` x `size`, `fps`, H.264 yuv420p; AAC 16 kHz mono audio unless said otherwise;
4 s unless said otherwise):

==================  ==========  ===============  ==============================================
file                expected    stage2           what it is
==================  ==========  ===============  ==============================================
coarse_head.mp4     coarse      no_speech        head turns/moves clearly (+-8 deg, +-6 %),
                                                 mouth closed; audio is low-level noise
lip_talk.mp4        lip         ok               head perfectly still, mouth moves with speech
hard_talk.mp4       hard        ok               head moves and mouth moves with speech
static_still.mp4    static      no_speech        one still image plus tiny pixel noise; noise
noface_texture.mp4  no_face     not_in_subset    slow pan over skimage's coffee cup photo
two_faces.mp4       multi_face  not_in_subset    both identities side by side (2*size wide),
                                                 both heads move, the left one talks
noaudio_talk.mp4    hard        no_audio         like hard_talk, but no audio stream at all
short_talk.mp4      too_short   not_in_subset    1.2 s of lip_talk-like speech
scene_cut.mp4       coarse      no_speech        8 s: segment 0 (0-4 s) coarse-like astronaut,
                    lip         ok               hard cut, segment 1 (4-8 s) second identity
                                                 talking with a still head; noise then speech
dubbed_talk.mp4     hard        av_out_of_sync   head moves, mouth follows sentence A, audio is
                                                 sentence B with a pause inserted, re-timed so
                                                 that at every lag within +-0.4 s the envelopes
                                                 have r <~ 0.15 and |r| <~ 0.25 (the values
                                                 are in the labels)
==================  ==========  ===============  ==============================================

`OUT/labels.csv` has one row per expected segment with the columns
`file, segment, start_s, end_s, expected, stage2, description`: `expected` is a stage-1
subset (`coarse`, `lip`, `hard`) or a rejection reason code, `stage2` is `ok` or a stage-2
reason code (see `ifmdm_data.reasons`). The set is deterministic under `seed` (the files are
byte-identical from run to run). Every file is written atomically (temporary name in the same
folder, then renamed). Generation takes ~8 s of one CPU core at the default 256 px / 25 fps.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from ifmdm_data.errors import InputError

SAMPLE_RATE = 16000
CLIP_S = 4.0
SHORT_S = 1.2
MAX_LAG_S = 0.4
OPEN_MAX = 0.35            # widest mouth opening, fraction of the inter-ocular distance
MOUTH_RGB = (58.0, 16.0, 22.0)
LABEL_COLUMNS = ("file", "segment", "start_s", "end_s", "expected", "stage2", "description")
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
# mediapipe face-mesh indices (478-point topology)
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYE_OUTER = (33, 263)
CHIN = 152


# ----------------------------------------------------------------------------- audio

def _speak(text: str, workdir: Path) -> np.ndarray:
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


def _noise(rng: np.random.Generator, n: int, level: float = 0.003) -> np.ndarray:
    """Low-level, slightly low-passed noise (room tone): no speech in it."""
    x = rng.standard_normal(n + 2)
    x = (x[2:] + x[1:-1] + x[:-2]) / 3.0
    return (level * x / x.std()).astype(np.float32)


def _place(speech: np.ndarray, n: int, rng: Optional[np.random.Generator],
           lead_s: float = 0.1) -> np.ndarray:
    """Speech at `lead_s` into an `n`-sample track over a quiet noise floor (faded if cut).

    With `rng` None the floor is digital silence (used to score candidates quickly).
    """
    out = np.zeros(n, np.float32) if rng is None else _noise(rng, n, level=0.0005)
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


def _pick_dub(env_a: np.ndarray, speech: Sequence[np.ndarray], n: int, fps: float,
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
    pos, mag = _sync_scores(env_a, [_place(x, ns, None, lead) for x, lead in cands], n, fps)
    x, lead = cands[int(np.argmin(np.maximum(pos, mag / 2)))]
    audio = _place(x, ns, rng, lead)
    pos, mag = _sync_scores(env_a, [audio], n, fps)
    return audio, float(pos[0]), float(mag[0])


# ----------------------------------------------------------------------------- faces

@dataclass
class _Face:
    """One identity, prepared for rendering at the output size."""

    rgb: np.ndarray          # (S, S, 3) float32 0..255, the person photo
    mask: np.ndarray         # (S, S) float32 person matte
    background: np.ndarray   # (S, S, 3) static background with the person filled in
    center: tuple            # face centre (rotation centre), pixels
    iod: float               # inter-ocular distance, pixels
    lip0: np.ndarray         # (S, S) downward shift at rest (closes the lips)
    lip1: np.ndarray         # (S, S) downward shift per pixel of mouth opening
    upper: np.ndarray        # (S,) upper inner-lip y per column
    profile: np.ndarray      # (S,) opening profile per column, 0 outside the mouth


def _source_landmarks(rgb: np.ndarray) -> np.ndarray:
    """478 face-mesh landmarks (x, y pixels) of the one face in a still image."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                         refine_landmarks=True) as fm:
        res = fm.process(np.ascontiguousarray(rgb))
    if not res.multi_face_landmarks:
        raise RuntimeError("face mesh found no face on the sample photo")
    h, w = rgb.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark])


def _person_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft person matte from mediapipe selfie segmentation."""
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        m = seg.process(np.ascontiguousarray(rgb)).segmentation_mask
    return cv2.GaussianBlur(np.clip(m, 0, 1).astype(np.float32), (0, 0), 1.5)


def _fill_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background with the person region filled by normalised Gaussian convolution.

    Fine to coarse: each wider pass fills only what the narrower ones could not reach.
    """
    keep = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) < 0.05).astype(np.float32)
    out = rgb * keep[..., None]
    done = keep.copy()
    for sigma in (6.0, 18.0, 54.0, 160.0):
        num = cv2.GaussianBlur(rgb * keep[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(keep, (0, 0), sigma)
        new = (done == 0) & (den > 0.02)
        out[new] = num[new] / den[new, None]
        done[new] = 1
    return out.astype(np.float32)


def _lip_rig(lm: np.ndarray, size: int) -> dict:
    """Displacement fields that close the lips at rest and open mouth and jaw per pixel."""
    iod = float(np.linalg.norm(lm[EYE_OUTER[0]] - lm[EYE_OUTER[1]]))
    up, lo = lm[list(UPPER_INNER_LIP)], lm[list(LOWER_INNER_LIP)]
    xs = np.arange(size, dtype=np.float32)
    yu = np.interp(xs, *up[np.argsort(up[:, 0])].T)
    yl = np.interp(xs, *lo[np.argsort(lo[:, 0])].T)
    xl, xr = up[:, 0].min(), up[:, 0].max()
    xc, hw = (xl + xr) / 2, (xr - xl) / 2
    inside = (xs >= xl) & (xs <= xr)
    gap = np.where(inside, np.maximum(yl - yu, 0), 0.0)
    gap_c = float(np.interp(xc, xs, gap))
    profile = np.clip(1 - ((xs - xc) / hw) ** 2, 0, 1) ** 0.6
    ys = np.arange(size, dtype=np.float32)[:, None]
    below = ys - yu[None, :]
    step = np.clip(below + 0.5, 0, 1)
    t = np.clip(below / (0.35 * iod), 0, 1)
    t = t * t * (3 - 2 * t)
    jaw = np.exp(-0.5 * ((xs - xc) / iod) ** 2)[None, :]
    chin = lm[CHIN, 1] + 0.15 * iod
    fade = np.clip((ys - chin) / (0.75 * iod), 0, 1)
    fade = 0.5 + 0.5 * np.cos(np.pi * fade)
    lip0 = -step * fade * (gap[None, :] * (1 - t) + gap_c * jaw * t)
    lip1 = step * fade * (profile[None, :] * (1 - t) + jaw * t)
    return dict(iod=iod, lip0=lip0.astype(np.float32), lip1=lip1.astype(np.float32),
                upper=yu.astype(np.float32), profile=profile.astype(np.float32))


def _recolour(rgb: np.ndarray, mask: np.ndarray, chin_y: float) -> np.ndarray:
    """Second identity's colours: hue-rotated background and suit, face and hair untouched."""
    hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 95) % 180
    hsv[..., 1] = (hsv[..., 1] * 0.8 + 40).astype(np.uint8)
    rot = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    ys = np.arange(rgb.shape[0], dtype=np.float32)[:, None]
    suit = np.clip((ys - chin_y) / 12.0, 0, 1)
    w = (1 - mask) + mask * suit
    return rgb * (1 - w[..., None]) + rot * w[..., None]


def _make_faces(size: int) -> tuple:
    """Both identities (the astronaut and its mirrored, recoloured twin) at `size`."""
    from skimage import data

    photo = data.astronaut()
    lm = _source_landmarks(photo)
    mask = _person_mask(photo)
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    side = 2.7 * (y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.15 * (y1 - y0)
    ox = float(np.clip(cx - side / 2, 0, photo.shape[1] - side))
    oy = float(np.clip(cy - side / 2, 0, photo.shape[0] - side))
    s = size / side
    m = np.array([[s, 0, -ox * s], [0, s, -oy * s]], np.float32)
    rgb = cv2.warpAffine(photo.astype(np.float32), m, (size, size), flags=cv2.INTER_AREA)
    msk = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR)
    lms = (lm - (ox, oy)) * s
    mirror = lms.copy()
    mirror[:, 0] = size - 1 - mirror[:, 0]
    twin_mask = np.ascontiguousarray(msk[:, ::-1])
    iod = float(np.linalg.norm(lms[EYE_OUTER[0]] - lms[EYE_OUTER[1]]))
    twin = _recolour(rgb[:, ::-1], twin_mask, float(mirror[CHIN, 1]) + 0.3 * iod)
    return _face(rgb, msk, lms, size), _face(twin, twin_mask, mirror, size)


def _face(rgb: np.ndarray, mask: np.ndarray, lm: np.ndarray, size: int) -> _Face:
    """Prepare one identity: static background, rotation centre and lip rig."""
    rgb = np.ascontiguousarray(rgb, np.float32)
    center = tuple(float(v) for v in (lm.min(0) + lm.max(0)) / 2)
    return _Face(rgb=rgb, mask=mask, background=_fill_background(rgb, mask), center=center,
                 **_lip_rig(lm, size))


def _render(face: _Face, opening: float, pose: Optional[np.ndarray]) -> np.ndarray:
    """One frame: mouth opened by `opening` (fraction of IOD), person moved by `pose`.

    `pose` is (angle_deg, tx_px, ty_px, scale) or None for the photo's own pose.
    """
    size = face.rgb.shape[0]
    px = opening * face.iod
    grid = np.arange(size, dtype=np.float32)
    map_x = np.broadcast_to(grid[None, :], (size, size))
    map_y = grid[:, None] - (face.lip0 + px * face.lip1)
    img = cv2.remap(face.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if px > 0.05:
        y0 = int(max(face.upper.min() - 1, 0))
        y1 = int(min(face.upper.max() + px + 2, size))
        ys = grid[y0:y1, None]
        lower = face.upper + px * face.profile
        alpha = (np.clip(ys - face.upper + 0.5, 0, 1) * np.clip(lower - ys + 0.5, 0, 1)
                 * (face.profile > 0))[..., None]
        shade = np.clip((ys - face.upper) / max(px, 1.0), 0, 1)[..., None] * 0.5 + 0.75
        img[y0:y1] = img[y0:y1] * (1 - alpha) + alpha * np.array(MOUTH_RGB, np.float32) * shade
    if pose is None:
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)
    angle, tx, ty, scale = (float(v) for v in pose)
    m = cv2.getRotationMatrix2D(face.center, angle, scale)
    m[:, 2] += (tx, ty)
    fg = cv2.warpAffine(np.dstack([img, face.mask]), m, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    a = fg[..., 3:4]
    out = fg[..., :3] * a + face.background * (1 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _wave(rng: np.random.Generator, n: int, fps: float, amplitude: float) -> np.ndarray:
    """A smooth random signal: three low-frequency sinusoids, peak |value| = amplitude."""
    t = np.arange(n) / fps
    x = np.zeros(n)
    for f, w in ((0.25, 1.0), (0.45, 0.6), (0.8, 0.3)):
        x += w * np.sin(2 * np.pi * f * rng.uniform(0.8, 1.25) * t + rng.uniform(0, 2 * np.pi))
    return amplitude * x / np.abs(x).max()


def _head_track(rng: np.random.Generator, n: int, fps: float, size: int,
                angle: float, shift: float, zoom: float) -> np.ndarray:
    """(n, 4) poses: rotation (deg), x and y shift (px), scale."""
    return np.stack([_wave(rng, n, fps, angle), _wave(rng, n, fps, shift * size),
                     _wave(rng, n, fps, 0.6 * shift * size), 1 + _wave(rng, n, fps, zoom)], 1)


def _frames(face: _Face, openings: np.ndarray,
            poses: Optional[np.ndarray]) -> Iterator[np.ndarray]:
    """Render one frame per mouth opening; `poses` None keeps the head perfectly still."""
    for i, o in enumerate(openings):
        yield _render(face, float(o), None if poses is None else poses[i])


def _chain(*parts: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frames of several scenes, one after another (hard cuts between them)."""
    for part in parts:
        yield from part


def _pan(size: int, n: int) -> Iterator[np.ndarray]:
    """A slow, eased horizontal pan over the coffee cup photo (no face anywhere)."""
    from skimage import data

    photo = data.coffee().astype(np.float32)
    h, w = photo.shape[:2]
    side = 0.9 * h
    s = size / side
    for i in range(n):
        u = 0.5 - 0.5 * np.cos(np.pi * i / max(n - 1, 1))
        x0, y0 = u * (w - side), 0.05 * h
        m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float32)
        yield np.clip(cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR) + 0.5,
                      0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- encoding

def _write_mp4(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: float,
               audio: Optional[np.ndarray]) -> None:
    """H.264 yuv420p (+ AAC mono) mp4, written to a temporary name and renamed."""
    import av

    tmp = path.with_name(f".{path.name}.tmp")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=rate)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.options = {"crf": "18", "preset": "fast", "g": str(max(int(round(fps)), 1)),
                          "threads": "1"}  # a fixed thread count keeps x264 deterministic
            as_ = None
            if audio is not None:
                as_ = out.add_stream("aac", rate=SAMPLE_RATE)
                as_.layout, as_.bit_rate = "mono", 64000
            pos = 0
            for i, frame in enumerate(frames):
                out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                if as_ is not None:
                    end = min(int(round((i + 1) * SAMPLE_RATE / fps)), len(audio))
                    if end > pos:
                        out.mux(as_.encode(_audio_frame(audio[pos:end], pos)))
                        pos = end
            out.mux(vs.encode())
            if as_ is not None:
                if pos < len(audio):
                    out.mux(as_.encode(_audio_frame(audio[pos:], pos)))
                out.mux(as_.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _audio_frame(chunk: np.ndarray, pts: int):
    """A mono float planar PyAV audio frame starting at sample `pts`."""
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None], np.float32),
                                       format="fltp", layout="mono")
    frame.sample_rate, frame.pts = SAMPLE_RATE, pts
    return frame


def _write_labels(path: Path, rows: Sequence[tuple]) -> None:
    """labels.csv, written to a temporary name and renamed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the set

@dataclass
class _Clip:
    """One sample file: how to make its frames, its audio, and its label rows."""

    name: str
    frames: Callable[[], Iterable[np.ndarray]]   # called once, when the clip is written
    audio: Optional[np.ndarray]                  # 16 kHz mono, or None for no audio stream
    width: int
    segments: list                               # (n_frames, expected, stage2, description)


def _jitter(frames: Iterable[np.ndarray], rng: np.random.Generator,
            sigma: float) -> Iterator[np.ndarray]:
    """Add tiny Gaussian pixel noise to each frame."""
    for f in frames:
        yield np.clip(f + rng.normal(0.0, sigma, f.shape) + 0.5, 0, 255).astype(np.uint8)


def _clip_table(seed: int, size: int, fps: float) -> list:
    """Everything the set is made of, drawn deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(SENTENCES))
    with tempfile.TemporaryDirectory() as td:
        speech = [_speak(SENTENCES[k], Path(td)) for k in order]
    n, ns = int(round(CLIP_S * fps)), int(round(CLIP_S * SAMPLE_RATE))
    n_short, ns_short = int(round(SHORT_S * fps)), int(round(SHORT_S * SAMPLE_RATE))
    tracks = [_place(sp, ns, rng) for sp in speech]
    envs = [speech_envelope(tr, n, fps) for tr in tracks]
    mouth = [OPEN_MAX * np.clip(env, 0, 1) for env in envs]   # opening, fraction of IOD
    dub_audio, dub_r, dub_abs = _pick_dub(envs[6], speech[:6] + speech[7:], n, fps, rng)
    astro, twin = _make_faces(size)
    shut = np.zeros(n)
    heads = {k: _head_track(rng, n, fps, size, *amp) for k, amp in (
        ("coarse", (8, 0.06, 0.04)), ("hard", (6, 0.04, 0.03)), ("noaudio", (6, 0.04, 0.03)),
        ("dubbed", (6, 0.04, 0.03)), ("left", (3, 0.03, 0.02)), ("right", (3, 0.03, 0.02)),
        ("cut", (8, 0.06, 0.04)))}
    noise = [_noise(rng, ns) for _ in range(4)]
    pixel_rng = np.random.default_rng(rng.integers(2 ** 32))
    return [
        _Clip("coarse_head.mp4", lambda: _frames(astro, shut, heads["coarse"]), noise[0], size,
              [(n, "coarse", "no_speech", "head moves clearly, mouth closed, noise audio")]),
        _Clip("lip_talk.mp4", lambda: _frames(astro, mouth[0], None), tracks[0], size,
              [(n, "lip", "ok", "head perfectly still, mouth moves with the speech")]),
        _Clip("hard_talk.mp4", lambda: _frames(astro, mouth[1], heads["hard"]), tracks[1], size,
              [(n, "hard", "ok", "head moves and mouth moves with the speech")]),
        _Clip("static_still.mp4", lambda: _jitter(_frames(astro, shut, None), pixel_rng, 1.0),
              noise[1], size,
              [(n, "static", "no_speech", "one still image with tiny pixel noise, noise audio")]),
        _Clip("noface_texture.mp4", lambda: _pan(size, n), noise[2], size,
              [(n, "no_face", "not_in_subset", "slow pan over a coffee cup photo, no face")]),
        _Clip("two_faces.mp4", lambda: map(np.hstack, zip(
            _frames(astro, mouth[2], heads["left"]), _frames(twin, shut, heads["right"]))),
              tracks[2], 2 * size,
              [(n, "multi_face", "not_in_subset",
                "two faces side by side, both heads move, the left one talks")]),
        _Clip("noaudio_talk.mp4", lambda: _frames(astro, mouth[3], heads["noaudio"]), None, size,
              [(n, "hard", "no_audio", "head and mouth move, no audio stream")]),
        _Clip("short_talk.mp4", lambda: _frames(astro, mouth[4][:n_short], None),
              tracks[4][:ns_short], size,
              [(n_short, "too_short", "not_in_subset", f"{SHORT_S:g} s of talking, too short")]),
        _Clip("scene_cut.mp4", lambda: _chain(_frames(astro, shut, heads["cut"]),
                                              _frames(twin, mouth[5], None)),
              np.concatenate([noise[3], tracks[5]]), size,
              [(n, "coarse", "no_speech", "scene 1: astronaut, head moves, mouth closed, noise"),
               (n, "lip", "ok", "scene 2 after a hard cut: second identity, still head, talking")]),
        _Clip("dubbed_talk.mp4", lambda: _frames(astro, mouth[6], heads["dubbed"]), dub_audio,
              size,
              [(n, "hard", "av_out_of_sync", "mouth follows one sentence, audio is another (at "
                f"every lag within +-{MAX_LAG_S:g} s: r <= {dub_r:.2f}, |r| <= {dub_abs:.2f})")]),
    ]


def _label_rows(clip: _Clip, fps: float) -> list:
    """One labels.csv row per segment; times are exact frame boundaries."""
    rows, start = [], 0
    for k, (n, expected, stage2, desc) in enumerate(clip.segments):
        rows.append((clip.name, k, f"{start / fps:.3f}", f"{(start + n) / fps:.3f}",
                     expected, stage2, desc))
        start += n
    return rows


def make_sample_set(out_dir: str | Path, seed: int = 0, size: int = 256, fps: float = 25.0,
                    progress: bool = False) -> Path:
    """Writes the clips and OUT/labels.csv; returns the labels path.

    See the module docstring for what each clip is and the labels format. Existing files of
    the same names are replaced. Raises InputError for a bad `size` / `fps` or when
    espeak-ng is missing.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 64 or size % 2:
        raise InputError(f"sample size must be an even integer >= 64, got {size!r}")
    if not fps > 0:
        raise InputError(f"sample fps must be > 0, got {fps!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips = _clip_table(seed, size, float(fps))
    rows = []
    for i, clip in enumerate(clips):
        _write_mp4(out / clip.name, clip.frames(), clip.width, size, float(fps), clip.audio)
        rows += _label_rows(clip, float(fps))
        if progress:
            from ifmdm_data.io.console import terminal
            print(f"sample: [{i + 1}/{len(clips)}] {out / clip.name}", file=terminal(), flush=True)
    labels_path = out / "labels.csv"
    _write_labels(labels_path, rows)
    return labels_path
