"""Per-image quality metrics of the evaluations: PSNR, SSIM and L1 on images in [0, 1].

Shared by the stage-1 reconstruction evaluation (`ifmdm_model.eval.stage1`) and the
talking-head evaluation (`ifmdm_model.eval.video`). Inputs are (N, C, H, W) tensors in [0, 1];
each function returns one value per image, (N,).

PSNR = 10 log10(1 / MSE) over all pixels and channels, capped at `PSNR_CAP_DB` = 100 dB
(identical images); SSIM with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 1, computed per RGB channel over the valid region (no padding) and averaged (the
same value as skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`); L1 = mean absolute error.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(x: torch.Tensor, y: torch.Tensor, cap: float = PSNR_CAP_DB) -> torch.Tensor:
    """PSNR in dB per image, data range 1; identical images give `cap` (default 100 dB)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-cap / 10.0)))).clamp_max(cap)


def _gaussian_kernel(size: int, sigma: float, device, dtype) -> torch.Tensor:
    c = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    k = torch.exp(-c.pow(2) / (2.0 * sigma * sigma))
    return k / k.sum()                                             # (size,)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image (Wang et al. 2004): Gaussian window `window` x `window` (11, sigma 1.5),
    K1 = 0.01, K2 = 0.03, per channel over the valid region (no padding), averaged over
    channels and positions. Images smaller than the window use a window of their size."""
    x, y = x.float(), y.float()
    n, c, h, w = x.shape
    size = min(window, h, w)
    g = _gaussian_kernel(size, sigma, x.device, x.dtype)
    gh = g.view(1, 1, size, 1).expand(c, 1, size, 1)
    gw = g.view(1, 1, 1, size).expand(c, 1, 1, size)

    def blur(t):                                                   # separable, depthwise, valid
        return F.conv2d(F.conv2d(t, gh, groups=c), gw, groups=c)

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(dim=1)                                # (N,)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).abs().flatten(1).mean(dim=1)


def to_unit(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space (decoder output is linear) -> clamped [0, 1]."""
    return (img.float().clamp(-1.0, 1.0) + 1.0) * 0.5


def frames_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255.0
