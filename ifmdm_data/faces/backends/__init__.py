"""Face model backends, one role each: face detector (counting faces), landmark model
(per-frame mesh), segmenter (person / face-region mask).

Defaults ship inside their packages (mediapipe 0.10.21). Optional backends load weights
from a local `weights_dir` and never download: see `build_models`.

- base: the roles (Protocols), the landmark index schemes (SCHEMES), FaceModels
- factory: build_models, the backend presets by name (the only module naming the backends)
- weights: the optional backends' weight files, check_weights, load errors
- mediapipe_backend / fan_backend / facexlib_backend: the models
"""
from ifmdm_data.faces.backends.base import Detector, LandmarkModel, Segmenter, FaceModels, LandmarkScheme, SCHEMES
from ifmdm_data.faces.backends.factory import build_models

__all__ = ["Detector", "LandmarkModel", "Segmenter", "FaceModels", "LandmarkScheme", "SCHEMES",
           "build_models"]
