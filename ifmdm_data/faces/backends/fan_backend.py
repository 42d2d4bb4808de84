"""Optional backend: face-alignment 1.5.0 (Bulat & Tzimiropoulos), weights from a local folder.

- `S3FDDetector`: S3FD, "Single Shot Scale-invariant Face Detector" (Zhang et al., ICCV 2017),
  file `s3fd-619a316812.pth` (a plain state dict of `face_alignment.detection.sfd.net_s3fd.s3fd`).
- `FANLandmarks`: 2D-FAN-4, "How far are we from solving the 2D & 3D Face Alignment problem?"
  (Bulat & Tzimiropoulos, ICCV 2017), 68 iBUG points, file `2DFAN4-11f355bf06.pth.tar` (a plain
  state dict of `face_alignment.models.FAN(4)`), on the largest S3FD face.

These are the files face-alignment 1.5.0 downloads from www.adrianbulat.com/downloads/python-fan/.
Here the networks are built from face-alignment's own classes and the files are read with
`torch.load(..., weights_only=True)` exactly as face-alignment does, so nothing is ever fetched.
The pre/post-processing mirrors `FaceAlignment.get_landmarks_from_image` (flip_input=True).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ifmdm_data.faces.backends.base import SCHEMES
from ifmdm_data.faces.backends.weights import load_error, require_file

S3FD_FILE = "s3fd-619a316812.pth"
FAN2D_FILE = "2DFAN4-11f355bf06.pth.tar"
_WHAT = "the FAN backend (face-alignment)"
_URL = "https://www.adrianbulat.com/downloads/python-fan/"


def load_state_dict_into(net: torch.nn.Module, path: str, what: str, device="cpu"):
    """torch.load a state-dict file (weights_only) into `net`; WeightsLoadError on any failure."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
        net.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise load_error(path, what, e) from e
    return net.to(device).eval()


def heatmap_points(hm: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """(C, 2) float32 frame coordinates from (C, H, W) heatmaps of a crop at `center`, `scale`.

    Same decoding as face_alignment.utils.get_preds_fromhm (arg-max, a quarter pixel towards
    the higher neighbour, -0.5, inverse crop transform), vectorised in numpy: no numba JIT at
    start-up (~8 s per process) and sub-pixel output (face-alignment truncates to int).
    """
    c, h, w = hm.shape
    py, px = np.divmod(hm.reshape(c, -1).argmax(1), w)
    pts = np.stack([px, py], 1).astype(np.float64) + 0.5
    inner = np.nonzero((px > 0) & (px < w - 1) & (py > 0) & (py < h - 1))[0]
    x, y = px[inner], py[inner]
    pts[inner, 0] += 0.25 * np.sign(hm[inner, y, x + 1] - hm[inner, y, x - 1])
    pts[inner, 1] += 0.25 * np.sign(hm[inner, y + 1, x] - hm[inner, y - 1, x])
    side = 200.0 * scale  # face_alignment.utils.SCALE_FACTOR * scale: crop side in pixels
    return (pts * side / h + np.asarray(center, np.float64) - side / 2.0).astype(np.float32)


class S3FDDetector:
    """S3FD face detector (face-alignment's `sfd`), file `s3fd-619a316812.pth` in weights_dir."""

    def __init__(self, weights_dir: Optional[str], device: str = "cpu", threshold: float = 0.5):
        path = require_file(weights_dir, S3FD_FILE, _WHAT, f"download {_URL}{S3FD_FILE}")
        from face_alignment.detection.sfd.net_s3fd import s3fd
        self.device = str(device)
        self.threshold = float(threshold)
        self._net = load_state_dict_into(s3fd(), path, "the S3FD face detector", self.device)

    @torch.no_grad()
    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(K, 5) float32 [x0, y0, x1, y1, score] in pixels (as SFDDetector.detect_from_image)."""
        from face_alignment.detection.sfd.bbox import nms
        from face_alignment.detection.sfd.detect import detect
        img = np.ascontiguousarray(rgb[..., :3])  # RGB: S3FD's detect() flips to BGR itself
        boxes = np.asarray(detect(self._net, img, device=self.device)[0])
        if boxes.size == 0:
            return np.zeros((0, 5), np.float32)
        boxes = boxes.reshape(-1, 5)
        boxes = boxes[nms(boxes, 0.3)]
        boxes = boxes[boxes[:, 4] > self.threshold]
        return boxes.astype(np.float32).reshape(-1, 5)

    def close(self) -> None:
        self._net = None


class FANLandmarks:
    """2D-FAN-4 68-point landmarks (iBUG scheme) of the largest S3FD face.

    Needs `2DFAN4-11f355bf06.pth.tar` and `s3fd-619a316812.pth` in weights_dir (or pass an
    already built `detector` to share it). Stateless per frame: `reset()` does nothing.
    """

    scheme = SCHEMES["ibug68"]

    def __init__(self, weights_dir: Optional[str], device: str = "cpu", threshold: float = 0.5,
                 detector: Optional[S3FDDetector] = None):
        fan_path = require_file(weights_dir, FAN2D_FILE, _WHAT, f"download {_URL}{FAN2D_FILE}")
        if detector is None:
            require_file(weights_dir, S3FD_FILE, _WHAT, f"download {_URL}{S3FD_FILE}")
        from face_alignment.models import FAN
        self.device = str(device)
        self._own_detector = detector is None
        if detector is None:
            detector = S3FDDetector(weights_dir, device=device, threshold=threshold)
        self._detector = detector
        self._net = load_state_dict_into(FAN(4), fan_path, "the 2D-FAN-4 landmark model",
                                         self.device)

    def reset(self) -> None:
        """No tracking state: every frame is detected and aligned on its own."""

    def landmarks(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        boxes = self._detector.detect(rgb)
        if len(boxes) == 0:
            return None
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return self.landmarks_in_box(rgb, boxes[int(np.argmax(areas))])

    @torch.no_grad()
    def landmarks_in_box(self, rgb: np.ndarray, box) -> np.ndarray:
        """(68, 3) float32 landmarks (z = 0) for one face box [x0, y0, x1, y1, ...] in pixels."""
        from face_alignment.utils import CENTER_Y_OFFSET, REFERENCE_SCALE, crop, flip
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        center = np.array([x1 - (x1 - x0) / 2.0, y1 - (y1 - y0) / 2.0], np.float64)
        center[1] -= (y1 - y0) * CENTER_Y_OFFSET
        scale = (x1 - x0 + y1 - y0) / REFERENCE_SCALE
        img = np.ascontiguousarray(rgb[..., :3])
        inp = np.ascontiguousarray(crop(img, center, scale).transpose((2, 0, 1)), np.float32)
        inp = torch.from_numpy(inp / 255.0)[None].to(self.device)  # NCHW-contiguous, as in FA
        out = self._net(inp)[-1].detach()
        out += flip(self._net(flip(inp))[-1].detach(), is_label=True)
        hm = out[0].to("cpu", torch.float32).numpy()
        pts = np.zeros((68, 3), np.float32)
        pts[:, :2] = heatmap_points(hm, center, scale)
        return pts

    def close(self) -> None:
        if self._own_detector and self._detector is not None:
            self._detector.close()
        self._detector = None
        self._net = None
