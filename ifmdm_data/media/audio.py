"""Decode the main audio stream of a media file to float32 mono on the file's timeline.

`load_audio` is the one audio decoder of filter, shard and infer. Its only exceptions are
`ClipError`s, which become `stage2_reasons` rows. The analyses of the decoded samples live next
to it: speech presence in `vad`, loudness and envelope in `loudness`, audio-visual agreement in
`avsync` (all still importable from here).

Time convention: `start_s`/`end_s` are seconds from the file's time 0 as
`timeline.time_origin_s` defines it (the video stream's first frame; the audio's first sample
when there is no video), which is the timeline video frames use too.
"""
from __future__ import annotations

import math

import numpy as np

from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Stage2Reason
from ifmdm_data.media.timeline import stream_start_s, time_origin_s

# moved out of this module (decoding stays here); importable from here as before

# Seek this much before start_s so the decoder (AAC needs a pre-roll frame) is warm at start_s.
_SEEK_PREROLL_S = 0.2


# --------------------------------------------------------------------------------------------
# decoding


def load_audio(path, start_s: float = 0.0, end_s: float | None = None,
               sample_rate: int = 16000, return_coverage: bool = False):
    """Decode [start_s, end_s) of the main audio stream as float32 mono at `sample_rate`.

    Times are seconds from the file's time 0 (`timeline.time_origin_s`: the video stream's
    first frame, or the audio's first sample in an audio-only file), not the container's
    absolute timestamps: a copy of a file with its timestamps offset gives the same samples.

    Returns exactly round((end_s - start_s) * sample_rate) samples when `end_s` is given:
    the part of the range the stream does not cover (audio shorter than the video, a range
    past the end) is zero-padded, so the result always lines up with the requested window.
    With `end_s=None` it returns everything from `start_s` to the end of the stream.
    A negative `start_s` is treated as 0; `end_s <= start_s` gives an empty array.

    Raises ClipError(Stage2Reason.NO_AUDIO) when the file opens but has no audio stream, and
    ClipError(Stage2Reason.AUDIO_DECODE_ERROR, detail) when the file cannot be opened as media
    (a missing, empty or non-media file: whether it has audio is unknowable, and stage 1
    rejects such a file as `decode_error` anyway), when decoding fails, or when an audio
    stream yields no samples at all from the start of the file.

    With `return_coverage=True` returns (samples, coverage): the fraction of the returned
    samples that are decoded audio rather than padding (audio shorter than the video, a window
    past the end or before the stream's first sample), in [0, 1]; NaN for an empty result.
    """
    import av  # local imports: keep `import ifmdm_data.media.audio` light

    from ifmdm_data.io.paths import fs_path
    from ifmdm_data.media.streams import main_streams

    sample_rate = int(sample_rate)
    start_s = float(start_s or 0.0)
    start_s = start_s if math.isfinite(start_s) and start_s > 0 else 0.0
    if end_s is not None and not math.isfinite(float(end_s)):
        end_s = None  # NaN / inf: to the end of the stream
    n_want = None
    if end_s is not None:
        n_want = max(0, int(round((float(end_s) - start_s) * sample_rate)))
        if n_want == 0:
            empty = np.zeros(0, dtype=np.float32)
            return (empty, float("nan")) if return_coverage else empty

    try:
        container = av.open(fs_path(str(path)))  # manifest form of a non-UTF-8 name -> on disk
    except Exception as e:  # noqa: BLE001 - any open failure is a per-clip error
        raise ClipError(Stage2Reason.AUDIO_DECODE_ERROR,
                        f"cannot open {path}: {type(e).__name__}: {e}") from e
    try:
        stream = main_streams(container)[1]  # the default / richest track, as ffmpeg picks
        if stream is None:
            raise ClipError(Stage2Reason.NO_AUDIO, f"{path} has no audio stream")
        origin = time_origin_s(container, stream)
        a_start = start_s + origin  # the window's start on the container's absolute timeline
        try:
            chunks, t_first = _decode_range(container, stream, a_start, n_want, sample_rate,
                                            seek=True)
            if (t_first is not None and t_first > a_start + 1e-3 and a_start > _SEEK_PREROLL_S
                    and t_first > (stream_start_s(stream) or 0.0) + 1e-3):
                # the demuxer seeked past the start: decode from the beginning instead
                container.seek(0)
                chunks, t_first = _decode_range(container, stream, a_start, n_want,
                                                sample_rate, seek=False)
        except ClipError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ClipError(Stage2Reason.AUDIO_DECODE_ERROR,
                            f"decoding audio of {path} failed: {type(e).__name__}: {e}") from e
    finally:
        container.close()

    if t_first is None:  # nothing decoded
        if start_s <= 0.0:
            raise ClipError(Stage2Reason.AUDIO_DECODE_ERROR,
                            f"audio stream of {path} has no decodable samples")
        silent = np.zeros(n_want or 0, dtype=np.float32)
        if return_coverage:
            return silent, (0.0 if len(silent) else float("nan"))
        return silent

    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    # Output sample i sits at t_first + i / sample_rate; cut out [start_s, start_s + n_want).
    offset = int(round((a_start - t_first) * sample_rate))
    front = 0  # padding samples before the first decoded one
    if offset >= 0:
        data = data[offset:]
    else:  # the stream starts after start_s: pad the front
        front = -offset
        data = np.concatenate([np.zeros(front, dtype=np.float32), data])
    decoded_end = len(data)  # samples [front, decoded_end) are decoded audio
    if n_want is not None:
        if len(data) >= n_want:
            data = data[:n_want]
        else:
            data = np.concatenate([data, np.zeros(n_want - len(data), dtype=np.float32)])
    data = np.nan_to_num(data.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0)
    data = np.ascontiguousarray(data)
    if not return_coverage:
        return data
    covered = max(0, min(decoded_end, len(data)) - front)
    return data, (float(min(1.0, covered / len(data))) if len(data) else float("nan"))


