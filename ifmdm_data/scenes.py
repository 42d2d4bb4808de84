"""Scene-cut detection on the analysed frames (no extra decode).

A cut is a large change of the colour distribution between consecutive analysed frames:
half the L1 distance between their normalised HSV histograms (0 = same, 1 = disjoint) above
`threshold`, and well above the recent level of change (so steady motion is not a cut).
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np


def hsv_histogram(rgb: np.ndarray, bins=(16, 4, 4)) -> np.ndarray:
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(hist.sum(), 1.0)


class SceneCutDetector:
    def __init__(self, threshold: float = 0.35, history: int = 8, ratio: float = 3.0,
                 min_gap: int = 6):
        self.threshold = threshold
        self.min_gap = min_gap          # frames: a change this soon after a cut is a transition
        self.since_cut = 10 ** 9
        self.ratio = ratio
        self.recent = deque(maxlen=history)
        self.prev = None

    def __call__(self, rgb: np.ndarray) -> tuple[bool, float]:
        """Feed the next frame; returns (is_cut_before_this_frame, distance)."""
        h = hsv_histogram(rgb)
        if self.prev is None:
            self.prev = h
            return False, 0.0
        d = 0.5 * float(np.abs(h - self.prev).sum())
        self.prev = h
        level = float(np.median(self.recent)) if self.recent else 0.0
        cut = d > self.threshold and d > self.ratio * level and self.since_cut >= self.min_gap
        self.since_cut = 0 if cut else self.since_cut + 1
        if not cut:
            self.recent.append(d)
        return cut, d
