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
av_corr       the data filter's audio-visual agreement: `ifmdm_data.audio.av_sync` of the
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
              below: insightface's arcface_torch iresnet layout and parameter names
              (iresnet18/34/50/100 state dicts load; depth and widths are read from the
              state dict), 112 x 112 RGB input scaled to [-1, 1], 512-d output. The whole
              (square) frame is resized to 112 x 112: no face alignment.
lse_d / lse_c (--syncnet FILE) SyncNet-style two-stream network (`SyncNet` below, its own
              state-dict format): audio 13 MFCC x 20 windows (0.2 s, 4 MFCC per video frame),
              video 5 grayscale 48 x 48 mouth crops (`signals.mouth_crop` on MediapipeMesh
              landmarks; the lower-centre of the frame when no face is found). As in
              syncnet_python: per video window i, distances to audio windows i + o,
              o in [-15, 15] (zero-padded embeddings outside the clip); averaged over
              windows -> mean distance per offset d(o). LSE-D = min_o d(o); LSE-C =
              median_o d(o) - min_o d(o). Lower LSE-D and higher LSE-C are better.

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
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ifmdm_data.errors import IfmdmError

from .eval_stage1 import psnr, ssim

log = logging.getLogger("ifmdm_model")

SKIP_FID = ("needs an Inception-v3 state dict file (e.g. pt_inception-2015-12-05 converted / "
            "torchvision inception_v3 weights): pass --inception FILE")
SKIP_CSIM = ("needs an ArcFace iresnet state dict file (insightface arcface_torch backbone.pth, "
             "112x112 input, 512-d output): pass --arcface FILE")
SKIP_LSE = ("needs a SyncNet state dict file (ifmdm_model.eval_video.SyncNet format: 13 MFCC x 20 "
            "audio windows, 5 grayscale mouth crops): pass --syncnet FILE")
SYNC_FRAMES = 5
SYNC_MFCC_PER_FRAME = 4
SYNC_CROP = 48
SYNC_VSHIFT = 15
AUDIO_RATE = 16000


class VideoEvalError(IfmdmError):
    """The talking-head evaluation cannot run (bad clip, bad weights file)."""


# ------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------

class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """ArcFace iresnet backbone (insightface arcface_torch names): 112 x 112 -> `emb` (512).
    layers: blocks per stage (iresnet50: (3, 4, 14, 3)); widths: (64, 128, 256, 512)."""

    def __init__(self, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), stem: int = 64,
                 emb: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-05)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for k, (n, w) in enumerate(zip(layers, widths), 1):
            down = nn.Sequential(nn.Conv2d(inplanes, w, 1, 2, bias=False), nn.BatchNorm2d(w, eps=1e-05))
            blocks = [IBasicBlock(inplanes, w, 2, down)] + [IBasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            inplanes = w
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(inplanes * 7 * 7, emb)
        self.features = nn.BatchNorm1d(emb, eps=1e-05)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        layers, widths = [], []
        for k in range(1, 5):
            idx = {int(key.split(".")[1]) for key in sd if key.startswith(f"layer{k}.")}
            layers.append(len(idx))
            widths.append(int(sd[f"layer{k}.0.conv1.weight"].shape[0]))
        return {"layers": tuple(layers), "widths": tuple(widths),
                "stem": int(sd["conv1.weight"].shape[0]), "emb": int(sd["fc.weight"].shape[0])}


class SyncNet(nn.Module):
    """SyncNet-style two-stream network. audio (B, 1, 13, 20) MFCC; video (B, 5, 48, 48)
    grayscale mouth crops in [0, 1] stacked as channels. Both -> `emb`-d embeddings compared
    by Euclidean distance (as SyncNet's contrastive training makes them comparable)."""

    def __init__(self, width: int = 64, emb: int = 512):
        super().__init__()
        w = width

        def block(cin, cout, pool):
            return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] + (
                [nn.MaxPool2d(pool)] if pool else [])

        self.audio = nn.Sequential(*block(1, w, (1, 2)), *block(w, 2 * w, (2, 2)),
                                   *block(2 * w, 4 * w, None), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.audio_fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, emb))
        self.video = nn.Sequential(*block(SYNC_FRAMES, w, 2), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                   *block(4 * w, 4 * w, None), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.video_fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, emb))

    def forward_audio(self, x):
        return self.audio_fc(self.audio(x))

    def forward_video(self, x):
        return self.video_fc(self.video(x))

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        return {"width": int(sd["audio.0.weight"].shape[0]), "emb": int(sd["audio_fc.2.weight"].shape[0])}


