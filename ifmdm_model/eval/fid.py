"""FID of the talking-head evaluation: Inception-v3 pool3 features and the Frechet distance.

`inception_features` runs the user's Inception-v3 (`ifmdm_model.eval.nets.load_inception`) on
RGB frames resized to 299 x 299 (bilinear) with ImageNet normalisation: (N, 2048) float64.
`frechet_distance` compares two feature sets (every clip pooled); see its docstring for the
exact small-sample computation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ifmdm_model.eval.metrics import frames_tensor
from ifmdm_model.eval.nets import VideoEvalError


@torch.inference_mode()
def inception_features(net, frames: np.ndarray, device="cpu", batch: int = 16) -> np.ndarray:
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    out = []
    for s in range(0, len(frames), batch):
        x = F.interpolate(frames_tensor(frames[s:s + batch], device), size=(299, 299),
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
