"""syncnet_python's SyncNet (Chung & Zisserman, "Out of time: automated lip sync in the wild",
ACCV 2016 workshops) and its preprocessing, shared by the data filter's sync check
(`ifmdm-data filter --syncnet`) and the evaluation's LSE-D / LSE-C (`ifmdm_model.eval.video`).

Networks    `SyncNetPython`: the layout of syncnet_python's released `syncnet_v2.model` (the
            network behind the LSE numbers of Wav2Lip, LatentSync and the IF-MDM paper);
            `SyncNet`: this project's own layout ("ifmdm"). `load_syncnet` picks one from the
            state-dict keys and raises `WeightsFileError` naming the file when it does not fit.
Audio       `syncnet_mfcc`: python_speech_features' MFCC, 13 x 100 Hz, of int16-scaled 16 kHz.
Windows     5 video frames at 25 fps and 20 MFCC frames (0.2 s); `offset_scores` is
            syncnet_python's offset search over +-15 frames (LSE-D, LSE-C, AV offset).
Face crops  `syncnet_face_crop`: syncnet_python's crop (box enlarged by 0.4, grey 110 outside
            the frame, 224 x 224, BGR).
Filter      `SyncWindowCollector` picks the frames and crops of sparse windows during the
            filter's single decode; `sync_scores` scores a segment's windows against its audio.

No weights are shipped or downloaded: syncnet_v2.model is fetched by download_model.sh of
github.com/joonson/syncnet_python.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ifmdm_data.errors import WeightsFileError

from ifmdm_data.features.mfcc import syncnet_mfcc, to_int16_scale

SYNC_FRAMES = 5
SYNC_MFCC_PER_FRAME = 4
SYNC_VSHIFT = 15
AUDIO_RATE = 16000
# syncnet_python's preprocessing (run_pipeline.py / SyncNetInstance.py)
SYNCNET_PY_FPS = 25.0               # videos are converted to 25 fps; 640 audio samples per frame
SYNCNET_PY_SIZE = 224               # face crops resized to 224 x 224
SYNCNET_PY_CROP_SCALE = 0.4         # --crop_scale: the face box is enlarged by this fraction
SYNCNET_PY_PAD = 110                # border value where the enlarged box leaves the frame
SYNCNET_PY_SMOOTH = 13              # median filter (frames) over the face box track
SAMPLES_PER_FRAME = int(AUDIO_RATE / SYNCNET_PY_FPS)   # 640


# ------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------

class SyncNet(nn.Module):
    """SyncNet-style two-stream network, this project's layout ("ifmdm"). audio (B, 1, 13, 20)
    MFCC; video (B, 5, 48, 48) grayscale mouth crops in [0, 1] stacked as channels. Both ->
    `emb`-d embeddings compared by Euclidean distance (as SyncNet's contrastive training makes
    them comparable)."""

    layout = "ifmdm"

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


def conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list:
    """[conv, bn, ReLU]: one conv block of the syncnet_python streams (module order as in
    syncnet_v2.model, so the state-dict indices match)."""
    return [conv, bn, nn.ReLU(inplace=True)]


def syncnet_head(emb: int) -> nn.Sequential:
    """512 -> 512 (BatchNorm1d, ReLU) -> emb: the FC head of each syncnet_python stream."""
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, emb))


class SyncNetPython(nn.Module):
    """The two-stream network of syncnet_python (layout "syncnet_python"), with the module
    names and shapes of its released `syncnet_v2.model` state dict, so that file loads as is.

    audio `netcnnaud` + `netfcaud`: 2-D convs over an MFCC patch (B, 1, 13, 20) (13 cepstra x
    20 frames at 100 Hz = 0.2 s). lip `netcnnlip` + `netfclip`: 3-D convs over five RGB face
    crops (B, 3, 5, 224, 224), channels in BGR order (as OpenCV reads frames), raw 0-255
    values; the first conv spans all 5 frames. Both end in `emb`-d (1024) embeddings,
    compared by Euclidean distance. The Sequential indices of the convs and BatchNorms (0, 1,
    4, 5, 8, 9, 11, 12, 14, 15, 18, 19) are part of the parameter names: ReLU and max-pool
    modules sit between them exactly as in the released network.
    """

    layout = "syncnet_python"

    def __init__(self, emb: int = 1024):
        super().__init__()
        c2, b2 = nn.Conv2d, nn.BatchNorm2d
        self.netcnnaud = nn.Sequential(                                           # (B, 1, 13, 20)
            *conv_bn_relu(c2(1, 64, 3, 1, 1), b2(64)), nn.MaxPool2d(1, 1),         # (B, 64, 13, 20)
            *conv_bn_relu(c2(64, 192, 3, 1, 1), b2(192)), nn.MaxPool2d(3, (1, 2)),  # (B, 192, 11, 9)
            *conv_bn_relu(c2(192, 384, 3, 1, 1), b2(384)),
            *conv_bn_relu(c2(384, 256, 3, 1, 1), b2(256)),
            *conv_bn_relu(c2(256, 256, 3, 1, 1), b2(256)), nn.MaxPool2d(3, 2),    # (B, 256, 5, 4)
            *conv_bn_relu(c2(256, 512, (5, 4), 1, 0), b2(512)),                    # (B, 512, 1, 1)
        )
        self.netfcaud = syncnet_head(emb)
        c3, b3 = nn.Conv3d, nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(                                           # (B, 3, 5, 224, 224)
            *conv_bn_relu(c3(3, 96, (5, 7, 7), (1, 2, 2), 0), b3(96)),             # (B, 96, 1, 109, 109)
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),                                     # (B, 96, 1, 54, 54)
            *conv_bn_relu(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3(256)),  # (B, 256, 1, 26, 26)
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),                          # (B, 256, 1, 13, 13)
            *conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            *conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            *conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),                                     # (B, 256, 1, 6, 6)
            *conv_bn_relu(c3(256, 512, (1, 6, 6), 1, 0), b3(512)),                 # (B, 512, 1, 1, 1)
        )
        self.netfclip = syncnet_head(emb)

    def forward_audio(self, x):                                                   # (B, 1, 13, 20)
        return self.netfcaud(torch.flatten(self.netcnnaud(x), 1))                 # (B, emb)

    def forward_video(self, x):                                                   # (B, 3, 5, 224, 224)
        return self.netfclip(torch.flatten(self.netcnnlip(x), 1))                 # (B, emb)

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        return {"emb": int(sd["netfcaud.3.weight"].shape[0])}


SYNCNET_LAYOUTS = {"syncnet_python": SyncNetPython, "ifmdm": SyncNet}


def syncnet_layout(sd: dict) -> Optional[str]:
    """Which SyncNet layout a state dict is: "syncnet_python" (netcnnaud.* ...), "ifmdm"
    (audio.* ...), or None."""
    if any(k.startswith("netcnnaud.") for k in sd):
        return "syncnet_python"
    if any(k.startswith("audio.") for k in sd):
        return "ifmdm"
    return None


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

def read_state_dict(path, what: str, prefixes=("module.",), error=WeightsFileError) -> dict:
    """The state dict (tensors) of a .pt / .safetensors file, key `prefixes` stripped; `error`
    naming the file when it is missing, unreadable or not a dict of tensors."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())[:300]                      # one line (torch's are long)
        raise error(f"cannot read {what} weights {p} ({type(e).__name__}: {msg})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise error(f"{what} weights {p} is not a state dict (a dict of tensors)")
    out = {}
    for k, v in sd.items():
        for pre in prefixes:
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def load_net(path, what: str, build, device, prefixes=("module.",), error=WeightsFileError) -> nn.Module:
    """`build(sd)` loaded with the file's state dict (strict), in eval mode on `device`."""
    sd = read_state_dict(path, what, prefixes, error)
    try:
        net = build(sd)
        # files saved before PyTorch 0.4.1 (syncnet_v2.model among them) have no BatchNorm
        # `num_batches_tracked` counters; they are unused in eval mode. Every other key is strict.
        own = net.state_dict()
        sd = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in sd}, **sd}
        net.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001 - KeyError, size mismatch, missing keys
        msg = " ".join(str(e).split()) or type(e).__name__       # torch's header + the details
        raise error(f"{what} weights {path} do not fit the {what} network "
                    f"({type(e).__name__}: {msg[:300]})") from None
    return net.to(device).eval().requires_grad_(False)



