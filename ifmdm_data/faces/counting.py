"""Count every face in a frame: the detector's pass plus a tiled second pass for small faces.

Works with any `Detector` role (ifmdm_data.faces.backends.base): (K, 5) float32 boxes
[x0, y0, x1, y1, score] in pixels of the frame.
"""
from __future__ import annotations

import numpy as np

# Second face-counting pass (issue 11, small faces). A full-range detector sees the frame
# shrunk to its input size (mediapipe: 192 px), so a ~30 px face in a 640x360 frame is ~9 px
# there and is missed. When the first pass finds no face, or only faces shorter than
# SECOND_PASS_SMALL_FRAC of the frame's short side, the detector runs again on 2x2 overlapping
# tiles (each TILE_FRAC of the width and height, so faces up to ~0.2 of a side lie wholly in
# one tile) and faces are counted from the union, overlapping boxes merged. The filter takes
# both from its config (analysis.second_pass_small_frac / tile_frac); these are the defaults.
SECOND_PASS_SMALL_FRAC = 0.25
TILE_FRAC = 0.6
DEDUPE_IOU = 0.3          # boxes overlapping more than this (IoU) ...
DEDUPE_COVER = 0.6        # ... or covering this much of the smaller one are the same face


def dedupe_boxes(boxes: np.ndarray, iou: float = DEDUPE_IOU, cover: float = DEDUPE_COVER) -> np.ndarray:
    """(K, 5) [x0, y0, x1, y1, score] -> the boxes kept by greedy suppression, best score first:
    a box is dropped when its IoU with a kept box exceeds `iou` or the intersection covers more
    than `cover` of the smaller of the two (a face cut by a tile edge gives a partial box)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    kept: list = []
    for b in boxes[np.argsort(-boxes[:, 4], kind="stable")]:
        a_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
        dup = False
        for k in kept:
            iw = min(b[2], k[2]) - max(b[0], k[0])
            ih = min(b[3], k[3]) - max(b[1], k[1])
            inter = max(iw, 0) * max(ih, 0)
            a_k = max(k[2] - k[0], 0) * max(k[3] - k[1], 0)
            union = a_b + a_k - inter
            if (union > 0 and inter / union > iou) or inter > cover * max(min(a_b, a_k), 1e-6):
                dup = True
                break
        if not dup:
            kept.append(b)
    return np.asarray(kept, np.float32).reshape(-1, 5)


def detect_faces(detector, rgb: np.ndarray, second_pass: bool = True,
                 small_frac: float = SECOND_PASS_SMALL_FRAC, tile_frac: float = TILE_FRAC) -> np.ndarray:
    """Every face in `rgb` (K, 5), with the tiled second pass for small and secondary faces
    (see SECOND_PASS_SMALL_FRAC). `detector`: a `Detector` role. Costs 4 extra detector calls
    on frames that need it."""
    boxes = np.asarray(detector.detect(rgb), np.float32).reshape(-1, 5)
    h, w = rgb.shape[:2]
    if not second_pass or (len(boxes) and (boxes[:, 3] - boxes[:, 1]).max() >= small_frac * min(h, w)):
        return boxes
    th, tw = int(round(h * tile_frac)), int(round(w * tile_frac))
    found = [boxes]
    for y0 in (0, h - th):
        for x0 in (0, w - tw):
            b = np.asarray(detector.detect(np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])),
                           np.float32).reshape(-1, 5).copy()
            b[:, [0, 2]] += x0
            b[:, [1, 3]] += y0
            found.append(b)
    return dedupe_boxes(np.concatenate(found))
