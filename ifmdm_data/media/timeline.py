"""The one definition of "time 0" of a media file, shared by filter, shard and infer.

Convention (the same as ffmpeg's A/V sync and LatentSync's preprocessing): a file's time 0 is
the presentation time of its (main) video stream's first frame (`AVStream.start_time` of the video
stream, in seconds). Every time in a manifest (`start_s`, `end_s`, track `t`) counts from it;
the audio is placed on the same axis by its own timestamps, so an audio sample with pts `p`
seconds sits at `p - origin`. A file with no video stream (an audio-only input to
`ifmdm-infer`) has its time 0 at its audio stream's first sample: no container offset ever
turns into leading silence.

Why: containers start streams at non-zero, unequal times (`-output_ts_offset`, MPEG-TS's 1.4 s,
MKV storing B-frame delay, AAC priming exposed after a remux). Video decoders already count from
the video stream's start (`video.iter_frames`, `shard.segment.render_video`); audio cut on absolute
timestamps was shifted by that start (10 s of zeros for a file offset by 10 s).
"""
from __future__ import annotations


def stream_start_s(stream) -> float | None:
    """A PyAV stream's start_time in seconds (its first presentation time), None if unknown."""
    if stream is None or stream.start_time is None or not stream.time_base:
        return None
    return float(stream.start_time * stream.time_base)


def time_origin_s(container, audio_stream=None) -> float:
    """Seconds on the container's absolute timeline that are time 0 of the file: the video
    stream's start_time; with no video stream, `audio_stream`'s (or the main audio stream's)
    start_time; 0.0 when the container gives none. The video stream is the main one
    (`streams.main_streams`, what the frame decoders open), so cover art never sets time 0."""
    from ifmdm_data.media.streams import main_streams

    v, a = main_streams(container)
    if v is not None:
        return stream_start_s(v) or 0.0
    return stream_start_s(audio_stream if audio_stream is not None else a) or 0.0


def file_origin_s(path) -> float:
    """`time_origin_s` of the file at `path` (opens it with PyAV)."""
    import av

    with av.open(str(path)) as c:
        return time_origin_s(c)
