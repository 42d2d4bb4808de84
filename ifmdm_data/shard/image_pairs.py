"""Stage-1 training pairs from one still image (image sets: `ifmdm-data shard --images`).

A video clip gives stage 1 its pairs for free (two frames of one clip: the same subject, moved).
A still image has no second frame, so `image_motion_pair` makes two: two independent random
warps of the same image, each a global "head-like" similarity transform (small rotation, scale,
translation) composed with a local elastic warp (a smooth random displacement field of a few
pixels), so that the motion encoder sees global motion and the local flow module sees local
motion to learn. The appearance frame is one warp, the motion frame (the target) the other.

Everything is a pure function of (image, rng, parameters): the same seed gives the same pair.
Distances are fractions of the image side, so the same settings mean the same motion at 64 px
and at 512 px. Borders are filled by reflection (no black corners for the model to key on).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# defaults (fractions of the image side / degrees)
MAX_ROTATION_DEG = 8.0       # |rotation| <= 8 degrees
MAX_SCALE = 0.08             # scale in [1 / 1.08, 1.08] (log-uniform)
MAX_TRANSLATION = 0.05       # |dx|, |dy| <= 5 % of the side
ELASTIC_AMPLITUDE = 0.012    # std of the local displacement: ~3 px at 256 px
ELASTIC_GRID = 4             # control points per side of the displacement field (smoothness)


def affine_matrix(size: tuple[int, int], rng: np.random.Generator,
                  max_rotation_deg: float = MAX_ROTATION_DEG, max_scale: float = MAX_SCALE,
                  max_translation: float = MAX_TRANSLATION) -> np.ndarray:
    """A random similarity transform about the image centre, float64 (2, 3), mapping OUTPUT
    pixel coordinates (x, y) to SOURCE coordinates (the form `cv2.remap` needs).

    size: (height, width) in pixels. Rotation uniform in +-max_rotation_deg (degrees); scale
    log-uniform in [1 / (1 + max_scale), 1 + max_scale]; translation uniform in
    +-max_translation * side (pixels) per axis. Raises ValueError for a negative range.
    """
    if min(max_rotation_deg, max_scale, max_translation) < 0:
        raise ValueError("rotation, scale and translation ranges must be >= 0")
    h, w = size
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    scale = math.exp(rng.uniform(-math.log1p(max_scale), math.log1p(max_scale)))
    tx, ty = rng.uniform(-max_translation, max_translation, size=2) * np.array([w, h])
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    # source = R(angle)^-1 / scale * (out - centre - t) + centre
    m = np.array([[c, s, 0.0], [-s, c, 0.0]])
    m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([cx + tx, cy + ty])
    return m


def elastic_field(size: tuple[int, int], rng: np.random.Generator,
                  amplitude: float = ELASTIC_AMPLITUDE, grid: int = ELASTIC_GRID) -> np.ndarray:
    """A smooth random displacement field, float32 (H, W, 2) in pixels (dx, dy).

    Normal displacements with std `amplitude * side` (pixels) at a (grid+1) x (grid+1) lattice of
    control points, interpolated bicubically over the image: the field varies over about
    side / grid pixels, so neighbouring regions move differently (local motion) while each
    region moves coherently. amplitude 0 gives zeros. Raises ValueError for amplitude < 0 or
    grid < 1.
    """
    if amplitude < 0 or grid < 1:
        raise ValueError("elastic amplitude must be >= 0 and grid >= 1")
    h, w = size
    coarse = rng.normal(0.0, amplitude * min(h, w), size=(grid + 1, grid + 1, 2)).astype(np.float32)
    if amplitude == 0:
        return np.zeros((h, w, 2), np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def warp_maps(size: tuple[int, int], rng: np.random.Generator, *,
              max_rotation_deg: float = MAX_ROTATION_DEG, max_scale: float = MAX_SCALE,
              max_translation: float = MAX_TRANSLATION, elastic_amplitude: float = ELASTIC_AMPLITUDE,
              elastic_grid: int = ELASTIC_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y), float32 (H, W) each: the source pixel that output pixel (x, y) shows,
    the affine of `affine_matrix` plus the displacement of `elastic_field` (both drawn from
    `rng`, in that order)."""
    for name, v, hi in (("max_rotation_deg", max_rotation_deg, 180.0), ("max_scale", max_scale, 4.0),
                        ("max_translation", max_translation, 1.0), ("elastic_amplitude", elastic_amplitude, 1.0)):
        if not (np.isfinite(v) and 0 <= v <= hi):
            raise ValueError(f"{name} must be a finite number in [0, {hi:g}], got {v!r}")
    h, w = size
    m = affine_matrix(size, rng, max_rotation_deg, max_scale, max_translation)
    d = elastic_field(size, rng, elastic_amplitude, elastic_grid)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]).astype(np.float32) + d[..., 0]
    map_y = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]).astype(np.float32) + d[..., 1]
    return map_x, map_y


def warp_image(img: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`img` (H, W, C) uint8 resampled at `maps` (bilinear, borders reflected), same shape."""
    return cv2.remap(img, maps[0], maps[1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def image_motion_pair(img: np.ndarray, rng: np.random.Generator, **ranges) -> tuple[np.ndarray, np.ndarray]:
    """Two random warps of one image: (appearance, motion), uint8 (H, W, 3) each, like a
    stage-1 frame pair of a clip.

    img: uint8 RGB (H, W, 3). rng: numpy Generator (the only randomness: the same seed gives
    the same pair). ranges: keyword overrides of `warp_maps` (max_rotation_deg, max_scale,
    max_translation: global motion; elastic_amplitude, elastic_grid: local motion; see the
    module defaults). Each frame is warped independently from the original, so the motion
    between them is a composition of two such warps (up to about twice each range).
    Raises ValueError when img is not (H, W, 3) uint8.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image_motion_pair needs uint8 (H, W, 3), got {img.dtype} {img.shape}")
    size = img.shape[:2]
    appearance = warp_image(img, warp_maps(size, rng, **ranges))
    motion = warp_image(img, warp_maps(size, rng, **ranges))
    return appearance, motion