def load_syncnet(path, device="cpu", error=WeightsFileError) -> nn.Module:
    """SyncNet of either layout, chosen by the state-dict keys: syncnet_python's
    (`syncnet_v2.model`: netcnnaud.*, netfcaud.*, netcnnlip.*, netfclip.*) -> `SyncNetPython`;
    this project's (audio.*, audio_fc.*, video.*, video_fc.*) -> `SyncNet`. The returned
    network's `layout` tells the caller which preprocessing to use. `error`: the exception
    type raised (naming the file) when the file is missing, unreadable or does not fit."""
    def build(sd):
        layout = syncnet_layout(sd)
        if layout is None:
            raise KeyError("neither the syncnet_python layout (netcnnaud.*, netfcaud.*, netcnnlip.*, "
                           "netfclip.*) nor ifmdm's SyncNet layout (audio.*, video.*)")
        cls = SYNCNET_LAYOUTS[layout]
        return cls(**cls.config_of(sd))
    # "__S__." : a syncnet_python SyncNetInstance's own state dict wraps the network under it
    return load_net(path, "SyncNet", build, device, prefixes=("module.", "__S__."), error=error)


def load_filter_syncnet(path, device="cpu") -> "SyncNetPython":
    """The network of the filter's sync check: syncnet_python's layout only (its preprocessing
    is what the filter reproduces); any other file is a `WeightsFileError` naming it."""
    net = load_syncnet(path, device)
    if net.layout != SyncNetPython.layout:
        raise WeightsFileError(f"SyncNet weights {path} are of the '{net.layout}' layout; the filter's "
                               "sync check needs syncnet_python's (syncnet_v2.model, fetched by "
                               "download_model.sh of github.com/joonson/syncnet_python)")
    return net


