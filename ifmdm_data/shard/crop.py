"""The stabilised large-field-of-view crop of `ifmdm-data shard` (pure numpy + one OpenCV resize).

ONE box per segment, never a box per frame. Stage 1 learns motion as the difference between
two frames of one clip; stage 2 generates that motion over time. A crop that followed the face
would cancel the head's translation and scale change (and add its own jitter from landmark
noise), so the model would never see the head move across the frame. A fixed box keeps the
head motion relative to a static background, exactly as the camera recorded it.

The box (source pixels, displayed orientation, square):

- centre: the median face-box centre over the segment's face frames, shifted down by
  `down` (default 0.3) median face heights, so the crop holds the head with some room above
  it and the upper torso below it (the face box is the face oval: brow/hairline to chin);
- side: max(`scale` (default 2.6) x the median face height, the extent of the face motion):
  every face box of the segment (robust 1st..99th percentile of its edges, so one glitched
  frame cannot blow the crop up) must fit inside with a margin of `margin` (default 0.15)
  face heights on every side. A segment whose head travels far gets a wider crop (lower
  face resolution) rather than a face that leaves the crop: the curation already accepted
  it, so a box of 2x the nominal side or more is still used as is;
- rounded to even pixels (x1 - x0 == y1 - y0, all even, so the half-resolution chroma
  planes of yuv420p crop exactly); it may extend past the frame. Outside the
  frame the crop is padded with black by default (`pad="black"`): a constant border is static
  over the clip and carries no content, while replicated edge pixels would smear whatever
  moves along the frame edge (shoulders, hands) into moving streaks the model would learn.
  `pad="replicate"` is available.

Two limits keep borders small: the side is capped at the frame's short side unless the head
motion needs more (so sources that are already tight face crops, HDTF / CelebV style, are used
whole instead of shrunk into black borders; the face is then larger in the crop than the
nominal 1/2.6), and a box that fits inside the frame is moved inside it. Only a box that
cannot fit (large motion, a face at the edge of a small frame) is padded.
"""
from __future__ import annotations

import logging
import math

import numpy as np

PADS = ("black", "replicate")


