"""Face identity per segment and across a collection: dlib descriptors -> `identity_id`.

Descriptor: dlib's ResNet face descriptor (128-d float, public-domain weights
`dlib_face_recognition_resnet_model_v1.dat` shipped in the `face_recognition_models` wheel,
with `dlib-bin`; nothing is downloaded). Per frame: dlib's HOG frontal face detector finds the
largest face, the 5-point shape predictor of the same wheel
(`shape_predictor_5_face_landmarks.dat`) aligns it to dlib's 150x150 chip, and the network
gives the descriptor. Two faces are the same person when their descriptors are less than 0.6
apart (Euclidean; dlib's rule, 99.38% on LFW).

Per segment (`segment_identity`): the mean of the frame descriptors, its spread (mean distance
of the frame descriptors to that mean) and `mixed` (two frames more than the threshold apart:
two people alternating, or a failed detection).

Across a collection (`cluster_identities`): greedy leader clustering against running cluster
centroids, O(N*K) time and O(K*128) memory for K clusters: no all-pairs matrix. A segment joins
the nearest centroid within the threshold, else opens a new cluster. The descriptor function is
pluggable: any callable frame -> (128,) vector or None works (`encoder=` of `describe_segment`).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ifmdm_data.errors import MissingDependencyError, MissingWeightsError

THRESHOLD = 0.6          # dlib: same person below this Euclidean distance
DIM = 128


def models_dir() -> Path:
    """Folder of the face_recognition_models wheel's .dat files (found without importing the
    package, whose __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError("dlib_face_recognition_resnet_model_v1.dat", "<site-packages>/"
                                  "face_recognition_models/models", "face identity",
                                  "pip install face_recognition_models==0.3.0 dlib-bin==19.24.6")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibFaceEncoder:
    """Callable: RGB frame (H, W, 3) uint8 -> (128,) float32 descriptor of the largest face, or
    None without a face. Frames are downscaled to `max_side` pixels for detection (the
    descriptor is computed on the full-resolution chip); when no face is found the detector
    runs again with one 2x upsampling (small faces)."""

    HINT_PX = 110            # face height to detect at when the expected size is known

    def __init__(self, max_side: int = 640):
        try:
            import dlib
        except ImportError as e:
            raise MissingDependencyError("face identity needs dlib: pip install dlib-bin==19.24.6, or set "
                                         "identity.enabled: false in the filter config") from e
        d = models_dir()
        for f in ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"):
            if not (d / f).is_file():
                raise MissingWeightsError(f, str(d), "face identity", "pip install face_recognition_models==0.3.0")
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(d / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat"))
        self.max_side = max_side

    def __call__(self, rgb: np.ndarray, face_px: Optional[float] = None) -> Optional[np.ndarray]:
        """`face_px`: the expected face height in this frame's pixels (the filter's tracked
        face): detection then runs on a frame scaled so the face is ~HINT_PX tall (dlib's HOG
        finds faces from ~80 px; a 260 px face at 512 px takes ~7 ms instead of ~65 ms), and on
        the usual `max_side` frame when it finds nothing there."""
        import cv2

        dlib = self.dlib
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        rects, s = [], 1.0
        if face_px and face_px > 0:
            s = min(1.0, self.max_side / max(h, w), self.HINT_PX / face_px)
            small = cv2.resize(rgb, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
            rects = self.detector(small, 0)
        if len(rects) == 0:
            s = min(1.0, self.max_side / max(h, w))
            small = cv2.resize(rgb, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
            rects = self.detector(small, 0)
            if len(rects) == 0:
                rects = self.detector(small, 1)
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        r = dlib.rectangle(int(r.left() / s), int(r.top() / s), int(r.right() / s), int(r.bottom() / s))
        shape = self.shape(rgb, r)
        return np.asarray(self.net.compute_face_descriptor(rgb, shape), np.float32)


def segment_identity(descriptors: Sequence[np.ndarray], threshold: float = THRESHOLD) -> dict:
    """Frame descriptors (each (128,)) of one segment -> {descriptor: (128,) float32 mean or
    None, spread: mean distance to the mean (NaN without faces), mixed: two frames farther
    apart than `threshold`, n_faces: frames with a face, frames: (F, 128) float32 the frame
    descriptors}."""
    if not len(descriptors):
        return {"descriptor": None, "spread": float("nan"), "mixed": False, "n_faces": 0,
                "frames": np.zeros((0, DIM), np.float32)}
    x = np.stack(descriptors).astype(np.float32)
    mean = x.mean(0)
    spread = float(np.linalg.norm(x - mean, axis=1).mean())
    d = np.linalg.norm(x[:, None] - x[None], axis=2)     # (F, F), F = a few frames
    return {"descriptor": mean, "spread": spread, "mixed": bool(d.max() > threshold), "n_faces": len(x),
            "frames": x}


def describe_segment(frames: Sequence[np.ndarray], encoder: Callable, threshold: float = THRESHOLD,
                     face_px: Optional[float] = None) -> dict:
    """RGB frames of one segment -> `segment_identity` of the frames where `encoder` finds a
    face. `face_px` (the expected face height in the frames' pixels) is passed on as a hint."""
    descs = [d for d in ((encoder(f, face_px=face_px) if face_px else encoder(f)) for f in frames) if d is not None]
    return segment_identity(descs, threshold)


def cluster_identities(descriptors: Sequence[Optional[np.ndarray]], threshold: float = THRESHOLD) -> np.ndarray:
    """Segment descriptors ((128,) or None) -> (N,) int64 identity ids; -1 where None.

    Greedy leader clustering in input order against running-mean centroids (see the module
    docstring): deterministic for a given order; ids are 0..K-1 in order of first appearance.
    """
    ids = np.full(len(descriptors), -1, np.int64)
    cap = 64
    cent = np.zeros((cap, DIM), np.float32)       # running means; |c|^2 kept for the distance
    sq = np.zeros(cap, np.float32)
    counts = np.zeros(cap, np.int64)
    k = 0
    for i, d in enumerate(descriptors):
        if d is None:
            continue
        d = np.asarray(d, np.float32).reshape(DIM)
        if k:
            d2 = sq[:k] - 2.0 * (cent[:k] @ d) + float(d @ d)   # (K,) squared distances: one BLAS matvec
            j = int(d2.argmin())
            if np.sqrt(max(float(d2[j]), 0.0)) < threshold:
                ids[i] = j
                counts[j] += 1
                cent[j] += (d - cent[j]) / counts[j]
                sq[j] = float(cent[j] @ cent[j])
                continue
        if k == cap:
            cap *= 2
            cent = np.concatenate([cent, np.zeros_like(cent)])
            sq = np.concatenate([sq, np.zeros_like(sq)])
            counts = np.concatenate([counts, np.zeros_like(counts)])
        cent[k], sq[k], counts[k], ids[i] = d, float(d @ d), 1, k
        k += 1
    return ids
