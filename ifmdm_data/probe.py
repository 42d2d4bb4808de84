"""Probe one media file with ffprobe (through ffmpeg-python): a plain record, or a ClipError."""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

from .errors import ClipError
from .reasons import Reason


def _rate(text: Any) -> float:
    try:
        r = Fraction(str(text))
        return float(r) if r > 0 else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def _float(x: Any, default: float = float("nan")) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def _rotation(stream: dict) -> int:
    """Display rotation in degrees clockwise as a player shows it (0, 90, 180, 270)."""
    rot = 0.0
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            rot = -_float(sd["rotation"], 0.0)  # displaymatrix rotation is counter-clockwise
    if not rot and "rotate" in (stream.get("tags") or {}):
        rot = _float(stream["tags"]["rotate"], 0.0)
    return int(round(rot / 90.0)) % 4 * 90


def probe_file(path: str, timeout_s: float = 60.0) -> dict:
    """Return the probe record of `path`; raise ClipError with a Reason when it is unusable.

    Keys: file_size, container_duration_s, duration_s, fps, vfr, width, height (as displayed,
    after rotation), rotation, vcodec, pix_fmt, n_frames (-1 when the container does not say),
    has_audio, acodec, audio_sr, audio_channels (of the main streams, `video.main_stream_info`),
    n_video_streams (not counting cover art), n_audio_streams. width/height are square-pixel
    display sizes (the sample aspect ratio applied, `video.display_dims`).
    """
    import ffmpeg  # ffmpeg-python

    from .inputs import fs_path
    path = fs_path(path)  # a manifest path of a non-UTF-8 name -> the name on disk
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ClipError(Reason.UNREADABLE, "file not found") from None
    except OSError as e:
        raise ClipError(Reason.UNREADABLE, e.strerror or str(e)) from None
    if st.st_size == 0:
        raise ClipError(Reason.EMPTY_FILE, "zero bytes")
    if not os.access(path, os.R_OK):
        raise ClipError(Reason.UNREADABLE, "permission denied")
    try:
        info = ffmpeg.probe(path)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise ClipError(Reason.DECODE_ERROR, (msg[-1] if msg else "ffprobe failed")[:300]) from None
    except FileNotFoundError:
        from .errors import IfmdmError
        raise IfmdmError("ffprobe not found: install ffmpeg (apt-get install ffmpeg)") from None

    streams = info.get("streams", [])
    from .video import display_dims, main_stream_info  # issue 11 C/D: one stream rule, SAR
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    a0 = main_stream_info(streams, "audio")
    fmt = info.get("format", {})
    rec = {
        "file_size": int(st.st_size),
        "container_duration_s": _float(fmt.get("duration")),
        "has_audio": bool(audio),
        "acodec": a0.get("codec_name", "") if audio else "",
        "audio_sr": int(_float(a0.get("sample_rate"), 0)) if audio else 0,
        "audio_channels": int(a0.get("channels", 0)) if audio else 0,
        "n_video_streams": len(video), "n_audio_streams": len(audio),
    }
    if not video:
        raise ClipError(Reason.NO_VIDEO_STREAM,
                        "audio-only file" if audio else "no video stream").with_record(rec)
    v = main_stream_info(video, "video")
    rot = _rotation(v)
    w, h = display_dims(int(v.get("width", 0)), int(v.get("height", 0)), v.get("sample_aspect_ratio"))
    if rot in (90, 270):
        w, h = h, w
    avg, real = _rate(v.get("avg_frame_rate")), _rate(v.get("r_frame_rate"))
    fps = avg or real
    dur = _float(v.get("duration"))
    if not dur == dur or dur <= 0:  # NaN or missing
        dur = rec["container_duration_s"]
    n_frames = int(_float(v.get("nb_frames"), -1))
    rec.update({
        "duration_s": dur,
        "fps": fps,
        # avg differs from the nominal rate: timestamps are irregular (phone recordings)
        "vfr": bool(avg and real and abs(avg - real) / real > 0.01),
        "width": w, "height": h, "rotation": rot,
        "vcodec": v.get("codec_name", ""), "pix_fmt": v.get("pix_fmt", ""),
        "n_frames": n_frames,
    })
    if w <= 0 or h <= 0:
        raise ClipError(Reason.DECODE_ERROR, "video stream has no size").with_record(rec)
    return rec
