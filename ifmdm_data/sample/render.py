"""The sample set's pictures: the two identities (scikit-image's astronaut photo, matted and
lip-rigged once with mediapipe), frames with a given mouth opening and head pose, and the
face-free pan (`ifmdm-data sample`).

Frames are RGB uint8 (size, size, 3); mouth opening is a fraction of the inter-ocular distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import cv2
import numpy as np

MOUTH_RGB = (58.0, 16.0, 22.0)
# mediapipe face-mesh indices (478-point topology)
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
EYE_OUTER = (33, 263)
CHIN = 152


@dataclass
class _Face:
    """One identity, prepared for rendering at the output size."""

    rgb: np.ndarray          # (S, S, 3) float32 0..255, the person photo
    mask: np.ndarray         # (S, S) float32 person matte
    background: np.ndarray   # (S, S, 3) static background with the person filled in
    center: tuple            # face centre (rotation centre), pixels
    iod: float               # inter-ocular distance, pixels
    lip0: np.ndarray         # (S, S) downward shift at rest (closes the lips)
    lip1: np.ndarray         # (S, S) downward shift per pixel of mouth opening
    upper: np.ndarray        # (S,) upper inner-lip y per column
    profile: np.ndarray      # (S,) opening profile per column, 0 outside the mouth


def _source_landmarks(rgb: np.ndarray) -> np.ndarray:
    """478 face-mesh landmarks (x, y pixels) of the one face in a still image."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                         refine_landmarks=True) as fm:
        res = fm.process(np.ascontiguousarray(rgb))
    if not res.multi_face_landmarks:
        raise RuntimeError("face mesh found no face on the sample photo")
    h, w = rgb.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark])


