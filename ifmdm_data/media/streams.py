"""Pick the main video and main audio stream of a media file, by ffmpeg's own rule.

Both the PyAV streams of every decoder (`main_streams`) and the ffprobe records of
`probe.probe_file` (`main_stream_info`) go through one sort key, so filter, shard and infer
read the same stream of a file.
"""
from __future__ import annotations

from typing import Optional, Tuple

# --------------------------------------------------------------------------------------------
# Stream choice. ffmpeg's own rule (fftools `open_output_file` / `av_find_best_stream`): never
# an attached picture (cover art), then the default-disposition track, then the most pixels
# (video) or channels (audio). Both the ffprobe records of `probe.probe_file` and the PyAV
# streams of every decoder go through `_stream_rank`, so filter, shard and infer read the same
# stream of a file.
# --------------------------------------------------------------------------------------------

_ATTACHED_PIC, _DEFAULT = 0x400, 0x1   # AV_DISPOSITION_ATTACHED_PIC, AV_DISPOSITION_DEFAULT


def _stream_rank(attached_pic: bool, default: bool, size: float, frames: float, index: int) -> tuple:
    """Sort key, larger is better: not cover art, default track, pixels (or channels), frames;
    the first stream of the file wins a tie."""
    return (not attached_pic, bool(default), float(size), float(frames), -int(index))


def _pyav_rank(s) -> tuple:
    d = int(getattr(s, "disposition", 0) or 0)
    if s.type == "video":
        size = float((s.codec_context.width or 0) * (s.codec_context.height or 0))
    else:
        cc = s.codec_context
        size = float(getattr(cc, "channels", 0) or (cc.layout.nb_channels if cc.layout else 0))
    return _stream_rank(bool(d & _ATTACHED_PIC), bool(d & _DEFAULT), size, s.frames or 0, s.index)


def main_streams(container) -> Tuple[Optional[object], Optional[object]]:
    """(video, audio): the main PyAV stream of each kind of an open container, as ffmpeg would
    pick it (`_stream_rank`), None when the file has none of that kind. Use this wherever a
    video or audio stream is opened; `len(container.streams.video)` / `.audio` are the counts."""
    v = max(container.streams.video, key=_pyav_rank, default=None)
    a = max(container.streams.audio, key=_pyav_rank, default=None)
    return v, a


def main_stream_info(streams: list, kind: str) -> Optional[dict]:
    """The main stream record of `kind` ('video' / 'audio') among ffprobe's `streams` list
    (`ffmpeg.probe(path)["streams"]`), by the same rule as `main_streams`; None if none."""
    def rank(s: dict) -> tuple:
        d = s.get("disposition") or {}
        if kind == "video":
            size = float(s.get("width") or 0) * float(s.get("height") or 0)
        else:
            size = float(s.get("channels") or 0)
        try:
            frames = float(s.get("nb_frames") or 0)
        except ValueError:
            frames = 0.0
        return _stream_rank(bool(d.get("attached_pic")), bool(d.get("default")), size, frames,
                            int(s.get("index", 0)))
    cands = [s for s in streams if s.get("codec_type") == kind]
    return max(cands, key=rank, default=None)
