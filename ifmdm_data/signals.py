"""Per-frame signals from landmarks and pixels: pure numpy/OpenCV functions.

Conventions: landmarks are (P, 3) float32 in pixels of the analysis frame (z may be 0 for
2-D models); a `LandmarkScheme` names the indices. Face size is the inter-ocular distance
(outer eye corners, 3-D when depth is given), which is nearly invariant to head pose.
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

from .backends.base import LandmarkScheme


# ---------------------------------------------------------------------------------------------
# Rigid alignment and head pose
# ---------------------------------------------------------------------------------------------

def similarity_align(src: np.ndarray, dst: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity transform dst ~ s * R @ src + t (Umeyama 1991).

    src, dst: (N, d) with d = 2 or 3. Returns (s, R (d, d), t (d,)).
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(len(sig))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (xs ** 2).sum() / len(src)
    s = float((sig * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - s * r @ mu_s
    return s, r, t


def euler_deg(r: np.ndarray) -> Tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 3x3 rotation (y-x-z order); 2x2: (0, 0, roll)."""
    if r.shape == (2, 2):
        return 0.0, 0.0, float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def has_depth(lm: np.ndarray) -> bool:
    return lm.shape[1] == 3 and bool(np.any(lm[:, 2] != 0))


def face_size(lm: np.ndarray, scheme: LandmarkScheme) -> float:
    """Inter-ocular distance (outer corners), in pixels."""
    a, b = scheme.eye_outer
    pts = lm if has_depth(lm) else lm[:, :2]
    return float(np.linalg.norm(pts[a] - pts[b]))


def head_pose(lm: np.ndarray, ref: np.ndarray, scheme: LandmarkScheme) -> np.ndarray:
    """Rigid pose of `lm` relative to the reference shape `ref` (same scheme).

    Returns [yaw, pitch, roll (deg), tx, ty (face sizes), log_scale]: the similarity transform
    that maps the reference's rigid points onto this frame's.
    """
    idx = list(scheme.rigid)
    d = 3 if has_depth(lm) and has_depth(ref) else 2
    s, r, t = similarity_align(ref[idx, :d], lm[idx, :d])
    yaw, pitch, roll = euler_deg(r)
    fs = face_size(ref, scheme) or 1.0
    centre = ref[idx, :d].mean(0)
    shift = (s * r @ centre + t - centre)[:2] / fs
    return np.array([yaw, pitch, roll, shift[0], shift[1], np.log(max(s, 1e-6))], np.float32)


def pose_normalise(lm: np.ndarray, ref: np.ndarray, scheme: LandmarkScheme) -> np.ndarray:
    """Landmarks mapped into the reference frame by the rigid-point similarity (removes pose)."""
    idx = list(scheme.rigid)
    d = 3 if has_depth(lm) and has_depth(ref) else 2
    s, r, t = similarity_align(lm[idx, :d], ref[idx, :d])
    out = lm.copy()
    out[:, :d] = (s * (r @ lm[:, :d].T)).T + t
    return out


def rigid_displacement(lms: np.ndarray, scheme: LandmarkScheme, sizes: np.ndarray) -> np.ndarray:
    """Per-frame RMS image displacement of the rigid points from their mean position, in face
    sizes. lms: (T, P, 3) with NaN rows for missing frames; sizes: (T,). Returns (T,)."""
    idx = list(scheme.rigid)
    pts = lms[:, idx, :2]                                  # (T, K, 2)
    mean = np.nanmean(pts, axis=0)                         # (K, 2)
    fs = np.nanmedian(sizes) if np.any(np.isfinite(sizes)) else np.nan
    return np.sqrt(np.mean(np.sum((pts - mean) ** 2, -1), -1)) / fs


# ---------------------------------------------------------------------------------------------
# Mouth and eyes
# ---------------------------------------------------------------------------------------------

def mouth_opening(lm_norm: np.ndarray, scheme: LandmarkScheme, ref_size: float) -> float:
    """Mean inner-lip gap of pose-normalised landmarks, in face sizes (0 = closed)."""
    gaps = [np.linalg.norm(lm_norm[a, :2] - lm_norm[b, :2]) for a, b in scheme.inner_lips]
    return float(np.mean(gaps) / max(ref_size, 1e-6))