# ------------------------------------------------------------------------------------------
# Windows and the offset search
# ------------------------------------------------------------------------------------------

def sync_window_starts(n_frames: int, n_audio_frames: int, drop_last: bool = False) -> np.ndarray:
    """First video frame of each SyncNet window over a clip of `n_frames` video frames with
    audio for `n_audio_frames` video frames. Window i holds video frames i .. i+4 and MFCC
    frames 4i .. 4i+19 (4 MFCC frames per video frame): the same 5 frame periods.
    drop_last: syncnet_python's count (`lastframe = min_length - 5`), one window fewer than fit."""
    n = min(n_frames, n_audio_frames) - SYNC_FRAMES + (0 if drop_last else 1)
    return np.arange(max(n, 0))


def audio_windows(feats: np.ndarray, starts) -> torch.Tensor:
    """The audio-stream input (b, 1, 13, 20) of the windows starting at video frames `starts`:
    MFCC frames 4i .. 4i+19 of feats (13, T)."""
    k, m = SYNC_FRAMES, SYNC_MFCC_PER_FRAME
    a = np.stack([feats[:, m * i:m * i + k * m] for i in starts])   # (b, 13, 20)
    return torch.from_numpy(a).float()[:, None]


def sync_windows(video: np.ndarray, feats: np.ndarray, starts, layout: str):
    """The network inputs of the windows starting at video frames `starts`.

    video: "ifmdm" (N, 48, 48) uint8 grayscale mouth crops; "syncnet_python" (N, 224, 224, 3)
    uint8 BGR face crops. feats: (13, T) MFCC, 4 frames per video frame. Returns video
    (b, 5, 48, 48) in [0, 1] or (b, 3, 5, 224, 224) raw 0-255, and audio (b, 1, 13, 20)."""
    k = SYNC_FRAMES
    v = torch.from_numpy(np.stack([video[i:i + k] for i in starts])).float()
    if layout == "syncnet_python":
        v = v.permute(0, 4, 1, 2, 3).contiguous()                  # (b, 3, 5, 224, 224)
    else:
        v = v / 255.0                                               # (b, 5, 48, 48)
    return v, audio_windows(feats, starts)


