"""Build a backend preset's three models by name (`build_models`), once per actor.

The only module that names the concrete backends; each is imported when its preset is asked
for, so `base` (roles, landmark schemes) and the backends never import each other in a circle.
"""
from __future__ import annotations

from typing import Optional

from ifmdm_data.faces.backends.base import FaceModels

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
