"""Backend roles and the landmark index conventions the signal code relies on.

Every role takes RGB uint8 frames `(H, W, 3)` and returns pixel coordinates of that frame.

- Detector.detect(rgb) -> (K, 5) float32 [x0, y0, x1, y1, score]: every face found; used to
  count faces (the full-range detector sees small and secondary faces a mesh tracker misses).
- LandmarkModel.landmarks(rgb) -> (P, 3) float32 or None: the primary face's landmarks
  (x, y in pixels; z in the same scale as x when the model gives depth, else 0).
  `reset()` starts a new segment (drops video tracking state).
- Segmenter.person_mask(rgb) -> (H, W) float32 in [0, 1]: where the person (or the face
  region, for a face-parsing model) is; the rest is background for camera-motion estimation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class LandmarkModel(Protocol):
    scheme: "LandmarkScheme"
    def reset(self) -> None: ...
    def landmarks(self, rgb: np.ndarray) -> Optional[np.ndarray]: ...
    def close(self) -> None: ...


class Segmenter(Protocol):
    def person_mask(self, rgb: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LandmarkScheme:
    """Named landmark indices for one convention (mediapipe 478-point mesh, iBUG 68)."""

    name: str
    n_points: int
    eye_outer: tuple            # (left-image-side eye outer corner, other eye outer corner)
    eye_inner: tuple
    eye_lids: tuple             # ((top, bottom), (top, bottom)) per eye
    inner_lips: tuple           # ((top, bottom), ...) pairs across the inner lip contour
    mouth_corners: tuple        # (left, right) inner mouth corners
    lips: tuple                 # outer lip contour, for the lip region
    rigid: tuple                # points that move with the skull, not with jaw or brows
    face_oval: tuple            # contour for the face box / face region


_MP_LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37,
                  39, 40, 185)
_MP_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
                 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
                 103, 67, 109)

SCHEMES = {
    "mp478": LandmarkScheme(
        name="mp478", n_points=478,
        eye_outer=(33, 263), eye_inner=(133, 362),
        eye_lids=((159, 145), (386, 374)),
        inner_lips=((13, 14), (82, 87), (312, 317)),
        mouth_corners=(78, 308),
        lips=_MP_LIPS_OUTER,
        # forehead, nose bridge and tip, eye corners, cheekbones, temples
        rigid=(10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 234, 454, 127, 356,
               116, 345, 123, 352),
        face_oval=_MP_FACE_OVAL,
    ),
    "ibug68": LandmarkScheme(
        name="ibug68", n_points=68,
        eye_outer=(36, 45), eye_inner=(39, 42),
        eye_lids=((37, 41), (44, 46)),
        inner_lips=((62, 66), (61, 67), (63, 65)),
        mouth_corners=(60, 64),
        lips=tuple(range(48, 60)),
        rigid=(27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45, 0, 16),
        face_oval=tuple(range(0, 17)) + (26, 25, 24, 19, 18, 17),
    ),
}


# Second face-counting pass (issue 11, small faces). A full-range detector sees the frame
# shrunk to its input size (mediapipe: 192 px), so a ~30 px face in a 640x360 frame is ~9 px
# there and is missed. When the first pass finds no face, or only faces shorter than
# SECOND_PASS_SMALL_FRAC of the frame's short side, the detector runs again on 2x2 overlapping
# tiles (each TILE_FRAC of the width and height, so faces up to ~0.2 of a side lie wholly in
# one tile) and faces are counted from the union, overlapping boxes merged. The filter takes
# both from its config (analysis.second_pass_small_frac / tile_frac); these are the defaults.
SECOND_PASS_SMALL_FRAC = 0.25
TILE_FRAC = 0.6
DEDUPE_IOU = 0.3          # boxes overlapping more than this (IoU) ...
DEDUPE_COVER = 0.6        # ... or covering this much of the smaller one are the same face


def dedupe_boxes(boxes: np.ndarray, iou: float = DEDUPE_IOU, cover: float = DEDUPE_COVER) -> np.ndarray:
    """(K, 5) [x0, y0, x1, y1, score] -> the boxes kept by greedy suppression, best score first:
    a box is dropped when its IoU with a kept box exceeds `iou` or the intersection covers more
    than `cover` of the smaller of the two (a face cut by a tile edge gives a partial box)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    kept: list = []
    for b in boxes[np.argsort(-boxes[:, 4], kind="stable")]:
        a_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
        dup = False
        for k in kept:
            iw = min(b[2], k[2]) - max(b[0], k[0])
            ih = min(b[3], k[3]) - max(b[1], k[1])
            inter = max(iw, 0) * max(ih, 0)
            a_k = max(k[2] - k[0], 0) * max(k[3] - k[1], 0)
            union = a_b + a_k - inter
            if (union > 0 and inter / union > iou) or inter > cover * max(min(a_b, a_k), 1e-6):
                dup = True
                break
        if not dup:
            kept.append(b)
    return np.asarray(kept, np.float32).reshape(-1, 5)


