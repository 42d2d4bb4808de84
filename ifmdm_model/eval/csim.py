"""CSIM of the talking-head evaluation: ArcFace face alignment and identity embeddings.

Faces are aligned as insightface does for ArcFace: five points from the MediapipeMesh
landmarks (iris centres 468 / 473, nose tip 1, outer mouth corners 61 / 291; image-left
first), a least-squares similarity transform (Umeyama) onto insightface's 112 x 112 template,
cv2.warpAffine to 112 x 112; a frame without a face falls back to the whole (square) frame
resized to 112 x 112. `arcface_embed` gives unit 512-d embeddings of the crops with the user's
ArcFace backbone (`ifmdm_model.eval.nets.load_arcface`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ifmdm_data.shard.crop import square_resize

from ifmdm_model.eval.metrics import frames_tensor

# insightface's 112 x 112 ArcFace template (arcface_dst): image-left eye (the subject's right),
# image-right eye, nose tip, image-left and image-right mouth corners
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
ARCFACE_SIZE = 112


@torch.inference_mode()
def arcface_embed(net, faces: np.ndarray, device="cpu", batch: int = 32) -> torch.Tensor:
    """Unit ArcFace embeddings (N, 512) of RGB face crops (N, 112, 112, 3) uint8 (`arcface_crops`)."""
    out = []
    for s in range(0, len(faces), batch):
        x = frames_tensor(faces[s:s + batch], device)              # (b, 3, 112, 112) in [0, 1]
        if x.shape[-2:] != (ARCFACE_SIZE, ARCFACE_SIZE):
            x = F.interpolate(x, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False)
        out.append(F.normalize(net(x * 2.0 - 1.0).float(), dim=1).cpu())
    return torch.cat(out)


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
    crops, unaligned = [], 0
    for f, lm in zip(frames, lms):
        if lm is None:
            crops.append(square_resize(f, ARCFACE_SIZE))
            unaligned += 1
        else:
            crops.append(arcface_align(f, lm))
    return np.stack(crops), unaligned
