"""Per-frame signals from landmarks and pixels: pure numpy/OpenCV functions.

Conventions: landmarks are (P, 3) float32 in pixels of the analysis frame (z may be 0 for
2-D models); a `LandmarkScheme` names the indices. Face size is the inter-ocular distance
(outer eye corners, 3-D when depth is given), which is nearly invariant to head pose.
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np

from ifmdm_data.faces.backends.base import LandmarkScheme


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
    return cv2.warpAffine(gray, mouth_crop_matrix(lm, scheme, px), (px, px), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


def mouth_crop_matrix(lm: np.ndarray, scheme: LandmarkScheme, px: int) -> np.ndarray:
    """The (2, 3) affine map from image pixels to the (px, px) upright mouth crop of
    `mouth_crop` (side 0.9 inter-ocular distances, centred on the lips)."""
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
    return m


def crop_energy(prev: Optional[np.ndarray], cur: np.ndarray) -> float:
    """Mean absolute difference of two crops after removing their mean brightness, in [0, 1]."""
    if prev is None:
        return float("nan")
    a = prev.astype(np.float32) - prev.mean()
    b = cur.astype(np.float32) - cur.mean()
    return float(np.mean(np.abs(a - b)) / 255.0)


def luma_plane(frame) -> Optional[np.ndarray]:
    """A zero-copy (H, W) view of the luma plane of a decoded PyAV frame (8-bit: uint8,
    9-16-bit little-endian: uint16), or None for packed / RGB formats."""
    fmt = frame.format
    name = fmt.name
    if not (name.startswith(("yuv", "yuvj", "nv", "gray")) and not name.endswith("be")):
        return None
    comps = fmt.components
    if not comps or comps[0].plane != 0:
        return None
    p = frame.planes[0]
    dt = np.uint8 if comps[0].bits <= 8 else np.uint16
    w, h = frame.width, frame.height
    arr = np.frombuffer(p, dt)
    stride = p.line_size // arr.itemsize
    if arr.size < stride * h or stride < w:
        return None
    return arr[:stride * h].reshape(h, stride)[:, :w]


class DenseMouth:
    """Lip motion on EVERY decoded frame, not only the analysed ones (issue 11: sampled at the
    6.25 fps analysis rate, the 4-5 Hz syllable rhythm is aliased and the AV-sync score is
    near chance).

    `set_landmarks(lm)` (after each analysed frame; None when the mesh found no face) sets the
    crop transform from those landmarks (analysis-frame pixels, rotated display geometry),
    mapped to the decoded frame's pixels. `feed(t, frame)` warps a (px, px) upright mouth crop
    (`mouth_crop_matrix`) straight out of the decoded frame's luma plane with the latest
    transform (held between analysed frames) and records the motion energy: the mean absolute
    difference to the previous decoded frame's crop (both brightness-centred, in [0, 1]) per
    second. Right after a transform update the frame is warped once more with the previous
    transform for the difference, so a box update is not counted as lip motion. Cost: one
    `cv2.warpAffine` of px*px pixels a frame, two after an analysed frame (~0.1 ms a frame in
    all). Frames before the first face, after a frame without one, or whose pixel format has
    no luma plane get no value.
    """

    def __init__(self, scheme: LandmarkScheme, px: int, analysis_size: Tuple[int, int],
                 rotation: int = 0):
        self.scheme = scheme
        self.px = int(px)
        self.aw, self.ah = analysis_size          # (w, h) of the analysed (rotated) frames
        self.rotation = int(rotation or 0) % 360
        self._lm: Optional[np.ndarray] = None     # landmarks in rotated analysis pixels
        self._m: Optional[np.ndarray] = None
        self._m_for: Tuple[int, int] = (0, 0)     # decoded size the matrix was built for
        self._prev = None                         # (t, crop, matrix, luma shape) of the previous frame
        self._bits = 8                            # luma bit depth of the frames being fed
        self.t: list = []
        self.energy: list = []

    def set_landmarks(self, lm: Optional[np.ndarray]) -> None:
        self._lm = None if lm is None else np.asarray(lm[:, :2], np.float64)
        self._m = None
        if lm is None:
            self._prev = None

    def _to_decoded(self, pts: np.ndarray, w: int, h: int) -> np.ndarray:
        """Rotated analysis pixels -> pixels of the unrotated decoded (w, h) frame (the inverse
        of `video.iter_frames`' np.rot90(k=-rotation // 90) and scaling)."""
        x, y = pts[:, 0], pts[:, 1]
        r = self.rotation
        if r == 90:       # analysis = decoded turned clockwise: x' = h - y, y' = x
            ux, uy, uw, uh = y, self.aw - x, self.ah, self.aw
        elif r == 180:
            ux, uy, uw, uh = self.aw - x, self.ah - y, self.aw, self.ah
        elif r == 270:    # counter-clockwise: x' = y, y' = w - x
            ux, uy, uw, uh = self.ah - y, x, self.ah, self.aw
        else:
            ux, uy, uw, uh = x, y, self.aw, self.ah
        return np.stack([ux * (w / uw), uy * (h / uh)], 1)

    def _crop(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        c = cv2.warpAffine(y, m, (self.px, self.px), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if y.dtype != np.uint8:                   # > 8-bit luma: to the 8-bit scale
            c *= 255.0 / float(np.iinfo(y.dtype).max if self._bits >= 16 else (1 << self._bits) - 1)
        return c - c.mean()

    def feed(self, t: float, frame) -> None:
        if self._lm is None:
            return
        y = luma_plane(frame)
        if y is None:
            self._prev = None
            return
        self._bits = int(frame.format.components[0].bits)
        h, w = y.shape
        if self._m is None or self._m_for != (w, h):
            full = np.zeros((len(self._lm), 3), np.float64)
            full[:, :2] = self._to_decoded(self._lm, w, h)
            self._m = mouth_crop_matrix(full, self.scheme, self.px)
            self._m_for = (w, h)
        crop = self._crop(y, self._m)
        prev = self._prev
        if prev is not None and t > prev[0] and prev[3] == y.shape:
            # the box was updated since the previous frame: this frame again with the old box
            d = crop - prev[1] if prev[2] is self._m else self._crop(y, prev[2]) - prev[1]
            self.t.append(float(t))
            self.energy.append(float(np.mean(np.abs(d))) / 255.0 / (t - prev[0]))
        self._prev = (float(t), crop, self._m, y.shape)

    def close(self) -> Tuple[np.ndarray, np.ndarray]:
        """(times (N,), motion energy (N,)) collected since the last close; starts anew."""
        out = np.asarray(self.t, np.float64), np.asarray(self.energy, np.float64)
        self.t, self.energy = [], []
        self._lm, self._m, self._prev = None, None, None
        return out


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
