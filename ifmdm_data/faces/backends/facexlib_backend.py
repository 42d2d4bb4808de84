"""Optional backend: facexlib 0.3.0 (xinntao) models, weights from a local folder.

- `RetinaFaceDetector`: RetinaFace, "Single-stage Dense Face Localisation in the Wild"
  (Deng et al., CVPR 2020), ResNet-50 backbone, file `detection_Resnet50_Final.pth`.
- `BiSeNetSegmenter`: BiSeNet, "Bilateral Segmentation Network" (Yu et al., ECCV 2018) trained
  for 19-class face parsing on CelebAMask-HQ, file `parsing_bisenet.pth`.

Both files are plain state dicts (the RetinaFace one may carry DataParallel `module.` prefixes)
and are loaded by facexlib's own `init_detection_model` / `init_parsing_model` with
`model_rootpath=weights_dir`, which read `weights_dir/<file>` when it exists. The existence is
checked first, so facexlib's download fallback is never reached.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import cv2
import numpy as np
import torch

from ifmdm_data.faces.backends.weights import load_error, require_file

RETINAFACE_FILE = "detection_Resnet50_Final.pth"
BISENET_FILE = "parsing_bisenet.pth"
_WHAT = "the facexlib backend"
_URL = "https://github.com/xinntao/facexlib/releases/download/"
# CelebAMask-HQ classes of facexlib's BiSeNet: 0 background, 1 skin, 2/3 brows, 4/5 eyes,
# 6 glasses, 7/8 ears, 9 earring, 10 nose, 11 mouth, 12/13 lips, 14 neck, 15 necklace,
# 16 cloth, 17 hair, 18 hat.
_BACKGROUND = 0
_PARSE_SIZE = 512
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)   # ImageNet normalisation, RGB order,
_STD = np.array([0.229, 0.224, 0.225], np.float32)    # as in facexlib's inference_parsing.py


class RetinaFaceDetector:
    """RetinaFace-ResNet50 face detector, file `detection_Resnet50_Final.pth` in weights_dir."""

    def __init__(self, weights_dir: Optional[str], device: str = "cpu", threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        require_file(weights_dir, RETINAFACE_FILE, _WHAT,
                     f"download {_URL}v0.1.0/{RETINAFACE_FILE}")
        from facexlib.detection import init_detection_model
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        try:
            with warnings.catch_warnings():  # torchvision's `pretrained=False` deprecation
                warnings.simplefilter("ignore", UserWarning)
                self._net = init_detection_model("retinaface_resnet50", half=False, device=device,
                                                 model_rootpath=str(weights_dir))
        except Exception as e:  # noqa: BLE001 - corrupt file or another network's weights
            raise load_error(os.path.join(str(weights_dir), RETINAFACE_FILE),
                             "the RetinaFace detector", e) from e

    @torch.no_grad()
    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(K, 5) float32 [x0, y0, x1, y1, score] in pixels of `rgb` (original size, no resize)."""
        bgr = np.ascontiguousarray(rgb[..., 2::-1])  # facexlib expects an OpenCV BGR image
        dets = self._net.detect_faces(bgr, conf_threshold=self.threshold,
                                      nms_threshold=self.nms_threshold, use_origin_size=True)
        return np.asarray(dets, np.float32).reshape(-1, 15)[:, :5].copy()

    def close(self) -> None:
        self._net = None


class BiSeNetSegmenter:
    """BiSeNet face parsing, file `parsing_bisenet.pth`: mask = 1 on every non-background class.

    The frame is resized to 512x512, scaled to [0, 1] and ImageNet-normalised (RGB), as facexlib
    does; the hard parsing mask is resized back (bilinear) to the frame size.
    """

    def __init__(self, weights_dir: Optional[str], device: str = "cpu"):
        require_file(weights_dir, BISENET_FILE, _WHAT, f"download {_URL}v0.2.0/{BISENET_FILE}")
        from facexlib.parsing import init_parsing_model
        self.device = str(device)
        try:
            self._net = init_parsing_model("bisenet", half=False, device=self.device,
                                           model_rootpath=str(weights_dir))
        except Exception as e:  # noqa: BLE001
            raise load_error(os.path.join(str(weights_dir), BISENET_FILE),
                             "the BiSeNet face parser", e) from e

    @torch.no_grad()
    def parse(self, rgb: np.ndarray) -> np.ndarray:
        """(512, 512) int64 class map of the frame resized to 512x512."""
        x = cv2.resize(np.ascontiguousarray(rgb[..., :3]), (_PARSE_SIZE, _PARSE_SIZE),
                       interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = (x - _MEAN) / _STD
        t = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(self.device)
        logits = self._net(t)[0]
        return logits[0].argmax(0).cpu().numpy()

    def person_mask(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        mask = (self.parse(rgb) != _BACKGROUND).astype(np.float32)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(mask, 0.0, 1.0).astype(np.float32)

    def close(self) -> None:
        self._net = None