def eye_openness(lm: np.ndarray, scheme: LandmarkScheme) -> float:
    """Mean over both eyes of lid gap / eye width."""
    vals = []
    for (top, bot), outer, inner in zip(scheme.eye_lids, scheme.eye_outer, scheme.eye_inner):
        width = np.linalg.norm(lm[outer, :2] - lm[inner, :2])
        vals.append(np.linalg.norm(lm[top, :2] - lm[bot, :2]) / max(width, 1e-6))
    return float(np.mean(vals))


def mouth_crop(gray: np.ndarray, lm: np.ndarray, scheme: LandmarkScheme, px: int) -> np.ndarray:
    """A (px, px) grayscale crop of the mouth, rotated upright and scaled by face size, so
    that crops of consecutive frames differ by lip motion and not by head motion."""
    a, b = scheme.eye_outer
    eye_vec = lm[b, :2] - lm[a, :2]
    ang = np.arctan2(eye_vec[1], eye_vec[0])
    fs = max(float(np.linalg.norm(eye_vec)), 1e-3)
    centre = lm[list(scheme.lips), :2].mean(0)
    side = 0.9 * fs                                        # crop side in image pixels
    scale = px / side
    c, s = np.cos(-ang) * scale, np.sin(-ang) * scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0]], np.float32)
    m[:, 2] = np.array([px / 2, px / 2]) - m[:, :2] @ centre
    return cv2.warpAffine(gray, m, (px, px), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def crop_energy(prev: Optional[np.ndarray], cur: np.ndarray) -> float:
    """Mean absolute difference of two crops after removing their mean brightness, in [0, 1]."""
    if prev is None:
        return float("nan")
    a = prev.astype(np.float32) - prev.mean()
    b = cur.astype(np.float32) - cur.mean()
    return float(np.mean(np.abs(a - b)) / 255.0)


# ---------------------------------------------------------------------------------------------
# Face box, sharpness, camera motion
# ---------------------------------------------------------------------------------------------

def landmark_box(lm: np.ndarray, scheme: LandmarkScheme) -> np.ndarray:
    """[x0, y0, x1, y1] around the face contour, in pixels (may extend outside the frame)."""
    pts = lm[list(scheme.face_oval), :2]
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return np.array([x0, y0, x1, y1], np.float32)


def out_of_frame(box: np.ndarray, w: int, h: int, tol: float = 0.05) -> bool:
    """True when more than `tol` of the box's width/height lies outside the frame."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    return bool(box[0] < -tol * bw or box[1] < -tol * bh or box[2] > w + tol * bw or box[3] > h + tol * bh)


def sharpness(gray: np.ndarray, box: np.ndarray, px: int) -> float:
    """Variance of the Laplacian of the face crop resized to (px, px)."""
    h, w = gray.shape
    x0, y0 = int(max(0, box[0])), int(max(0, box[1]))
    x1, y1 = int(min(w, box[2])), int(min(h, box[3]))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return float("nan")
    crop = cv2.resize(gray[y0:y1, x0:x1], (px, px), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(crop, cv2.CV_32F).var())


class CameraMotion:
    """Background motion between consecutive analysed frames: median Lucas-Kanade flow of
    corners outside the person mask, as a fraction of the frame diagonal."""

    def __init__(self, width: int = 160):
        self.width = width
        self.prev = None

    def reset(self) -> None:
        self.prev = None

    def __call__(self, gray: np.ndarray, person: Optional[np.ndarray]) -> float:
        h, w = gray.shape
        s = self.width / w
        small = cv2.resize(gray, (self.width, max(8, int(round(h * s)))), interpolation=cv2.INTER_AREA)
        bg = np.full(small.shape, 255, np.uint8)
        if person is not None:
            pm = cv2.resize(person, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
            bg[cv2.dilate((pm > 0.3).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0] = 0
        prev, self.prev = self.prev, (small, bg)
        if prev is None:
            return float("nan")
        p_small, p_bg = prev
        pts = cv2.goodFeaturesToTrack(p_small, maxCorners=80, qualityLevel=0.01, minDistance=5,
                                      mask=p_bg & bg)
        if pts is None or len(pts) < 8:
            return 0.0  # a background without texture shows no camera motion
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(p_small, small, pts, None, winSize=(15, 15), maxLevel=3)
        ok = st.ravel() == 1
        if ok.sum() < 8:
            return float("nan")
        flow = (nxt[ok] - pts[ok]).reshape(-1, 2)
        diag = float(np.hypot(*small.shape))
        return float(np.linalg.norm(np.median(flow, axis=0)) / diag)