def offset_scores(ev: torch.Tensor, ea: torch.Tensor, vshift: int = SYNC_VSHIFT,
                  at=None) -> Dict[str, float]:
    """syncnet_python's offset search (`calc_pdist`) on video / audio window embeddings: for
    each video window i, the Euclidean distance to audio window at[i] + o, o in [-vshift,
    vshift] (zero embeddings outside the clip); d(o) = its mean over windows. LSE-D =
    min_o d(o); LSE-C = median_o d(o) - min_o d(o); offset_frames = -argmin_o d(o)
    (syncnet_python's "AV offset": negative when the audio of a video window comes later,
    i.e. the audio lags the video). ev (n, D); ea (m, D), one audio window per video frame;
    at: the audio window of each video window (default: ev[i] and ea[i] are the same window)."""
    n, w = len(ev), 2 * vshift + 1
    at = torch.arange(n) if at is None else torch.as_tensor(np.asarray(at), dtype=torch.long).cpu()
    eap = F.pad(ea, (0, 0, vshift, vshift))                         # (m + 2 vshift, D)
    idx = at[:, None] + torch.arange(w)[None, :]                    # (n, w)
    dists = F.pairwise_distance(ev[:, None, :].expand(-1, w, -1), eap[idx.to(eap.device)])   # (n, w)
    mdist = dists.mean(0)                                           # (w,) per offset
    mn, j = torch.min(mdist, 0)
    return {"lse_d": float(mn), "lse_c": float(torch.median(mdist) - mn),
            "offset_frames": int(vshift - int(j))}


# ------------------------------------------------------------------------------------------
# Face crops
# ------------------------------------------------------------------------------------------

def syncnet_crop_box(cx: float, cy: float, half: float, w: int, h: int,
                     crop_scale: float = SYNCNET_PY_CROP_SCALE) -> Tuple[int, int, int, int]:
    """The pixel rectangle [x0, x1) x [y0, y1) (frame coordinates, may leave the frame) of
    syncnet_python's crop around a face box (centre (cx, cy), half side `half`): columns
    cx -+ half (1 + cs), rows cy - half .. cy + half (1 + 2 cs), a square shifted down towards
    mouth and chin; rounded as its crop of the frame padded by half (1 + 2 cs) is."""
    half = max(float(half), 1.0)
    cx, cy = float(np.clip(cx, 0, w)), float(np.clip(cy, 0, h))
    p = int(half * (1 + 2 * crop_scale))
    return (int(cx + p - half * (1 + crop_scale)) - p, int(cy + p - half) - p,
            int(cx + p + half * (1 + crop_scale)) - p, int(cy + p + half * (1 + 2 * crop_scale)) - p)


def syncnet_face_crop_from(region: Callable, w: int, h: int, cx: float, cy: float, half: float,
                           crop_scale: float = SYNCNET_PY_CROP_SCALE, size: int = SYNCNET_PY_SIZE,
                           pad: int = SYNCNET_PY_PAD) -> np.ndarray:
    """syncnet_python's face crop (`syncnet_face_crop`) of a w x h frame that is read only
    where needed: region(x0, y0, x1, y1) -> that rectangle (inside the frame) as (y1 - y0,
    x1 - x0, 3) uint8 BGR. Grey `pad` outside the frame; bilinear resize -> (size, size, 3)."""
    import cv2
    x0, y0, x1, y1 = syncnet_crop_box(cx, cy, half, w, h, crop_scale)
    face = np.full((y1 - y0, x1 - x0, 3), pad, np.uint8)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        face[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = region(ix0, iy0, ix1, iy1)
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_LINEAR)


