"""Scene-cut detection on every decoded frame (no extra decode, no full-size conversion).

A cut is a large change of the colour distribution between consecutive frames: half the L1
distance between their normalised HSV histograms (0 = same, 1 = disjoint) above `threshold`,
and well above the recent level of change (so steady motion is not a cut).

`analyse` feeds the detector every frame the decoder produces (with `skip_nonref`, every
reference frame), not only the analysis-rate frames: cut times are then exact to a frame
or two whatever the analysis rate, and the histogram comes from a ~64 px strided view of the
YUV planes (`frame_histogram`, ~0.1 ms a frame at any resolution).
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import cv2
import numpy as np

BINS = (16, 4, 4)
_THUMB = 64
# planar 8-bit YUV formats whose chroma planes are subsampled by (sx, sy)
_PLANAR_YUV = {"yuv420p": (2, 2), "yuvj420p": (2, 2), "yuv422p": (2, 1), "yuvj422p": (2, 1),
               "yuv444p": (1, 1), "yuvj444p": (1, 1)}


def _hist_of_rgb(rgb: np.ndarray, bins=BINS) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(hist.sum(), 1.0)


def hsv_histogram(rgb: np.ndarray, bins=BINS) -> np.ndarray:
    """Normalised HSV histogram of an RGB frame (H, W, 3) uint8, from a ~64 px thumbnail."""
    step = max(1, min(rgb.shape[0], rgb.shape[1]) // (2 * _THUMB))
    small = cv2.resize(rgb[::step, ::step], (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
    return _hist_of_rgb(small, bins)


def _plane(frame, i: int, h: int, w: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]


def frame_histogram(frame, bins=BINS) -> np.ndarray:
    """`hsv_histogram` of a decoded PyAV VideoFrame without converting the whole frame: a
    strided ~64 px view of its Y, U and V planes is converted (planar 8-bit YUV); other
    pixel formats are scaled to 64 x 64 RGB by swscale."""
    sub = _PLANAR_YUV.get(frame.format.name)
    if sub is None:
        return _hist_of_rgb(frame.to_ndarray(format="rgb24", width=_THUMB, height=_THUMB), bins)
    sx, sy = sub
    W, H = frame.width, frame.height
    cw, ch = -(-W // sx), -(-H // sy)
    step = max(1, min(cw, ch) // _THUMB)                    # chroma-plane stride
    u = _plane(frame, 1, ch, cw)[::step, ::step]
    v = _plane(frame, 2, ch, cw)[::step, ::step]
    y = _plane(frame, 0, H, W)[::step * sy, ::step * sx]
    h2, w2 = min(u.shape[0], y.shape[0]) // 2 * 2, min(u.shape[1], y.shape[1]) // 2 * 2
    if h2 < 2 or w2 < 2:
        return _hist_of_rgb(frame.to_ndarray(format="rgb24", width=_THUMB, height=_THUMB), bins)
    # one sample of U/V per Y sample: build a 4:2:0 thumbnail from every second chroma sample
    i420 = np.concatenate([np.ascontiguousarray(y[:h2, :w2]).ravel(),
                           np.ascontiguousarray(u[:h2:2, :w2:2]).ravel(),
                           np.ascontiguousarray(v[:h2:2, :w2:2]).ravel()]).reshape(h2 * 3 // 2, w2)
    return _hist_of_rgb(cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420), bins)


class SceneCutDetector:
    """Feed frames in order; a cut is reported on the first frame of the new scene.

    `min_gap` (frames) or `min_gap_s` (seconds, when times are given): a change this soon
    after a cut is part of a transition, not a second cut.
    """

    def __init__(self, threshold: float = 0.35, history: int = 8, ratio: float = 3.0,
                 min_gap: int = 6, min_gap_s: Optional[float] = None):
        self.threshold = threshold
        self.min_gap = min_gap
        self.min_gap_s = min_gap_s
        self.since_cut = 10 ** 9
        self.last_cut_t = -float("inf")
        self.ratio = ratio
        self.recent = deque(maxlen=history)
        self.prev = None

    def feed(self, hist: np.ndarray, t: Optional[float] = None) -> tuple[bool, float]:
        """Next frame's histogram (and time); returns (is_cut_before_this_frame, distance)."""
        if self.prev is None:
            self.prev = hist
            return False, 0.0
        d = 0.5 * float(np.abs(hist - self.prev).sum())
        self.prev = hist
        level = float(np.median(self.recent)) if self.recent else 0.0
        if self.min_gap_s is not None and t is not None:
            far = t - self.last_cut_t >= self.min_gap_s
        else:
            far = self.since_cut >= self.min_gap
        cut = d > self.threshold and d > self.ratio * level and far
        self.since_cut = 0 if cut else self.since_cut + 1
        if cut and t is not None:
            self.last_cut_t = t
        if not cut:
            self.recent.append(d)
        return cut, d

    def __call__(self, rgb: np.ndarray) -> tuple[bool, float]:
        """Feed the next RGB frame; returns (is_cut_before_this_frame, distance)."""
        return self.feed(hsv_histogram(rgb))