def _read_state_dict(path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise VideoEvalError(f"{what} weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise VideoEvalError(f"cannot read {what} weights {p} ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise VideoEvalError(f"{what} weights {p} is not a state dict (a dict of tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def _load_net(path, what: str, build, device) -> nn.Module:
    sd = _read_state_dict(path, what)
    try:
        net = build(sd)
        net.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001 - KeyError, size mismatch, missing keys
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VideoEvalError(f"{what} weights {path} do not fit the {what} network "
                             f"({type(e).__name__}: {msg[:300]})") from None
    return net.to(device).eval().requires_grad_(False)


def load_inception(path, device="cpu") -> nn.Module:
    from torchvision.models import inception_v3

    def build(sd):
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        if "AuxLogits.fc.weight" not in sd:              # weights saved without the aux head
            net.AuxLogits = None
            net.aux_logits = False
        return net
    net = _load_net(path, "Inception-v3", build, device)
    net.fc = nn.Identity()                                # pool3 (2048-d) features
    return net


def load_arcface(path, device="cpu") -> IResNet:
    return _load_net(path, "ArcFace", lambda sd: IResNet(**IResNet.config_of(sd)), device)


def load_syncnet(path, device="cpu") -> SyncNet:
    return _load_net(path, "SyncNet", lambda sd: SyncNet(**SyncNet.config_of(sd)), device)


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
def arcface_embed(net, frames: np.ndarray, device="cpu", batch: int = 32) -> torch.Tensor:
    out = []
    for s in range(0, len(frames), batch):
        x = F.interpolate(_frames_tensor(frames[s:s + batch], device), size=(112, 112),
                          mode="bilinear", align_corners=False)
        out.append(F.normalize(net(x * 2.0 - 1.0).float(), dim=1).cpu())
    return torch.cat(out)


def mfcc(wav: np.ndarray, sample_rate: int, hop: float, n_mfcc: int = 13, n_mels: int = 40,
         win_s: float = 0.025) -> np.ndarray:
    """(T, n_mfcc) MFCC, one row every `hop` samples (may be fractional), Hamming window of
    `win_s`, 512-point FFT power, `n_mels` triangular mel filters, log, DCT-II (ortho)."""
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


@torch.inference_mode()
def lse(net: SyncNet, crops: np.ndarray, wav: np.ndarray, fps: float, device="cpu",
        vshift: int = SYNC_VSHIFT) -> Dict[str, float]:
    """LSE-D / LSE-C of grayscale mouth crops (N, 48, 48) uint8 against 16 kHz audio."""
    feats = mfcc(wav, AUDIO_RATE, AUDIO_RATE / (fps * SYNC_MFCC_PER_FRAME))
    n_win = min(len(crops), len(feats) // SYNC_MFCC_PER_FRAME) - SYNC_FRAMES + 1
    if n_win < 1:
        return {"lse_d": None, "lse_c": None, "offset_frames": None}
    v = torch.from_numpy(np.stack([crops[i:i + SYNC_FRAMES] for i in range(n_win)])).float().div(255.0)
    a = np.stack([feats[SYNC_MFCC_PER_FRAME * i:SYNC_MFCC_PER_FRAME * i + SYNC_FRAMES * SYNC_MFCC_PER_FRAME].T
                  for i in range(n_win)])
    a = torch.from_numpy(a).float()[:, None]                        # (n, 1, 13, 20)
    ev = torch.cat([net.forward_video(v[s:s + 64].to(device)).cpu() for s in range(0, n_win, 64)])
    ea = torch.cat([net.forward_audio(a[s:s + 64].to(device)).cpu() for s in range(0, n_win, 64)])
    eap = F.pad(ea, (0, 0, vshift, vshift))
    w = 2 * vshift + 1
    dists = torch.stack([F.pairwise_distance(ev[i:i + 1].expand(w, -1), eap[i:i + w]) for i in range(n_win)])
    mdist = dists.mean(0)                                           # (31,) per offset
    mn, idx = torch.min(mdist, 0)
    return {"lse_d": float(mn), "lse_c": float(torch.median(mdist) - mn),
            "offset_frames": int(vshift - int(idx))}


# ------------------------------------------------------------------------------------------
# Clips
# ------------------------------------------------------------------------------------------

def _decode_video(path, size: Optional[int], max_frames: Optional[int], keep_full: bool = False):
    """(frames resized to size (square centre crop) or as they are, fps, full-size frames)."""
    import av

    from .infer import square_resize
    frames, full = [], []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoEvalError(f"{path} has no video stream")
            vs = c.streams.video[0]
            fps = float(vs.average_rate) if vs.average_rate else 25.0
            for f in c.decode(vs):
                rgb = f.to_ndarray(format="rgb24")
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
            from ifmdm_data.backends.mediapipe_backend import MediapipeMesh
            self.mesh = MediapipeMesh()
        except Exception as e:  # noqa: BLE001
            log.warning("mediapipe face mesh unavailable (%s): av_corr and mouth crops skipped", e)
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
    from ifmdm_data import signals as sig
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
    from ifmdm_data.audio import av_sync, envelope
    n = len(mouth)
    env = envelope(wav, AUDIO_RATE, np.arange(n) / fps)
    r = av_sync(mouth, env, fps, min_overlap_s=min(2.0, 0.5 * n / fps))
    return _num(r["av_corr"])


def mouth_crops(frames: np.ndarray, lms, scheme) -> np.ndarray:
    import cv2

    from ifmdm_data import signals as sig
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


def _num(v) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(vals) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def evaluate_videos(run_dir, clips: List[str], out_dir, inception=None, arcface=None, syncnet=None,
                    steps: int = 25, cfg: float = 2.5, seed: int = 0, max_frames: Optional[int] = None,
                    device="auto") -> dict:
    """Generate each clip from its first frame and audio and compute the metrics (module
    docstring). Returns {"clips": [...], "summary": {...}, "skipped": {metric: needed file}}."""
    from .infer import load_models, read_audio, generate

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
    models = load_models(run_dir, device)
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
    from ifmdm_data.backends.base import SCHEMES
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
                from .infer import square_resize
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
                e = arcface_embed(arc, np.concatenate([real_sq[:1], gen]), dev)
                rec["csim"] = float((e[1:] @ e[0]).mean())
            if syn is not None:
                rec.update(lse(syn, mouth_crops(gen, lms_gen, scheme), wav, fps, dev))
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
    if syn is not None:
        summary["lse_d"] = _mean([c["lse_d"] for c in per_clip])
        summary["lse_c"] = _mean([c["lse_c"] for c in per_clip])
    return {"checkpoint": str(run_dir), "stage1_checkpoint": str(models.stage1_ckpt),
            "stage2_checkpoint": str(models.stage2_ckpt), "steps": steps, "cfg": float(cfg),
            "seed": seed, "max_frames": max_frames,
            "weights": {"inception": str(inception) if inception else None,
                        "arcface": str(arcface) if arcface else None,
                        "syncnet": str(syncnet) if syncnet else None},
            "clips": per_clip, "summary": summary, "skipped": skipped}


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
    ap.add_argument("--syncnet", help="SyncNet state dict (LSE-D / LSE-C)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-frames", type=int, default=None, help="evaluate the first N frames")
    ap.add_argument("--device", default="auto")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main(argv=None) -> int:
    from ifmdm_data.manifest import write_json_atomic
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        res = evaluate_videos(args.checkpoint, args.clips, args.out, inception=args.inception,
                              arcface=args.arcface, syncnet=args.syncnet, steps=args.steps,
                              cfg=args.cfg, seed=args.seed, max_frames=args.max_frames,
                              device=args.device)
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
