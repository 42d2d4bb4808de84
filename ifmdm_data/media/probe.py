"""Probe one media file: a plain record, or a ClipError.

The probe runs in process with PyAV (issue 12 item 4: an ffprobe subprocess cost ~0.065 core-s a
clip, 19% of `filter` on short clips; PyAV's open is 1-7 ms). PyAV's streams are turned into the
dict shape of ffprobe's JSON (`ffprobe -show_streams -show_format`, the fields the record reads)
and one function (`_record`) builds the record from either, so both give one schema. ffprobe
(through ffmpeg-python) stays as the fallback for files PyAV cannot open (its error message
is the rejection detail, as before). `tests/test_probe_pyav.py` checks the two agree field by
field. Rotation: ffmpeg's mov demuxer builds the display matrix from the `tkhd` (times `mvhd`)
matrix; PyAV has no getter for a stream's display matrix, so `_mov_display_matrices` reads
those boxes (a few small reads); other containers: the `rotate` tag, as ffprobe 5.x shows.
"""
from __future__ import annotations

import math
import os
import struct
from fractions import Fraction
from typing import Any

from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Reason


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


# --------------------------------------------------------------------------------------------
# Display matrix of mov/mp4 tracks (what ffmpeg's mov_read_tkhd exports as side data)
# --------------------------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak"}


