"""LSE-D / LSE-C of the talking-head evaluation: SyncNet inputs of generated frames and the scores.

Two SyncNet layouts (`ifmdm_model.eval.nets.load_syncnet` tells them apart by the state dict):
syncnet_python's (`syncnet_v2.model`, the paper-comparable one: 25 fps re-timing, face crops
along a smoothed landmark box track, python_speech_features MFCC) and this project's own
("ifmdm": grayscale mouth crops at the clip's rate, `mfcc` below). The shared preprocessing and
the offset search live in `ifmdm_data.faces.syncnet` (the data filter's sync check uses them too).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ifmdm_data.faces.syncnet import (
    AUDIO_RATE, SYNC_MFCC_PER_FRAME, SYNC_VSHIFT, SYNCNET_PY_FPS, SYNCNET_PY_SIZE, SYNCNET_PY_SMOOTH,
    offset_scores, sync_window_starts, sync_windows, syncnet_face_crop)
from ifmdm_data.features.mfcc import syncnet_mfcc, to_int16_scale
from ifmdm_data.shard.crop import square_resize

SYNC_CROP = 48


# ------------------------------------------------------------------------------------------
# Audio features (ifmdm layout)
# ------------------------------------------------------------------------------------------

def mfcc(wav: np.ndarray, sample_rate: int, hop: float, n_mfcc: int = 13, n_mels: int = 40,
         win_s: float = 0.025) -> np.ndarray:
    """(T, n_mfcc) MFCC of the ifmdm SyncNet layout: one row every `hop` samples (may be
    fractional), Hamming window of `win_s`, 512-point FFT power, `n_mels` triangular mel
    filters, log, DCT-II (ortho)."""
    from scipy.fft import dct

    x = np.asarray(wav, np.float64).reshape(-1)
    win = int(round(win_s * sample_rate))
    n_fft = max(512, 1 << (win - 1).bit_length())
    n = int(math.floor(len(x) / hop)) if hop > 0 else 0
    if n <= 0:
        return np.zeros((0, n_mfcc))
    pad = np.pad(x, (win // 2, win))
    starts = np.round(np.arange(n) * hop).astype(np.int64)
    frames = pad[starts[:, None] + np.arange(win)[None, :]] * np.hamming(win)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2 / n_fft
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)              # noqa: E731
    imel = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)              # noqa: E731
    pts = imel(np.linspace(mel(0.0), mel(sample_rate / 2.0), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    fb = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / max(c - lo, 1e-9), (hi - bins) / max(hi - c, 1e-9)), 0, None)
    return dct(np.log(power @ fb.T + 1e-10), type=2, axis=1, norm="ortho")[:, :n_mfcc]


# ------------------------------------------------------------------------------------------
# LSE-D / LSE-C
# ------------------------------------------------------------------------------------------

@torch.inference_mode()
def lse(net, video: np.ndarray, wav: np.ndarray, fps: float, device="cpu",
        vshift: int = SYNC_VSHIFT, batch: int = 32) -> Dict[str, float]:
    """LSE-D / LSE-C of a video (`sync_video`: the input of `net`'s layout) against its
    16 kHz audio. syncnet_python layout: 25 fps, MFCC `syncnet_mfcc` of the int16-scaled
    audio, min(frames, samples // 640) - 5 windows; ifmdm layout: `mfcc` at 4 rows per frame
    of the clip's rate, every window that fits."""
    if net.layout == "syncnet_python":
        if abs(fps - SYNCNET_PY_FPS) > 1e-6:
            raise ValueError(f"the syncnet_python layout needs 25 fps video, got {fps}")
        feats = syncnet_mfcc(to_int16_scale(wav))                   # (13, T)
        starts = sync_window_starts(len(video), len(wav) // int(AUDIO_RATE / SYNCNET_PY_FPS),
                                    drop_last=True)
    else:
        feats = mfcc(wav, AUDIO_RATE, AUDIO_RATE / (fps * SYNC_MFCC_PER_FRAME)).T
        starts = sync_window_starts(len(video), feats.shape[1] // SYNC_MFCC_PER_FRAME)
    if len(starts) < 1:
        return {"lse_d": None, "lse_c": None, "offset_frames": None}
    ev, ea = [], []
    for s in range(0, len(starts), batch):
        v, a = sync_windows(video, feats, starts[s:s + batch], net.layout)
        ev.append(net.forward_video(v.to(device)).float().cpu())
        ea.append(net.forward_audio(a.to(device)).float().cpu())
    return offset_scores(torch.cat(ev), torch.cat(ea), vshift)


def resample_indices(n: int, fps: float, target: float = SYNCNET_PY_FPS) -> np.ndarray:
    """Source frame of each frame of an n-frame clip re-timed from fps to `target` (as
    syncnet_python's `ffmpeg -r 25`): round(n target / fps) frames, frame k showing the
    source frame nearest its time, floor(k fps / target + 0.5)."""
    if abs(fps - target) < 1e-6:
        return np.arange(n)
    m = max(1, int(round(n * target / fps)))
    return np.minimum(np.floor(np.arange(m) * fps / target + 0.5).astype(np.int64), n - 1)


def face_track(lms, smooth: int = SYNCNET_PY_SMOOTH) -> Optional[np.ndarray]:
    """(N, 3) face boxes [centre x, centre y, half side] of a frame sequence, as
    syncnet_python's crop track: the box of each frame's landmarks (standing in for its S3FD
    detection), half side = max(width, height) / 2; frames without a face interpolated
    linearly in time (held at the ends); each column median-filtered over `smooth` frames
    (syncnet_python uses scipy.signal.medfilt, which pads the ends with zeros; here the
    ends repeat). None when no frame has a face."""
    from scipy.ndimage import median_filter
    have = [i for i, lm in enumerate(lms) if lm is not None]
    if not have:
        return None
    boxes = []
    for i in have:
        (x0, y0), (x1, y1) = lms[i][:, :2].min(0), lms[i][:, :2].max(0)
        boxes.append([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2])
    boxes = np.asarray(boxes, np.float64)
    t = np.arange(len(lms))
    track = np.stack([np.interp(t, have, boxes[:, j]) for j in range(3)], 1)
    return median_filter(track, size=(smooth, 1), mode="nearest")


def syncnet_face_crops(frames: np.ndarray, lms, fps: float) -> Tuple[np.ndarray, int]:
    """syncnet_python's video input: the frames re-timed to 25 fps (`resample_indices`),
    face crops (M, 224, 224, 3) uint8 BGR along `face_track`, and the number of re-timed
    frames without a face of their own (boxes interpolated; with no face in the clip, the
    whole square frame is resized)."""
    import cv2

    idx = resample_indices(len(frames), fps)
    sel = [lms[i] for i in idx]
    track = face_track(sel)
    out = []
    for k, i in enumerate(idx):
        if track is None:
            out.append(cv2.cvtColor(square_resize(frames[i], SYNCNET_PY_SIZE), cv2.COLOR_RGB2BGR))
        else:
            out.append(syncnet_face_crop(frames[i], *track[k]))
    return np.stack(out), int(sum(lm is None for lm in sel))


# ------------------------------------------------------------------------------------------
# Video input
# ------------------------------------------------------------------------------------------

def mouth_crops(frames: np.ndarray, lms, scheme) -> np.ndarray:
    import cv2

    from ifmdm_data.faces import signals as sig
    out = []
    for f, lm in zip(frames, lms):
        gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        if lm is not None:
            out.append(sig.mouth_crop(gray, lm, scheme, SYNC_CROP))
        else:                                                       # lower centre of the frame
            h, w = gray.shape
            crop = gray[h // 2:h // 2 + h * 2 // 5, w * 3 // 10:w * 7 // 10]
            out.append(cv2.resize(crop, (SYNC_CROP, SYNC_CROP), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def sync_video(layout: str, frames: np.ndarray, lms, scheme, fps: float):
    """The SyncNet video input of generated frames for a layout -> (video, its fps, frames
    without a face): syncnet_python, face crops at 25 fps (`syncnet_face_crops`); ifmdm,
    mouth crops at the clip's rate (`mouth_crops`)."""
    if layout == "syncnet_python":
        crops, missing = syncnet_face_crops(frames, lms, fps)
        return crops, SYNCNET_PY_FPS, missing
    return mouth_crops(frames, lms, scheme), fps, int(sum(lm is None for lm in lms))
