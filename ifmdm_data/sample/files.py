"""Write the sample set's files atomically: H.264 / AAC mp4 clips and labels.csv.

Every file is written to a temporary name in the same folder, then renamed.
"""
from __future__ import annotations

import csv
import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ifmdm_data.sample.audio import SAMPLE_RATE

LABEL_COLUMNS = ("file", "segment", "start_s", "end_s", "expected", "stage2", "description")


def write_mp4(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: float,
               audio: Optional[np.ndarray]) -> None:
    """H.264 yuv420p (+ AAC mono) mp4, written to a temporary name and renamed."""
    import av

    tmp = path.with_name(f".{path.name}.tmp")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=rate)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.options = {"crf": "18", "preset": "fast", "g": str(max(int(round(fps)), 1)),
                          "threads": "1"}  # a fixed thread count keeps x264 deterministic
            as_ = None
            if audio is not None:
                as_ = out.add_stream("aac", rate=SAMPLE_RATE)
                as_.layout, as_.bit_rate = "mono", 64000
            pos = 0
            for i, frame in enumerate(frames):
                out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                if as_ is not None:
                    end = min(int(round((i + 1) * SAMPLE_RATE / fps)), len(audio))
                    if end > pos:
                        out.mux(as_.encode(_audio_frame(audio[pos:end], pos)))
                        pos = end
            out.mux(vs.encode())
            if as_ is not None:
                if pos < len(audio):
                    out.mux(as_.encode(_audio_frame(audio[pos:], pos)))
                out.mux(as_.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _audio_frame(chunk: np.ndarray, pts: int):
    """A mono float planar PyAV audio frame starting at sample `pts`."""
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None], np.float32),
                                       format="fltp", layout="mono")
    frame.sample_rate, frame.pts = SAMPLE_RATE, pts
    return frame


def write_labels(path: Path, rows: Sequence[tuple]) -> None:
    """labels.csv, written to a temporary name and renamed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