def detect_faces(detector: "Detector", rgb: np.ndarray, second_pass: bool = True,
                 small_frac: float = SECOND_PASS_SMALL_FRAC, tile_frac: float = TILE_FRAC) -> np.ndarray:
    """Every face in `rgb` (K, 5), with the tiled second pass for small and secondary faces
    (see SECOND_PASS_SMALL_FRAC). Costs 4 extra detector calls on frames that need it."""
    boxes = np.asarray(detector.detect(rgb), np.float32).reshape(-1, 5)
    h, w = rgb.shape[:2]
    if not second_pass or (len(boxes) and (boxes[:, 3] - boxes[:, 1]).max() >= small_frac * min(h, w)):
        return boxes
    th, tw = int(round(h * tile_frac)), int(round(w * tile_frac))
    found = [boxes]
    for y0 in (0, h - th):
        for x0 in (0, w - tw):
            b = np.asarray(detector.detect(np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])),
                           np.float32).reshape(-1, 5).copy()
            b[:, [0, 2]] += x0
            b[:, [1, 3]] += y0
            found.append(b)
    return dedupe_boxes(np.concatenate(found))


@dataclass
class FaceModels:
    """The three roles for one actor; built once per actor by `build_models`."""

    detector: Detector
    landmarks: LandmarkModel
    segmenter: Segmenter
    names: dict = field(default_factory=dict)

    def close(self) -> None:
        for m in (self.detector, self.landmarks, self.segmenter):
            try:
                m.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


BACKEND_PRESETS = {
    # backend name -> (detector, landmarks, segmenter)
    "mediapipe": ("mediapipe", "mediapipe", "mediapipe"),
    "fan": ("s3fd", "fan", "mediapipe"),
    "facexlib": ("retinaface", "mediapipe", "bisenet"),
}


def build_models(backend: str = "mediapipe", weights_dir: Optional[str] = None,
                 min_detection_confidence: float = 0.5, device: str = "cpu") -> FaceModels:
    """Load the models of a backend preset once (call in an actor's __init__).

    mediapipe: all three roles from the models inside the mediapipe 0.10.21 wheel.
    fan: S3FD detector + FAN 68-point landmarks (face-alignment), weights from `weights_dir`.
    facexlib: RetinaFace detector + BiSeNet face parsing (facexlib), weights from `weights_dir`;
    landmarks stay mediapipe's 478-point mesh.
    """
    from ifmdm_data.errors import ConfigError
    if backend not in BACKEND_PRESETS:
        raise ConfigError(f"unknown backend {backend!r} (choose from {', '.join(BACKEND_PRESETS)})")
    det_name, lmk_name, seg_name = BACKEND_PRESETS[backend]
    if backend != "mediapipe" and not weights_dir:
        raise ConfigError(f"backend {backend!r} loads its weights from a local folder: pass --weights-dir DIR")
    from ifmdm_data.faces.backends import mediapipe_backend as mpb

    if det_name == "mediapipe":
        detector = mpb.MediapipeDetector(min_detection_confidence)
    elif det_name == "s3fd":
        from ifmdm_data.faces.backends.fan_backend import S3FDDetector
        detector = S3FDDetector(weights_dir, device=device, threshold=min_detection_confidence)
    else:
        from ifmdm_data.faces.backends.facexlib_backend import RetinaFaceDetector
        detector = RetinaFaceDetector(weights_dir, device=device, threshold=min_detection_confidence)

    if lmk_name == "mediapipe":
        landmarks = mpb.MediapipeMesh(min_detection_confidence)
    else:
        from ifmdm_data.faces.backends.fan_backend import FANLandmarks
        # share the S3FD instance: one copy of its weights per actor
        landmarks = FANLandmarks(weights_dir, device=device,
                                 detector=detector if det_name == "s3fd" else None)

    if seg_name == "mediapipe":
        segmenter = mpb.MediapipeSelfieSegmenter()
    else:
        from ifmdm_data.faces.backends.facexlib_backend import BiSeNetSegmenter
        segmenter = BiSeNetSegmenter(weights_dir, device=device)
    return FaceModels(detector, landmarks, segmenter,
                      names={"detector": det_name, "landmarks": lmk_name, "segmenter": seg_name})


# Weight files each optional backend loads from --weights-dir (checked before Ray starts).
WEIGHT_FILES = {
    "fan": ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar"),
    "facexlib": ("detection_Resnet50_Final.pth", "parsing_bisenet.pth"),
}


def check_weights(backend: str, weights_dir: Optional[str]) -> None:
    """Raise a clear error naming the first missing weight file of `backend`."""
    import os

    from ifmdm_data.errors import ConfigError, MissingWeightsError
    if backend not in WEIGHT_FILES:
        return
    if not weights_dir:
        raise ConfigError(f"backend {backend!r} loads its weights from a local folder: pass --weights-dir DIR")
    for name in WEIGHT_FILES[backend]:
        if not os.path.isfile(os.path.join(weights_dir, name)):
            raise MissingWeightsError(name, weights_dir, f"the {backend} backend")