def _person_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft person matte from mediapipe selfie segmentation."""
    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        m = seg.process(np.ascontiguousarray(rgb)).segmentation_mask
    return cv2.GaussianBlur(np.clip(m, 0, 1).astype(np.float32), (0, 0), 1.5)


def _fill_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background with the person region filled by normalised Gaussian convolution.

    Fine to coarse: each wider pass fills only what the narrower ones could not reach.
    """
    keep = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) < 0.05).astype(np.float32)
    out = rgb * keep[..., None]
    done = keep.copy()
    for sigma in (6.0, 18.0, 54.0, 160.0):
        num = cv2.GaussianBlur(rgb * keep[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(keep, (0, 0), sigma)
        new = (done == 0) & (den > 0.02)
        out[new] = num[new] / den[new, None]
        done[new] = 1
    return out.astype(np.float32)


def _lip_rig(lm: np.ndarray, size: int) -> dict:
    """Displacement fields that close the lips at rest and open mouth and jaw per pixel."""
    iod = float(np.linalg.norm(lm[EYE_OUTER[0]] - lm[EYE_OUTER[1]]))
    up, lo = lm[list(UPPER_INNER_LIP)], lm[list(LOWER_INNER_LIP)]
    xs = np.arange(size, dtype=np.float32)
    yu = np.interp(xs, *up[np.argsort(up[:, 0])].T)
    yl = np.interp(xs, *lo[np.argsort(lo[:, 0])].T)
    xl, xr = up[:, 0].min(), up[:, 0].max()
    xc, hw = (xl + xr) / 2, (xr - xl) / 2
    inside = (xs >= xl) & (xs <= xr)
    gap = np.where(inside, np.maximum(yl - yu, 0), 0.0)
    gap_c = float(np.interp(xc, xs, gap))
    profile = np.clip(1 - ((xs - xc) / hw) ** 2, 0, 1) ** 0.6
    ys = np.arange(size, dtype=np.float32)[:, None]
    below = ys - yu[None, :]
    step = np.clip(below + 0.5, 0, 1)
    t = np.clip(below / (0.35 * iod), 0, 1)
    t = t * t * (3 - 2 * t)
    jaw = np.exp(-0.5 * ((xs - xc) / iod) ** 2)[None, :]
    chin = lm[CHIN, 1] + 0.15 * iod
    fade = np.clip((ys - chin) / (0.75 * iod), 0, 1)
    fade = 0.5 + 0.5 * np.cos(np.pi * fade)
    lip0 = -step * fade * (gap[None, :] * (1 - t) + gap_c * jaw * t)
    lip1 = step * fade * (profile[None, :] * (1 - t) + jaw * t)
    return dict(iod=iod, lip0=lip0.astype(np.float32), lip1=lip1.astype(np.float32),
                upper=yu.astype(np.float32), profile=profile.astype(np.float32))


def _recolour(rgb: np.ndarray, mask: np.ndarray, chin_y: float) -> np.ndarray:
    """Second identity's colours: hue-rotated background and suit, face and hair untouched."""
    hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 95) % 180
    hsv[..., 1] = (hsv[..., 1] * 0.8 + 40).astype(np.uint8)
    rot = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    ys = np.arange(rgb.shape[0], dtype=np.float32)[:, None]
    suit = np.clip((ys - chin_y) / 12.0, 0, 1)
    w = (1 - mask) + mask * suit
    return rgb * (1 - w[..., None]) + rot * w[..., None]


def make_faces(size: int) -> tuple:
    """Both identities (the astronaut and its mirrored, recoloured twin) at `size`."""
    from skimage import data

    photo = data.astronaut()
    lm = _source_landmarks(photo)
    mask = _person_mask(photo)
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    side = 2.7 * (y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.15 * (y1 - y0)
    ox = float(np.clip(cx - side / 2, 0, photo.shape[1] - side))
    oy = float(np.clip(cy - side / 2, 0, photo.shape[0] - side))
    s = size / side
    m = np.array([[s, 0, -ox * s], [0, s, -oy * s]], np.float32)
    rgb = cv2.warpAffine(photo.astype(np.float32), m, (size, size), flags=cv2.INTER_AREA)
    msk = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR)
    lms = (lm - (ox, oy)) * s
    mirror = lms.copy()
    mirror[:, 0] = size - 1 - mirror[:, 0]
    twin_mask = np.ascontiguousarray(msk[:, ::-1])
    iod = float(np.linalg.norm(lms[EYE_OUTER[0]] - lms[EYE_OUTER[1]]))
    twin = _recolour(rgb[:, ::-1], twin_mask, float(mirror[CHIN, 1]) + 0.3 * iod)
    return _face(rgb, msk, lms, size), _face(twin, twin_mask, mirror, size)


def _face(rgb: np.ndarray, mask: np.ndarray, lm: np.ndarray, size: int) -> _Face:
    """Prepare one identity: static background, rotation centre and lip rig."""
    rgb = np.ascontiguousarray(rgb, np.float32)
    center = tuple(float(v) for v in (lm.min(0) + lm.max(0)) / 2)
    return _Face(rgb=rgb, mask=mask, background=_fill_background(rgb, mask), center=center,
                 **_lip_rig(lm, size))


def _render(face: _Face, opening: float, pose: Optional[np.ndarray]) -> np.ndarray:
    """One frame: mouth opened by `opening` (fraction of IOD), person moved by `pose`.

    `pose` is (angle_deg, tx_px, ty_px, scale) or None for the photo's own pose.
    """
    size = face.rgb.shape[0]
    px = opening * face.iod
    grid = np.arange(size, dtype=np.float32)
    map_x = np.broadcast_to(grid[None, :], (size, size))
    map_y = grid[:, None] - (face.lip0 + px * face.lip1)
    img = cv2.remap(face.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if px > 0.05:
        y0 = int(max(face.upper.min() - 1, 0))
        y1 = int(min(face.upper.max() + px + 2, size))
        ys = grid[y0:y1, None]
        lower = face.upper + px * face.profile
        alpha = (np.clip(ys - face.upper + 0.5, 0, 1) * np.clip(lower - ys + 0.5, 0, 1)
                 * (face.profile > 0))[..., None]
        shade = np.clip((ys - face.upper) / max(px, 1.0), 0, 1)[..., None] * 0.5 + 0.75
        img[y0:y1] = img[y0:y1] * (1 - alpha) + alpha * np.array(MOUTH_RGB, np.float32) * shade
    if pose is None:
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)
    angle, tx, ty, scale = (float(v) for v in pose)
    m = cv2.getRotationMatrix2D(face.center, angle, scale)
    m[:, 2] += (tx, ty)
    fg = cv2.warpAffine(np.dstack([img, face.mask]), m, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    a = fg[..., 3:4]
    out = fg[..., :3] * a + face.background * (1 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _wave(rng: np.random.Generator, n: int, fps: float, amplitude: float) -> np.ndarray:
    """A smooth random signal: three low-frequency sinusoids, peak |value| = amplitude."""
    t = np.arange(n) / fps
    x = np.zeros(n)
    for f, w in ((0.25, 1.0), (0.45, 0.6), (0.8, 0.3)):
        x += w * np.sin(2 * np.pi * f * rng.uniform(0.8, 1.25) * t + rng.uniform(0, 2 * np.pi))
    return amplitude * x / np.abs(x).max()


def head_track(rng: np.random.Generator, n: int, fps: float, size: int,
                angle: float, shift: float, zoom: float) -> np.ndarray:
    """(n, 4) poses: rotation (deg), x and y shift (px), scale."""
    return np.stack([_wave(rng, n, fps, angle), _wave(rng, n, fps, shift * size),
                     _wave(rng, n, fps, 0.6 * shift * size), 1 + _wave(rng, n, fps, zoom)], 1)


def face_frames(face: _Face, openings: np.ndarray,
            poses: Optional[np.ndarray]) -> Iterator[np.ndarray]:
    """Render one frame per mouth opening; `poses` None keeps the head perfectly still."""
    for i, o in enumerate(openings):
        yield _render(face, float(o), None if poses is None else poses[i])


def chain(*parts: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frames of several scenes, one after another (hard cuts between them)."""
    for part in parts:
        yield from part


def pan(size: int, n: int) -> Iterator[np.ndarray]:
    """A slow, eased horizontal pan over the coffee cup photo (no face anywhere)."""
    from skimage import data

    photo = data.coffee().astype(np.float32)
    h, w = photo.shape[:2]
    side = 0.9 * h
    s = size / side
    for i in range(n):
        u = 0.5 - 0.5 * np.cos(np.pi * i / max(n - 1, 1))
        x0, y0 = u * (w - side), 0.05 * h
        m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float32)
        yield np.clip(cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR) + 0.5,
                      0, 255).astype(np.uint8)