def _boxes(buf: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of the ISO-BMFF boxes in buf[start:end]."""
    end = len(buf) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[pos:pos + 8])
        hdr = 8
        if size == 1:
            if pos + 16 > end:
                return
            size, hdr = struct.unpack(">Q", buf[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        if size < hdr:
            return
        yield kind, pos + hdr, min(pos + size, end)
        pos += size


def _read_moov(f) -> bytes | None:
    """The payload of the top-level `moov` box (walking over `mdat` by seeking), None if none."""
    f.seek(0, os.SEEK_END)
    file_end = f.tell()
    pos = 0
    while pos + 8 <= file_end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return None
        size, kind = struct.unpack(">I4s", head[:8])
        hdr = 8
        if size == 1:
            if len(head) < 16:
                return None
            size, hdr = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = file_end - pos
        if size < hdr:
            return None
        if kind == b"moov":
            size = min(size, file_end - pos)   # a size past the end: ffmpeg reads what is there
            if size > 256 << 20:   # a real moov this big is not a video clip's
                return None
            f.seek(pos + hdr)
            return f.read(size - hdr)
        pos += size
    return None


def _matrix(buf: bytes, at: int) -> list:
    return list(struct.unpack(">9i", buf[at:at + 36]))


def _mov_boxes(path: str) -> tuple:
    """What ffmpeg's mov demuxer reads from `moov` that PyAV does not show: (matrices, duration).

    matrices: per track (= ffmpeg stream index) the display matrix ffmpeg exports as side data
    (9 ints, 16.16 / 2.30 fixed point: tkhd matrix times mvhd matrix), None where it is the
    identity. duration: the `mvhd` duration in microseconds (av_rescale, round to nearest),
    which ffmpeg 5.x (ffprobe's format duration) takes as the file's duration unless the file
    is fragmented; ffmpeg >= 7, PyAV's, uses the streams' span instead (e.g. 8.0 s for
    aoc_talking.mp4, whose mvhd says 8.064 s). ([], None) when the boxes cannot be read."""
    try:
        with open(path, "rb") as f:
            moov = _read_moov(f)
    except OSError:
        return [], None
    if not moov:
        return [], None
    movie = [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]
    out, dur_us, fragmented = [], None, False
    try:
        for kind, a, b in _boxes(moov):
            if kind == b"mvhd" and b - a >= 100:
                v1 = moov[a] == 1
                scale, dur = struct.unpack(">IQ" if v1 else ">II", moov[a + (20 if v1 else 12):a + (32 if v1 else 20)])
                if scale > 0 and dur > 0:
                    q, r = divmod(dur * 1000000, scale)
                    dur_us = q + (2 * r >= scale)
                off = a + 4 + (28 if v1 else 16) + 4 + 2 + 10
                movie = _matrix(moov, off)
            elif kind == b"mvex":
                fragmented = True
            elif kind == b"trak":
                m = None
                for k2, a2, b2 in _boxes(moov, a, b):
                    if k2 == b"tkhd" and b2 - a2 >= 80:
                        off = a2 + 4 + (32 if moov[a2] == 1 else 20) + 8 + 2 + 2 + 2 + 2
                        m = _matrix(moov, off)
                if m is None:
                    out.append(None)
                    continue
                sh = (16, 16, 30)
                res = [sum((m[i * 3 + e] * movie[e * 3 + j]) >> sh[e] for e in range(3))
                       for i in range(3) for j in range(3)]
                ident = res == [65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]
                out.append(None if ident else res)
    except (struct.error, IndexError):
        return [], None
    return out, (None if fragmented else dur_us)


def _display_rotation_get(m: list) -> float:
    """libavutil's av_display_rotation_get: counter-clockwise degrees, NaN for a degenerate matrix."""
    fp = [x / 65536.0 for x in m]
    s0, s1 = math.hypot(fp[0], fp[3]), math.hypot(fp[1], fp[4])
    if s0 == 0.0 or s1 == 0.0:
        return float("nan")
    return -math.degrees(math.atan2(fp[1] / s1, fp[0] / s0))


# --------------------------------------------------------------------------------------------
# The two sources: PyAV (in process) and ffprobe (subprocess), both as ffprobe's JSON shape
# --------------------------------------------------------------------------------------------

def _ratio(r) -> str:
    return f"{r.numerator}/{r.denominator}" if r else "0/0"


def _ts(ts, tb) -> str | None:
    """ffprobe's print_time: ts * av_q2d(tb) printed with %f; None for AV_NOPTS_VALUE."""
    if ts is None or not tb:
        return None
    return "%f" % (ts * (tb.numerator / float(tb.denominator)))


def _pyav_info(path: str) -> dict:
    """ffprobe's JSON (the fields `_record` reads) from PyAV; raises av.error.FFmpegError."""
    import av

    with av.open(path) as c:
        mov = "mov" in c.format.name.split(",")
        mats, mov_dur_us = _mov_boxes(path) if mov else ([], None)
        streams = []
        for s in c.streams:
            d = int(s.disposition or 0)
            rec = {"index": s.index, "codec_type": s.type,
                   "disposition": {"default": int(bool(d & 0x1)), "attached_pic": int(bool(d & 0x400))},
                   "tags": dict(s.metadata or {})}
            cc = s.codec_context
            if cc is not None and cc.codec is not None:
                rec["codec_name"] = cc.codec.canonical_name
            if s.frames:
                rec["nb_frames"] = str(s.frames)
            dur = _ts(s.duration, s.time_base)
            if dur is not None:
                rec["duration"] = dur
            if s.type == "video":
                avg, base = s.average_rate, s.base_rate
                if c.format.name == "h264" and cc.framerate:
                    # a raw H.264 stream has no container timing: ffmpeg >= 7's raw demuxer reports its
                    # default 25 fps (and a field rate) where ffprobe 5.x gave the SPS timing, which
                    # the decoder also reads (codec_context.framerate)
                    avg = base = cc.framerate
                rec.update(width=cc.width, height=cc.height, pix_fmt=cc.pix_fmt or "",
                           avg_frame_rate=_ratio(avg), r_frame_rate=_ratio(base))
                sar = s.sample_aspect_ratio
                if sar:
                    rec["sample_aspect_ratio"] = f"{sar.numerator}:{sar.denominator}"
                m = mats[s.index] if s.index < len(mats) else None
                if m is not None:
                    rot = _display_rotation_get(m)
                    rec["side_data_list"] = [{"side_data_type": "Display Matrix",
                                              "rotation": int(rot) if rot == rot else 0}]
            elif s.type == "audio":
                rec.update(sample_rate=str(cc.sample_rate or 0),
                           channels=int(getattr(cc, "channels", 0) or (cc.layout.nb_channels if cc.layout else 0)))
            streams.append(rec)
        fmt = {}
        dur_us = c.duration
        if mov and mov_dur_us:
            dur_us = mov_dur_us
        if dur_us is not None:
            fmt["duration"] = "%f" % (dur_us * (1 / 1000000.0))
    return {"streams": streams, "format": fmt}


def _ffprobe_info(path: str) -> dict:
    import ffmpeg  # ffmpeg-python

    try:
        return ffmpeg.probe(path)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise ClipError(Reason.DECODE_ERROR, (msg[-1] if msg else "ffprobe failed")[:300]) from None
    except FileNotFoundError:
        from ifmdm_data.errors import IfmdmError
        raise IfmdmError("ffprobe not found: install ffmpeg (apt-get install ffmpeg)") from None


def probe_file(path: str, timeout_s: float = 60.0, backend: str = "auto") -> dict:
    """Return the probe record of `path`; raise ClipError with a Reason when it is unusable.

    Keys: file_size, container_duration_s, duration_s, fps, vfr, width, height (as displayed,
    after rotation), rotation, vcodec, pix_fmt, n_frames (-1 when the container does not say),
    has_audio, acodec, audio_sr, audio_channels (of the main streams, `streams.main_stream_info`),
    n_video_streams (not counting cover art), n_audio_streams. width/height are square-pixel
    display sizes (the sample aspect ratio applied, `video.display_dims`).

    backend: "auto" (PyAV in process; ffprobe only for a file PyAV cannot open), "pyav"
    (no fallback: PyAV's error becomes the DECODE_ERROR detail) or "ffprobe".
    """
    from ifmdm_data.io.paths import fs_path
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
    if backend == "ffprobe":
        info = _ffprobe_info(path)
    else:
        try:
            info = _pyav_info(path)
        except Exception as e:   # av.error.FFmpegError, or a stream PyAV cannot describe
            if backend == "pyav":
                raise ClipError(Reason.DECODE_ERROR, str(e)[:300]) from None
            info = _ffprobe_info(path)   # PyAV failed: ffprobe decides (and words the error)
    return _record(info, st)


def _record(info: dict, st: os.stat_result) -> dict:
    """The probe record from ffprobe's JSON shape (either source)."""
    streams = info.get("streams", [])
    from ifmdm_data.media.streams import main_stream_info  # issue 11 C/D: one stream rule
    from ifmdm_data.media.video import display_dims       # issue 11 C: SAR
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