def syncnet_face_crop(frame: np.ndarray, cx: float, cy: float, half: float,
                      crop_scale: float = SYNCNET_PY_CROP_SCALE, size: int = SYNCNET_PY_SIZE,
                      pad: int = SYNCNET_PY_PAD) -> np.ndarray:
    """syncnet_python's face crop of an RGB frame -> (size, size, 3) uint8 BGR. The box
    (centre (cx, cy), half side `half`) is enlarged by crop_scale: columns cx -+ half (1 + cs),
    rows cy - half .. cy + half (1 + 2 cs) (a square shifted down, towards mouth and chin);
    what lies outside the frame is grey `pad`; bilinear resize."""
    h, w = frame.shape[:2]

    def region(x0, y0, x1, y1):
        return np.ascontiguousarray(frame[y0:y1, x0:x1, ::-1])
    return syncnet_face_crop_from(region, w, h, cx, cy, half, crop_scale, size, pad)


# ------------------------------------------------------------------------------------------
# The filter's sync check: sparse windows collected during one decode, scored per segment
# ------------------------------------------------------------------------------------------

class SyncWindowCollector:
    """Face crops of sparse SyncNet windows, collected while the filter decodes a segment.

    Window j of a segment starting at t0 starts at 25 fps frame f_j = round(j every_s 25) and
    holds the 5 frames at t0 + (f_j + m) / 25, m = 0..4 (syncnet_python re-times video to
    25 fps); each is the decoded frame nearest that time (one decoded frame may serve two
    times when the source is slower than 25 fps). `feed(t, frame)` takes every decoded frame
    in order; `crop(frame, box)` makes the 224 x 224 BGR crop (`syncnet_face_crop_from`) with
    `box` = (cx, cy, half), set by `set_box` from the most recent analysed frame with a face
    (frames picked before the segment's first face wait for it: at most `max_pending`).
    `close()` ends the segment (at its end or a scene cut) and returns its complete windows.
    """

    def __init__(self, every_s: float, crop: Callable, max_pending: int = 3 * SYNC_FRAMES):
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.every_s, self.crop, self.max_pending = float(every_s), crop, max_pending
        self.start(0.0)

    def start(self, t0: float) -> None:
        """A new segment starts at t0 (stream seconds); the face box is forgotten."""
        self.t0, self.box, self.next_j = float(t0), None, 0
        self.targets: list = []             # [time, window, position], in time order
        self.crops: dict = {}               # window -> [crop or None] * 5
        self.pending: list = []             # (window, position, frame) waiting for a box
        self.prev = None                    # (t, frame): the previous decoded frame

    def window_frame(self, j: int) -> int:
        return int(round(j * self.every_s * SYNCNET_PY_FPS))

    def feed(self, t: float, frame) -> None:
        while self.t0 + self.window_frame(self.next_j) / SYNCNET_PY_FPS <= t + 1.0 / SYNCNET_PY_FPS:
            f = self.window_frame(self.next_j)
            self.targets += [[self.t0 + (f + m) / SYNCNET_PY_FPS, self.next_j, m] for m in range(SYNC_FRAMES)]
            self.crops[self.next_j] = [None] * SYNC_FRAMES
            self.next_j += 1
        self.targets.sort()
        while self.targets and self.targets[0][0] <= t + 1e-6:
            tau, j, m = self.targets.pop(0)
            near_prev = self.prev is not None and tau - self.prev[0] < t - tau
            self._take(j, m, self.prev[1] if near_prev else frame)
        self.prev = (t, frame)

    def _take(self, j: int, m: int, frame) -> None:
        if self.box is not None:
            self.crops[j][m] = self.crop(frame, self.box)
            return
        self.pending.append((j, m, frame))
        if len(self.pending) > self.max_pending:      # no face yet: drop the oldest frames
            self.pending.pop(0)

    def set_box(self, cx: float, cy: float, half: float) -> None:
        """The face box of the latest analysed frame with a face (source pixels)."""
        self.box = (float(cx), float(cy), float(half))
        for j, m, frame in self.pending:
            self.crops[j][m] = self.crop(frame, self.box)
        self.pending = []

    def close(self) -> Tuple[np.ndarray, np.ndarray]:
        """(crops (n, 5, 224, 224, 3) uint8 BGR, times (n,) of their first frames in stream
        seconds) of the windows with all five frames; times after the last decoded frame take
        it when they are within one 25 fps frame of it."""
        if self.prev is not None:
            for tau, j, m in self.targets:
                if tau - self.prev[0] < 1.0 / SYNCNET_PY_FPS and self.box is not None:
                    self.crops[j][m] = self.crop(self.prev[1], self.box)
        crops = self.crops
        done = sorted(j for j, c in crops.items() if all(x is not None for x in c))
        self.crops, self.targets, self.pending, self.prev = {}, [], [], None
        if not done:
            return np.zeros((0, SYNC_FRAMES, SYNCNET_PY_SIZE, SYNCNET_PY_SIZE, 3), np.uint8), np.zeros(0)
        times = self.t0 + np.array([self.window_frame(j) for j in done], np.float64) / SYNCNET_PY_FPS
        return np.stack([np.stack(crops[j]) for j in done]), times


