"""Face landmarks of frame sequences and the audio-visual agreement (av_corr) of the talking-head evaluation.

`MeshLandmarks` runs MediapipeMesh over a clip (None per frame without a face; all None when
mediapipe is unavailable). `mouth_series` is the data filter's mouth opening per frame,
pose-normalised against the clip's median face; `av_agreement` is the filter's
`ifmdm_data.media.avsync.av_sync` of that series against the speech envelope at the frame times.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional

import numpy as np

from ifmdm_data.faces.syncnet import AUDIO_RATE

log = logging.getLogger("ifmdm_model")


class MeshLandmarks:
    """MediapipeMesh landmarks of a frame sequence (None when mediapipe is unavailable)."""

    def __init__(self):
        try:
            from ifmdm_data.faces.backends.mediapipe_backend import MediapipeMesh
            self.mesh = MediapipeMesh()
        except Exception as e:  # noqa: BLE001
            log.warning("mediapipe face mesh unavailable (%s): no av_corr, no face alignment for CSIM, "
                        "no face / mouth crops for LSE (whole-frame fallbacks)", e)
            self.mesh = None

    def landmarks(self, frames) -> List[Optional[np.ndarray]]:
        if self.mesh is None:
            return [None] * len(frames)
        self.mesh.reset()
        return [self.mesh.landmarks(f) for f in frames]

    def close(self):
        if self.mesh is not None:
            self.mesh.close()


def mouth_series(lms: List[Optional[np.ndarray]], scheme) -> np.ndarray:
    """The filter's mouth opening per frame (NaN without a face)."""
    from ifmdm_data.faces import signals as sig
    out = np.full(len(lms), np.nan)
    have = [lm for lm in lms if lm is not None]
    if len(have) < 2:
        return out
    ref = np.nanmedian(np.stack(have), axis=0)
    ref_size = sig.face_size(ref, scheme)
    for i, lm in enumerate(lms):
        if lm is not None:
            out[i] = sig.mouth_opening(sig.pose_normalise(lm, ref, scheme), scheme, ref_size)
    return out


def av_agreement(mouth: np.ndarray, wav: np.ndarray, fps: float) -> Optional[float]:
    """The filter's av_corr of a mouth series (one value per frame at `fps`) against the 16 kHz
    speech `wav` (minimum overlap min(2 s, half the clip)); None when it is undefined."""
    from ifmdm_data.media.avsync import av_sync
    from ifmdm_data.media.loudness import envelope
    n = len(mouth)
    env = envelope(wav, AUDIO_RATE, np.arange(n) / fps)
    r = av_sync(mouth, env, fps, min_overlap_s=min(2.0, 0.5 * n / fps))
    return _num(r["av_corr"])


def _num(v) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None
