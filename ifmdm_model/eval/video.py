"""Talking-head evaluation on held-out clips (`ifmdm-eval --clips`).

    ifmdm-eval --checkpoint runs/x --clips a.mp4 b.mp4 -o eval_out/ [--inception F]
               [--arcface F] [--syncnet F] [--steps 25] [--max-frames N]

For each clip (a video with its audio track): its first frame is the source image and its
audio the driving speech; `infer.generate` writes out_dir/<name>.mp4 at the clip's frame rate
(frames = round(audio seconds x fps)). Generated and real frames are decoded; the real ones
are centre-cropped to a square and resized to the generated size (as the source image is).

Metrics
-------
psnr / ssim   eval_stage1's functions, per frame on [0, 1], frames aligned by index up to the
              shorter sequence, averaged.
av_corr       the data filter's audio-visual agreement: `ifmdm_data.media.audio.av_sync` of the
              mouth-opening series (MediapipeMesh landmarks, pose-normalised against the
              clip's median face, `signals.mouth_opening`) and the speech `envelope` of the
              input audio at the frame times; reported for the generated and the real frames
              (`av_corr_generated`, `av_corr_real`). The minimum overlap is min(2 s, half the
              clip); None when no face is found in enough frames.
fid           (--inception FILE) Frechet distance between Inception-v3 pool3 (2048-d) features
              of all generated and all real frames (every clip pooled). The network is
              torchvision's inception_v3(weights=None, aux_logits=True, init_weights=False)
              with the user's state dict; frames resized to 299 x 299 (bilinear), ImageNet
              normalisation. ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2), the matrix
              square root by scipy.linalg.sqrtm. With fewer frames than feature dimensions
              the trace term is computed exactly on the smaller (n x n) Gram matrix
              (tr sqrtm(S1 S2) = nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)), A, B the
              centred features) instead of the 2048 x 2048 product. Few frames give a biased
              FID: compare numbers computed on the same clips only.
csim          (--arcface FILE) mean cosine similarity between the ArcFace embedding of the
              source image and that of each generated frame. The backbone is `IResNet`
              (eval_nets): insightface's arcface_torch iresnet layout and parameter names
              (iresnet18/34/50/100 state dicts load; depth and widths are read from the
              state dict), 112 x 112 RGB input scaled to [-1, 1], 512-d output. Faces are
              aligned as insightface does for ArcFace: five points from the MediapipeMesh
              landmarks (iris centres 468 / 473, nose tip 1, outer mouth corners 61 / 291;
              image-left first), a least-squares similarity transform (Umeyama) onto
              insightface's 112 x 112 template (38.2946, 51.6963), (73.5318, 51.5014),
              (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041), cv2.warpAffine to
              112 x 112. The source is aligned on the full-resolution first frame. A frame
              without a face falls back to the whole (square) frame resized to 112 x 112;
              such generated frames are counted in `csim_unaligned_frames` (and
              `csim_source_aligned` says whether the source was aligned).
lse_d / lse_c (--syncnet FILE) Lip-sync error of the generated video against the input audio
              with a SyncNet; the layout is read from the state-dict keys and reported as
              `syncnet_layout`:
              - "syncnet_python" (`SyncNetPython`): Joon Son Chung's syncnet_python network;
                its released `syncnet_v2.model` is what Wav2Lip, LatentSync and the IF-MDM
                paper report LSE with, so only this file gives paper-comparable numbers. It is
                not shipped: download_model.sh of github.com/joonson/syncnet_python fetches
                it (a plain state dict; pass it as is). Preprocessing as syncnet_python's
                run_pipeline.py + SyncNetInstance.py: the video re-timed to 25 fps (nearest
                frame); per frame the box of the MediapipeMesh landmarks (in place of its S3FD
                detection; interpolated over frames without a face, median-filtered over 13
                frames), enlarged by crop scale 0.4 (columns centre -+ 1.4 s, rows centre - s
                .. centre + 1.8 s, s = half the box side), grey 110 outside the frame,
                resized to 224 x 224, BGR, raw 0-255, 5 frames per window (B, 3, 5, 224, 224);
                audio: python_speech_features' MFCC (13 x 100 Hz, `syncnet_mfcc`) of the
                int16-scaled 16 kHz signal, 20 MFCC frames per window (4 per video frame);
                min(frames, samples // 640) - 5 windows. Frames without a face of their own
                are counted in `lse_no_face_frames`.
              - "ifmdm" (`SyncNet`, this project's own state-dict format): audio 13 MFCC x 20
                windows (0.2 s, 4 MFCC per video frame at the clip's rate), video 5 grayscale
                48 x 48 mouth crops (`signals.mouth_crop` on MediapipeMesh landmarks; the
                lower-centre of the frame when no face is found).
              Both then follow syncnet_python's evaluation: per video window i, distances to
              audio windows i + o, o in [-15, 15] (zero-padded embeddings outside the clip);
              averaged over windows -> mean distance per offset d(o). LSE-D = min_o d(o);
              LSE-C = median_o d(o) - min_o d(o). Lower LSE-D and higher LSE-C are better.
              Differences from the published pipeline: no scene-cut / face-track split (one
              track per clip, every frame), no minimum track length, MediapipeMesh boxes
              instead of S3FD's, frames not re-encoded to JPEG / MPEG-4 before scoring.

A metric whose weights file is not given is reported under "skipped" with the file it needs,
never as a number. A weights file that does not fit its network raises an error naming it.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import wave
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ifmdm_data.errors import IfmdmError

from ifmdm_model.eval.nets import (  # noqa: F401 - the networks and loaders stay importable from here
    SYNC_FRAMES, IBasicBlock, IResNet, SyncNet, SyncNetPython, VideoEvalError, load_arcface,
    load_inception, load_syncnet, syncnet_layout)
from ifmdm_data.faces.syncnet import (  # noqa: F401 - syncnet_python's preprocessing, re-exported
    AUDIO_RATE, SYNC_MFCC_PER_FRAME, SYNC_VSHIFT, SYNCNET_PY_CROP_SCALE, SYNCNET_PY_FPS,
    SYNCNET_PY_PAD, SYNCNET_PY_SIZE, SYNCNET_PY_SMOOTH, audio_windows, hz_to_mel, mel_energies,
    mel_filterbank, mel_to_hz, offset_scores, sync_window_starts, sync_windows, syncnet_crop_box,
    syncnet_face_crop, syncnet_face_crop_from, syncnet_mfcc, to_int16_scale)

from ifmdm_model.eval.stage1 import psnr, ssim

log = logging.getLogger("ifmdm_model")

SKIP_FID = ("needs an Inception-v3 state dict file (e.g. pt_inception-2015-12-05 converted / "
            "torchvision inception_v3 weights): pass --inception FILE")
SKIP_CSIM = ("needs an ArcFace iresnet state dict file (insightface arcface_torch backbone.pth, "
             "112x112 input, 512-d output): pass --arcface FILE")
SKIP_LSE = ("needs a SyncNet state dict file: syncnet_python's syncnet_v2.model for paper-comparable "
            "LSE-D / LSE-C (not shipped: fetched by download_model.sh of github.com/joonson/"
            "syncnet_python), or an ifmdm_model.eval.nets.SyncNet state dict: pass --syncnet FILE")
SYNC_CROP = 48
# insightface's 112 x 112 ArcFace template (arcface_dst): image-left eye (the subject's right),
# image-right eye, nose tip, image-left and image-right mouth corners
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
ARCFACE_SIZE = 112


# ------------------------------------------------------------------------------------------
# Features and metrics
# ------------------------------------------------------------------------------------------

def _frames_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0


@torch.inference_mode()
def inception_features(net, frames: np.ndarray, device="cpu", batch: int = 16) -> np.ndarray:
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    out = []
    for s in range(0, len(frames), batch):
        x = F.interpolate(_frames_tensor(frames[s:s + batch], device), size=(299, 299),
                          mode="bilinear", align_corners=False)
        out.append(net((x - mean) / std).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2048))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (N, d): ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)
    (unbiased covariances). The trace of the matrix square root is computed with
    scipy.linalg.sqrtm on S1 S2 (d x d) or, when a set has fewer samples than d, exactly on
    the smaller Gram matrix C C^T, C = A B^T / sqrt((n1 - 1)(n2 - 1))."""
    from scipy import linalg

    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise VideoEvalError(f"FID needs two sets of >= 2 feature vectors, got {f1.shape} and {f2.shape}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    a, b = f1 - mu1, f2 - mu2
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    tr1 = float(np.sum(a * a) / (n1 - 1))
    tr2 = float(np.sum(b * b) / (n2 - 1))
    if min(n1, n2) < d:
        c = (a @ b.T) / math.sqrt((n1 - 1) * (n2 - 1))            # (n1, n2)
        g = c @ c.T if n1 <= n2 else c.T @ c                        # PSD, eigenvalues of S1 S2
    else:
        g = np.cov(f1, rowvar=False) @ np.cov(f2, rowvar=False)
    root = linalg.sqrtm(g)
    if not np.isfinite(root).all():                                 # near-singular: offset
        off = np.eye(len(g)) * 1e-6
        root = linalg.sqrtm(g + off)
    tr_root = float(np.real(np.trace(root)))
    return float(np.sum((mu1 - mu2) ** 2) + tr1 + tr2 - 2.0 * tr_root)


@torch.inference_mode()
def arcface_embed(net, faces: np.ndarray, device="cpu", batch: int = 32) -> torch.Tensor:
    """Unit ArcFace embeddings (N, 512) of RGB face crops (N, 112, 112, 3) uint8 (`arcface_crops`)."""
    out = []
    for s in range(0, len(faces), batch):
        x = _frames_tensor(faces[s:s + batch], device)              # (b, 3, 112, 112) in [0, 1]
        if x.shape[-2:] != (ARCFACE_SIZE, ARCFACE_SIZE):
            x = F.interpolate(x, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False)
        out.append(F.normalize(net(x * 2.0 - 1.0).float(), dim=1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------
# ArcFace alignment (CSIM)
# ------------------------------------------------------------------------------------------

MP_IRIS = (468, 473)                # iris centres of the refined 478-point mesh, image-left first
MP_EYE_CORNERS = ((33, 133), (362, 263))
MP_NOSE_TIP = 1
MP_MOUTH_OUTER = (61, 291)          # outer mouth corners, image-left first


def five_points(lm: np.ndarray) -> np.ndarray:
    """ArcFace's five points (5, 2) from MediapipeMesh landmarks, in ARCFACE_TEMPLATE's order:
    the eye centres (iris centres 468 / 473; the mean of each eye's two corners on a mesh
    without iris points), the nose tip (1) and the outer mouth corners (61 / 291)."""
    p = np.asarray(lm, np.float64)[:, :2]
    if len(p) > max(MP_IRIS):
        eyes = p[list(MP_IRIS)]
    else:
        eyes = np.stack([p[list(c)].mean(0) for c in MP_EYE_CORNERS])
    return np.concatenate([eyes, p[[MP_NOSE_TIP]], p[list(MP_MOUTH_OUTER)]])


def arcface_matrix(points: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity transform (rotation, uniform scale, shift; Umeyama 1991)
    taking the five points onto insightface's 112 x 112 template, as insightface's `norm_crop`
    estimates it."""
    from ifmdm_data.faces.signals import similarity_align
    s, r, t = similarity_align(np.asarray(points, np.float64), ARCFACE_TEMPLATE)
    return np.hstack([s * r, t[:, None]])


def arcface_align(frame: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The ArcFace input of one RGB frame: warped so that its five points land on the template,
    (112, 112, 3) uint8 (bilinear; black outside the frame, as insightface's norm_crop)."""
    import cv2
    m = arcface_matrix(five_points(lm))
    return cv2.warpAffine(frame, m, (ARCFACE_SIZE, ARCFACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def arcface_crops(frames, lms) -> Tuple[np.ndarray, int]:
    """Aligned 112 x 112 crops (N, 112, 112, 3) of RGB frames with their landmarks (None: no
    face) and the number of unaligned frames: those without a face are centre-cropped to a
    square and resized to 112 x 112 instead."""
    from ifmdm_model.infer import square_resize
    crops, unaligned = [], 0
    for f, lm in zip(frames, lms):
        if lm is None:
            crops.append(square_resize(f, ARCFACE_SIZE))
            unaligned += 1
        else:
            crops.append(arcface_align(f, lm))
    return np.stack(crops), unaligned


# ------------------------------------------------------------------------------------------
# Audio features
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

    from ifmdm_model.infer import square_resize
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
# Clips
# ------------------------------------------------------------------------------------------

def _decode_video(path, size: Optional[int], max_frames: Optional[int], keep_full: bool = False):
    """(frames resized to size (square centre crop) or as they are, fps, full-size frames)."""
    import av

    from ifmdm_model.infer import square_resize
    frames, full = [], []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoEvalError(f"{path} has no video stream")
            from ifmdm_data.media.video import main_streams, stream_display_size, to_rgb
            vs = main_streams(c)[0]
            w, h = stream_display_size(vs)
            fps = float(vs.average_rate) if vs.average_rate else 25.0
            for f in c.decode(vs):
                rgb = to_rgb(f, w, h)                    # display geometry, limited range
                frames.append(square_resize(rgb, size) if size else rgb)
                if keep_full:
                    full.append(rgb)
                if max_frames and len(frames) >= max_frames:
                    break
    except VideoEvalError:
        raise
    except Exception as e:  # noqa: BLE001
        raise VideoEvalError(f"cannot decode {path} ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoEvalError(f"{path} has no video frames")
    return np.stack(frames), fps, full


def _write_wav(path: Path, wav: np.ndarray) -> Path:
    ints = (np.clip(wav, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(ints.tobytes())
    return path


class _Mesh:
    """MediapipeMesh landmarks of a frame sequence (None when mediapipe is unavailable)."""

    def __init__(self):
        try:
            from ifmdm_data.faces.backends.mediapipe_backend import MediapipeMesh
            self.mesh = MediapipeMesh()
        except Exception as e:  # noqa: BLE001
            log.warning("mediapipe face mesh unavailable (%s): no av_corr, no face alignment for CSIM, "
                        "no face / mouth crops for LSE (whole-frame fallbacks)", e)
            self.mesh = None

    def landmarks(self, frames) -> List[Optional[np.ndarray]]:
        if self.mesh is None:
            return [None] * len(frames)
        self.mesh.reset()
        return [self.mesh.landmarks(f) for f in frames]

    def close(self):
        if self.mesh is not None:
            self.mesh.close()


def mouth_series(lms: List[Optional[np.ndarray]], scheme) -> np.ndarray:
    """The filter's mouth opening per frame (NaN without a face)."""
    from ifmdm_data.faces import signals as sig
    out = np.full(len(lms), np.nan)
    have = [lm for lm in lms if lm is not None]
    if len(have) < 2:
        return out
    ref = np.nanmedian(np.stack(have), axis=0)
    ref_size = sig.face_size(ref, scheme)
    for i, lm in enumerate(lms):
        if lm is not None:
            out[i] = sig.mouth_opening(sig.pose_normalise(lm, ref, scheme), scheme, ref_size)
    return out


def av_agreement(mouth: np.ndarray, wav: np.ndarray, fps: float) -> Optional[float]:
    from ifmdm_data.media.audio import av_sync, envelope
    n = len(mouth)
    env = envelope(wav, AUDIO_RATE, np.arange(n) / fps)
    r = av_sync(mouth, env, fps, min_overlap_s=min(2.0, 0.5 * n / fps))
    return _num(r["av_corr"])


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


def _num(v) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(vals) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate_videos(run_dir, clips: List[str], out_dir, inception=None, arcface=None, syncnet=None,
                    steps: int = 25, cfg: float = 2.5, seed: int = 0, max_frames: Optional[int] = None,
                    device="auto", lora=None) -> dict:
    """Generate each clip from its first frame and audio and compute the metrics (module
    docstring); `lora`: an `ifmdm-tune` adapter merged into stage 1. Returns {"clips": [...], "summary": {...}, "skipped": {metric: needed file}}."""
    from ifmdm_model.infer import load_models, read_audio, generate

    if not clips:
        raise VideoEvalError("no clips given")
    if max_frames is not None and int(max_frames) < 1:
        raise VideoEvalError(f"--max-frames must be >= 1, got {max_frames}")
    clips = [Path(c) for c in clips]
    for c in clips:
        if not c.is_file():
            raise VideoEvalError(f"clip {c} does not exist")
    names = [c.stem for c in clips]
    if len(set(names)) != len(names):
        raise VideoEvalError("clip file names must be distinct (outputs are out_dir/<name>.mp4)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(run_dir, device, lora=lora)
    dev = models.device
    size = models.image_size
    # the extractors first: a bad weights file fails before any generation
    inc = load_inception(inception, dev) if inception else None
    arc = load_arcface(arcface, dev) if arcface else None
    syn = load_syncnet(syncnet, dev) if syncnet else None
    skipped = {}
    if inc is None:
        skipped["fid"] = SKIP_FID
    if arc is None:
        skipped["csim"] = SKIP_CSIM
    if syn is None:
        skipped["lse_d"] = skipped["lse_c"] = SKIP_LSE

    mesh = _Mesh()
    from ifmdm_data.faces.backends.base import SCHEMES
    scheme = SCHEMES["mp478"]
    per_clip, feats_gen, feats_real = [], [], []
    try:
        for clip, name in zip(clips, names):
            real_sq, fps, real_full = _decode_video(clip, size, max_frames, keep_full=True)
            wav = read_audio(clip)
            if max_frames:
                wav = wav[:int(round(max_frames / fps * AUDIO_RATE))]
            if len(wav) < AUDIO_RATE / fps:
                raise VideoEvalError(f"{clip}: audio shorter than one frame")
            gen_path = out / f"{name}.mp4"
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                import cv2
                img = Path(tmp) / "source.png"
                cv2.imwrite(str(img), cv2.cvtColor(real_full[0], cv2.COLOR_RGB2BGR))
                aud = _write_wav(Path(tmp) / "audio.wav", wav)
                st = generate(run_dir, img, aud, gen_path, fps=fps, steps=steps, cfg=cfg, seed=seed,
                              device=device, overwrite=True, progress=False, face_check=False,
                              models=models)
            gen, _, _ = _decode_video(gen_path, None, None)
            if gen.shape[1:3] != real_sq.shape[1:3]:
                from ifmdm_model.infer import square_resize
                real_sq = np.stack([square_resize(f, gen.shape[1]) for f in real_sq])
            n = min(len(gen), len(real_sq))
            g_t, r_t = _frames_tensor(gen[:n], "cpu"), _frames_tensor(real_sq[:n], "cpu")
            rec = {"clip": str(clip), "generated": str(gen_path), "fps": fps,
                   "frames_generated": int(len(gen)), "frames_real": int(len(real_sq)),
                   "frames_compared": int(n),
                   "psnr": float(psnr(g_t, r_t).mean()), "ssim": float(ssim(g_t, r_t).mean())}
            lms_gen = mesh.landmarks(gen)
            lms_real = mesh.landmarks(real_full[:len(real_sq)])
            rec["face_fraction_generated"] = float(np.mean([lm is not None for lm in lms_gen]))
            rec["av_corr_generated"] = av_agreement(mouth_series(lms_gen, scheme), wav, fps)
            rec["av_corr_real"] = av_agreement(mouth_series(lms_real, scheme), wav, fps)
            if inc is not None:
                feats_gen.append(inception_features(inc, gen, dev))
                feats_real.append(inception_features(inc, real_sq, dev))
            if arc is not None:
                # the source: the full-resolution first frame when its face is found, else the
                # square-resized one (whole-frame fallback)
                src = real_full[0] if lms_real[0] is not None else real_sq[0]
                src_face, src_unaligned = arcface_crops([src], lms_real[:1])
                gen_faces, unaligned = arcface_crops(gen, lms_gen)
                e = arcface_embed(arc, np.concatenate([src_face, gen_faces]), dev)
                rec["csim"] = float((e[1:] @ e[0]).mean())
                rec["csim_unaligned_frames"] = int(unaligned)
                rec["csim_source_aligned"] = not src_unaligned
            if syn is not None:
                video, sync_fps, no_face = sync_video(syn.layout, gen, lms_gen, scheme, fps)
                rec.update(lse(syn, video, wav, sync_fps, dev))
                rec["lse_fps"] = float(sync_fps)
                rec["lse_no_face_frames"] = int(no_face)
            rec["generate_stats"] = {k: st[k] for k in ("frames", "seconds", "wall_s", "steps", "cfg", "seed")}
            per_clip.append(rec)
            del real_full
    finally:
        mesh.close()

    summary = {k: _mean([c.get(k) for c in per_clip])
               for k in ("psnr", "ssim", "av_corr_generated", "av_corr_real")}
    summary["n_clips"] = len(per_clip)
    summary["frames_compared"] = int(sum(c["frames_compared"] for c in per_clip))
    if inc is not None:
        summary["fid"] = frechet_distance(np.concatenate(feats_gen), np.concatenate(feats_real))
        summary["fid_frames"] = [int(sum(len(f) for f in feats_gen)), int(sum(len(f) for f in feats_real))]
    if arc is not None:
        summary["csim"] = _mean([c["csim"] for c in per_clip])
        summary["csim_unaligned_frames"] = int(sum(c["csim_unaligned_frames"] for c in per_clip))
    if syn is not None:
        summary["lse_d"] = _mean([c["lse_d"] for c in per_clip])
        summary["lse_c"] = _mean([c["lse_c"] for c in per_clip])
    return {"checkpoint": str(run_dir), "stage1_checkpoint": str(models.stage1_ckpt),
            "stage2_checkpoint": str(models.stage2_ckpt), "steps": steps, "cfg": float(cfg),
            "seed": seed, "max_frames": max_frames,
            "weights": {"inception": str(inception) if inception else None,
                        "arcface": str(arcface) if arcface else None,
                        "syncnet": str(syncnet) if syncnet else None},
            "syncnet_layout": syn.layout if syn is not None else None,
            "clips": per_clip, "summary": summary, "skipped": skipped,
            "lora": {f"stage{k}": v for k, v in models.adapters.items()}}


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def format_table(res: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}"
    cols = ["psnr", "ssim", "av_corr_generated", "av_corr_real", "csim", "lse_d", "lse_c"]
    lines = [f"talking-head evaluation: {res['checkpoint']}, {res['summary']['n_clips']} clip(s)",
             f"{'clip':24s} " + " ".join(f"{c:>12s}" for c in cols)]
    for c in res["clips"]:
        lines.append(f"{Path(c['clip']).name[:24]:24s} " + " ".join(f"{f(c.get(k)):>12s}" for k in cols))
    lines.append(f"{'mean':24s} " + " ".join(f"{f(res['summary'].get(k)):>12s}" for k in cols))
    if "fid" in res["summary"]:
        lines.append(f"FID (all clips pooled): {res['summary']['fid']:.3f}")
    if "csim_unaligned_frames" in res["summary"]:
        lines.append(f"CSIM: {res['summary']['csim_unaligned_frames']} generated frame(s) without a face "
                     "(not aligned)")
    if res.get("syncnet_layout"):
        lines.append(f"LSE: SyncNet layout {res['syncnet_layout']}")
    for k, why in res["skipped"].items():
        lines.append(f"{k}: skipped ({why})")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ifmdm-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talking-head evaluation: generate each held-out clip from its first frame "
                    "and its audio; PSNR / SSIM / audio-visual agreement, and FID / CSIM / "
                    "LSE-D / LSE-C where their weights files are given.", epilog=__doc__)
    ap.add_argument("--checkpoint", required=True, help="run folder (stage1/ and stage2/)")
    ap.add_argument("--clips", nargs="+", required=True, help="held-out videos with audio")
    ap.add_argument("-o", "--out", required=True, help="output folder (videos, results.json)")
    ap.add_argument("--inception", help="Inception-v3 state dict (FID)")
    ap.add_argument("--arcface", help="ArcFace iresnet state dict (CSIM)")
    ap.add_argument("--syncnet", help="SyncNet state dict (LSE-D / LSE-C): syncnet_python's "
                    "syncnet_v2.model (paper-comparable) or an ifmdm SyncNet state dict")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-frames", type=int, default=None, help="evaluate the first N frames")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--lora", help="an `ifmdm-tune -o` folder: its stage-1 adapter is merged in")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv=None) -> int:
    from ifmdm_data.filter.finalise import write_json_atomic
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        res = evaluate_videos(args.checkpoint, args.clips, args.out, inception=args.inception,
                              arcface=args.arcface, syncnet=args.syncnet, steps=args.steps,
                              cfg=args.cfg, seed=args.seed, max_frames=args.max_frames,
                              device=args.device, lora=args.lora)
        write_json_atomic(res, Path(args.out) / "results.json")
    except IfmdmError as e:
        print(f"ifmdm-eval: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifmdm-eval: interrupted", file=sys.stderr)
        return 130
    print(format_table(res))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