def _decode_range(container, stream, start_s, n_want, sample_rate, seek=True):
    """Decode from (just before) start_s; returns (list of float32 chunks, time of chunk 0)."""
    import av

    if seek and start_s > _SEEK_PREROLL_S:
        target = start_s - _SEEK_PREROLL_S
        try:
            if stream.time_base:
                container.seek(int(target / float(stream.time_base)), stream=stream,
                               backward=True, any_frame=False)
            else:
                container.seek(int(target * av.time_base), backward=True, any_frame=False)
        except av.FFmpegError:
            container.seek(0)  # unseekable: decode from the start and cut
    resampler = None
    chunks: list[np.ndarray] = []
    n_out = 0
    t_first = None
    t_next = None  # expected time of the next input frame, for frames without pts

    def take(frames):
        nonlocal n_out
        for out in frames:
            arr = out.to_ndarray().astype(np.float32, copy=False)
            # planar (channels, n) -> mean of the channels; packed mono (1, n) -> itself
            arr = arr.mean(axis=0) if arr.ndim == 2 and arr.shape[0] > 1 else arr.reshape(-1)
            chunks.append(arr)
            n_out += len(arr)

    # Decode until the output reaches start_s + n_want samples (plus a small margin).
    for packet in container.demux(stream):
        for frame in packet.decode():
            t = frame.time if frame.pts is not None and frame.time is not None else t_next
            if t is None:
                t = 0.0
            if t_first is None:
                t_first = float(t)
                resampler = _make_resampler(frame, sample_rate)
            t_next = float(t) + frame.samples / float(frame.sample_rate or sample_rate)
            take(resampler.resample(frame))
        if n_want is not None and t_first is not None:
            have_until = t_first + n_out / sample_rate
            if have_until >= start_s + n_want / sample_rate + 0.05:
                return chunks, t_first
    if resampler is not None:
        take(resampler.resample(None))  # flush the resampler's buffered tail
    return chunks, t_first


def _make_resampler(frame, sample_rate):
    """Mono and stereo are averaged in numpy after resampling (FFmpeg's own stereo->mono
    matrix is (L+R)/sqrt(2): +3 dB on correlated channels, peaks above 1.0); more channels
    use FFmpeg's mono downmix (it knows centre and LFE)."""
    import av
    try:
        n_ch = len(frame.layout.channels)
    except Exception:  # noqa: BLE001 - unknown layout
        n_ch = 0
    if 1 <= n_ch <= 2:
        return av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
    return av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