SYNC_NONE = {"sync_conf": float("nan"), "sync_dist": float("nan"), "sync_offset_frames": float("nan"),
             "sync_windows": 0}


@torch.inference_mode()
def sync_scores(net: nn.Module, crops: np.ndarray, starts: np.ndarray, wav: np.ndarray,
                vshift: int = SYNC_VSHIFT, batch: int = 16) -> Dict[str, float]:
    """SyncNet confidence of a segment's sparse windows against its 16 kHz audio.

    crops (n, 5, 224, 224, 3) uint8 BGR face crops of window i at 25 fps frames starts[i] ..
    starts[i] + 4 from the segment start; wav float in [-1, 1] from the segment start. Audio:
    `syncnet_mfcc` of the int16-scaled signal, one audio window per 25 fps frame
    (samples // 640 - 5 of them, syncnet_python's count). As syncnet_python: each video window
    is compared with the audio windows at offsets -vshift..vshift (zero embeddings outside the
    audio), the distances averaged over windows per offset, d(o) (`offset_scores`):
    sync_dist = min_o d(o) (LSE-D), sync_conf = median_o d(o) - min_o d(o) (LSE-C),
    sync_offset_frames = syncnet_python's AV offset (negative: the audio lags the video),
    sync_windows = windows scored. `SYNC_NONE` when no window has audio under it."""
    n_audio = len(wav) // SAMPLES_PER_FRAME - SYNC_FRAMES
    keep = (np.asarray(starts) >= 0) & (np.asarray(starts) < n_audio)
    if n_audio < 1 or not keep.any():
        return dict(SYNC_NONE)
    crops, starts = crops[keep], np.asarray(starts)[keep]
    device = next(net.parameters()).device
    feats = syncnet_mfcc(to_int16_scale(wav))                        # (13, T)
    a = audio_windows(feats, range(n_audio))                         # (m, 1, 13, 20)
    ea = torch.cat([net.forward_audio(a[s:s + 256].to(device)).float() for s in range(0, len(a), 256)])
    ev = []
    for s in range(0, len(crops), batch):
        v = torch.from_numpy(crops[s:s + batch]).to(device)          # (b, 5, 224, 224, 3) uint8
        ev.append(net.forward_video(v.permute(0, 4, 1, 2, 3).float()).float())   # (b, emb)
    r = offset_scores(torch.cat(ev), ea, vshift, at=starts)
    return {"sync_conf": r["lse_c"], "sync_dist": r["lse_d"], "sync_offset_frames": float(r["offset_frames"]),
            "sync_windows": int(len(starts))}