def crop_box(boxes, frame_w: int, frame_h: int, scale: float = 2.6, down: float = 0.3,
             margin: float = 0.15, min_side: int = 16) -> tuple:
    """One square crop box [x0, y0, x1, y1] (ints, source pixels) for a segment.

    `boxes` is (T, 4) face boxes [x0, y0, x1, y1] in source pixels, NaN rows without a face.
    With no face at all (should not happen for an accepted segment) the box is the largest
    centred square of the frame.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    ok = np.all(np.isfinite(b), axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if not ok.any():
        side = max(min_side, int(min(frame_w, frame_h)) // 2 * 2)
        x0 = (int(frame_w) - side) // 4 * 2
        y0 = (int(frame_h) - side) // 4 * 2
        return (x0, y0, x0 + side, y0 + side)
    b = b[ok]
    fh = float(np.median(b[:, 3] - b[:, 1]))
    cx = float(np.median((b[:, 0] + b[:, 2]) / 2))
    cy = float(np.median((b[:, 1] + b[:, 3]) / 2)) + down * fh
    lo = np.percentile(b[:, :2], 1, axis=0)      # smallest x0, y0 (robust)
    hi = np.percentile(b[:, 2:], 99, axis=0)     # largest x1, y1 (robust)
    half_motion = max(cx - lo[0], hi[0] - cx, cy - lo[1], hi[1] - cy) + margin * fh
    side = max(scale * fh, 2.0 * half_motion, float(min_side))
    # Never wider than the frame's short side unless the head motion needs it: sources that
    # are already tight face crops (HDTF / CelebV style) are used as they are rather than
    # shrunk into black borders.
    side = min(side, max(float(min(frame_w, frame_h)), 2.0 * half_motion, float(min_side)))
    side = 2 * int(math.ceil(side / 2 - 1e-6))     # even: yuv420p chroma planes crop exactly
    x0 = 2 * int(round((cx - side / 2) / 2))
    y0 = 2 * int(round((cy - side / 2) / 2))
    # moved inside the frame where it fits (padding only when it cannot fit)
    if side <= frame_w:
        x0 = min(max(x0, 0), (int(frame_w) - side) // 2 * 2)
    if side <= frame_h:
        y0 = min(max(y0, 0), (int(frame_h) - side) // 2 * 2)
    return (x0, y0, x0 + side, y0 + side)


def crop_plane(img: np.ndarray, box, size: int, pad: str = "black", fill=0) -> np.ndarray:
    """Cut `box` out of one image or plane (H, W[, C]), pad outside the frame (`fill` for
    "black"; edge pixels for "replicate"), resize to size x size. Area interpolation when
    shrinking (no aliasing), bicubic when enlarging. Only the crop is copied."""
    import cv2

    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 <= ix0 or iy1 <= iy0:  # the box misses the frame entirely
        return np.full((size, size) + img.shape[2:], fill, img.dtype)
    part = np.ascontiguousarray(img[iy0:iy1, ix0:ix1])
    borders = (iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1)   # top, bottom, left, right
    if any(borders):
        if pad == "black":
            part = cv2.copyMakeBorder(part, *borders, cv2.BORDER_CONSTANT, value=fill)
        else:
            part = cv2.copyMakeBorder(part, *borders, cv2.BORDER_REPLICATE)
    side = x1 - x0
    if side == size:
        return part
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(part, (size, size), interpolation=interp)


def crop_frame(rgb: np.ndarray, box, size: int, pad: str = "black") -> np.ndarray:
    """Cut `box` out of `rgb` (H, W, 3), padding outside the frame, and resize to size x size."""
    return crop_plane(rgb, box, size, pad, fill=(0, 0, 0))


def crop_i420(y: np.ndarray, u: np.ndarray, v: np.ndarray, box, size: int,
              pad: str = "black") -> np.ndarray:
    """Crop a yuv420p picture given as its planes (Y full, U/V half resolution; strided
    views are fine) with an even `box` and an even `size`: returns the (size * 3 / 2, size)
    I420 array that `av.VideoFrame.from_ndarray(..., format="yuv420p")` takes. Black is
    limited-range black (Y 16, U/V 128). No RGB round trip: what the encoder needs anyway."""
    x0, y0, x1, y1 = (int(b) for b in box)
    half = tuple(b // 2 for b in (x0, y0, x1, y1))
    planes = (crop_plane(y, (x0, y0, x1, y1), size, pad, fill=16),
              crop_plane(u, half, size // 2, pad, fill=128),
              crop_plane(v, half, size // 2, pad, fill=128))
    return np.concatenate([p.reshape(-1) for p in planes]).reshape(size * 3 // 2, size)


def landmarks_to_crop(landmarks, box, size: int) -> np.ndarray:
    """(T, P, 2|3) landmarks in source pixels -> (T, P, 2) float32 in crop pixels.

    Continuous coordinates (pixel i spans [i, i + 1)), the convention of the face-mesh
    landmarks (normalised coordinates x width). NaN stays NaN.
    """
    lm = np.asarray(landmarks, np.float32)
    x0, y0, x1, _ = (float(v) for v in box)
    s = size / (x1 - x0)
    out = np.empty(lm.shape[:-1] + (2,), np.float32)
    out[..., 0] = (lm[..., 0] - x0) * s
    out[..., 1] = (lm[..., 1] - y0) * s
    return out


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop (side = the short side) of an RGB uint8 image, resized to size x size
    (area when shrinking, bicubic when growing): uint8 (size, size, 3). The portrait of
    `ifmdm-infer`, the frames of `ifmdm-tune` and the pictures of `shard --images`."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    sq = rgb[y0:y0 + s, x0:x0 + s]
    if s != size:
        sq = cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
    return np.ascontiguousarray(sq)


ALPHA_BACKGROUND = (255, 255, 255)


def composite_alpha(rgba: np.ndarray, name=None) -> np.ndarray:
    """RGBA (H, W, 4), uint8 or uint16 -> uint8 RGB composited over ALPHA_BACKGROUND (white).
    The portrait of `ifmdm-infer` and the pictures of `shard --images`.

    The model never saw transparency (it trains on video frames), and the colour stored under
    fully transparent pixels is arbitrary (often black or leftover paint), so it is replaced by a
    stated, plain backdrop: out = a * rgb + (1 - a) * white, a = alpha / max. With `name` (the
    image's path), a transparent image is logged once."""
    scale = 65535.0 if rgba.dtype == np.uint16 else 255.0
    x = rgba.astype(np.float32) / scale
    a = x[..., 3:4]
    bg = np.asarray(ALPHA_BACKGROUND, np.float32) / 255.0
    out = x[..., :3] * a + bg * (1.0 - a)
    if name is not None and float(a.min()) < 1.0:
        logging.getLogger(__name__).warning("%s has transparent pixels: composited over white", name)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
