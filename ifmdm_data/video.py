"""Sequential decode of one segment at the analysis rate and size (PyAV).

Every frame of the range is decoded once (inter-frame codecs need it), but only frames on the
analysis grid are converted to RGB, scaled by swscale on the way (cheap), and rotated as a
player would show them.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import cv2
import numpy as np

from .errors import ClipError
from .reasons import Reason


def analysis_size(width: int, height: int, max_side: int) -> Tuple[int, int]:
    """Displayed (w, h) scaled so the long side is at most max_side; even numbers."""
    s = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def to_rgb(frame, width: int, height: int) -> np.ndarray:
    """Scale in YUV (swscale, area filter) and convert with OpenCV: 4-7x faster than asking
    swscale for rgb24 directly (measured 0.45 vs 3.2 ms for a 512x512 frame)."""
    if frame.format.name == "yuv420p" and width % 2 == 0 and height % 2 == 0:
        if (frame.width, frame.height) != (width, height):
            frame = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return frame.to_ndarray(format="rgb24", width=width, height=height)


def _plane(frame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8, count=p.line_size * p.height).reshape(p.height, p.line_size)


def frame_region_bgr(frame, x0: int, y0: int, x1: int, y1: int, rotation: int = 0) -> np.ndarray:
    """BGR pixels [y0:y1, x0:x1] (displayed coordinates, inside the frame) of a decoded PyAV
    frame at full resolution. yuv420p without rotation: only the region (widened to even
    bounds) is converted, from views of the planes; otherwise the whole frame is."""
    if rotation or frame.format.name != "yuv420p" or frame.width % 2 or frame.height % 2:
        rgb = frame.to_ndarray(format="rgb24")
        if rotation:
            rgb = np.rot90(rgb, k=-rotation // 90)
        return np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1])
    ex0, ey0 = x0 - x0 % 2, y0 - y0 % 2
    ex1, ey1 = x1 + x1 % 2, y1 + y1 % 2
    y = _plane(frame, 0)[ey0:ey1, ex0:ex1]
    u = _plane(frame, 1)[ey0 // 2:ey1 // 2, ex0 // 2:ex1 // 2]
    v = _plane(frame, 2)[ey0 // 2:ey1 // 2, ex0 // 2:ex1 // 2]
    i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape((ey1 - ey0) * 3 // 2, ex1 - ex0)
    bgr = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    return np.ascontiguousarray(bgr[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0])


def iter_frames(path: str, start_s: float, end_s: float, fps: float, size: Tuple[int, int],
                rotation: int = 0, threads: int = 1,
                skip_nonref: bool = False,
                on_decoded: Optional[Callable] = None) -> Iterator[Tuple[float, np.ndarray]]:
    """Yield (t, rgb (H, W, 3) uint8) for frames on a `fps` grid within [start_s, end_s).

    `size` is the displayed (w, h) after rotation. `skip_nonref`: the decoder skips frames no
    other frame references (about half of a typical H.264 / HEVC stream), so only reference
    frames are candidates for the grid; use it when the source rate is well above `fps`
    (frame times stay exact; the grid is then filled by the nearest following reference
    frame). `on_decoded(t, frame)` is called with every decoded PyAV frame of the range (grid
    or not) before the grid frame at t is yielded (scene-cut detection). Raises
    ClipError(DECODE_ERROR) when the
    stream cannot be opened or breaks before the first frame; a stream that breaks later ends
    the iteration (the caller sees fewer frames than expected and records it).
    """
    import av

    w, h = size
    dec_w, dec_h = (h, w) if rotation in (90, 270) else (w, h)
    try:
        container = av.open(path, mode="r")
    except Exception as e:  # noqa: BLE001 - any open failure is a decode error for this clip
        raise ClipError(Reason.DECODE_ERROR, f"open failed: {e}"[:300]) from None
    n_out = 0
    try:
        if not container.streams.video:
            raise ClipError(Reason.NO_VIDEO_STREAM)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.codec_context.thread_count = threads
        if skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        tb = float(stream.time_base) if stream.time_base else 1.0 / 90000
        t0 = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        if start_s > 0.5:
            container.seek(int((start_s + t0) / tb), stream=stream, backward=True, any_frame=False)
        step = 1.0 / fps
        next_t = start_s
        last_pts_t = -1e9
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    t = last_pts_t + step if last_pts_t > -1e9 else start_s
                else:
                    t = float(frame.pts * tb) - t0
                last_pts_t = t
                if t >= end_s:
                    break
                if t < start_s - 1e-3:
                    continue
                if on_decoded is not None:
                    on_decoded(t, frame)
                if t + 1e-3 < next_t:
                    continue
                rgb = to_rgb(frame, dec_w, dec_h)
                if rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=-rotation // 90))
                yield t, rgb
                n_out += 1
                while next_t <= t + 1e-6:
                    next_t += step
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if n_out == 0:
                raise ClipError(Reason.DECODE_ERROR, f"decode failed: {e}"[:300]) from None
            return  # truncated file: keep what decoded
    finally:
        container.close()


def decode_only(path: str, start_s: float = 0.0, end_s: float = float("inf"), threads: int = 1) -> int:
    """Decode every frame of the range and convert nothing (benchmark baseline); returns count."""
    import av

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.codec_context.thread_count = threads
        tb = float(stream.time_base)
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts * tb >= end_s:
                break
            n += 1
    return n
