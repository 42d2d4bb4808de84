"""Backend roles and the landmark index conventions the signal code relies on.

Every role takes RGB uint8 frames `(H, W, 3)` and returns pixel coordinates of that frame.

- Detector.detect(rgb) -> (K, 5) float32 [x0, y0, x1, y1, score]: every face found; used to
  count faces (the full-range detector sees small and secondary faces a mesh tracker misses).
- LandmarkModel.landmarks(rgb) -> (P, 3) float32 or None: the primary face's landmarks
  (x, y in pixels; z in the same scale as x when the model gives depth, else 0).
  `reset()` starts a new segment (drops video tracking state).
- Segmenter.person_mask(rgb) -> (H, W) float32 in [0, 1]: where the person (or the face
  region, for a face-parsing model) is; the rest is background for camera-motion estimation.

`FaceModels` bundles the three roles of one actor. Building them by name is
`factory.build_models`; this module imports no backend.
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

