"""One shard sample from one accepted segment (`ifmdm-data shard`): its mp4, wav, speech, landmarks and json.

`make_sample` turns a manifest row + the segment's tracks into the members of
`shard.format` (mp4, wav, speech.npy, landmarks.npy, json). The face models are not run
again: the crop box and the landmarks come from the tracks written by `filter`.

Video: the segment is decoded once, sequentially (PyAV); output frame k shows the source
frame nearest in time to start_s + k / fps (a constant output rate whatever the source's:
frames are repeated or dropped, never blended), cropped with the segment's one stabilised box
(`crop.py`) and resized to size x size directly on the decoded yuv420p planes (no RGB round
trip; other pixel formats are converted to yuv420p first), and encoded H.264 yuv420p with libx264 (constant quality
`crf`, closed GOPs of `gop` frames, no scene-cut keyframes). GOP trade-off: the loaders decode
a whole clip sequentially (cheap at any GOP); random access (one frame pair per open) costs
up to a GOP of decoding per seek, so the default 25 (1 s) keeps that cheap for a few percent
more bytes than a long GOP. Frames that the decoder cannot deliver at the end of a truncated
file shorten the sample (n_frames says how many); less than half the segment is an error.

Audio: 16 kHz mono PCM16 of exactly [start_s, start_s + n_frames / fps) (zero-padded where
the stream is shorter). With `fix_av_offset` (`shard --fix-av-offset`) and a SyncNet offset in
the manifest (`filter --syncnet`: `sync_offset_frames`, syncnet_python's convention: negative
when the audio lags the video), the audio window is shifted to undo it, as LatentSync does:
[start_s + shift, start_s + shift + n_frames / fps) with shift = -sync_offset_frames / 25 s
(zero-padded before the file start); `audio_shift_s` in the metadata records the shift (0
otherwise). Segments whose offset exceeds `decide.max_sync_offset_frames` are not stage-2
usable anyway. Speech features: `features(wav)` at their native rate, resampled to
the frames by `features.align_to_frames` (row f from the audio around f / fps), float16.
Landmarks: the analysis-rate tracks interpolated linearly to the output frame times, in crop
pixels, float16; NaN where the nearest analysed frame had no face. At the default analysis
rate (6.25 fps) the mouth moves between analysed frames, so interpolated lip landmarks are
smooth approximations; run `filter --analysis-fps 25` when exact per-frame landmarks matter
(the trainers do not use them).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import wave
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ifmdm_data.shard import format as sf
from ifmdm_data.shard.crop import PADS, crop_box, crop_i420, landmarks_to_crop
from ifmdm_data.errors import ClipError, ConfigError
from ifmdm_data.reasons import SUBSETS, Reason, Stage2Reason
from ifmdm_data.media.timeline import stream_start_s
from ifmdm_data.media.video import convert_frame, stream_display_size
from ifmdm_data.media.streams import main_streams

AUDIO_RATE = 16000
MIN_COVERAGE = 0.5     # a truncated source must still yield half the segment's frames


@dataclass
class ShardConfig:
    size: int = 512                  # crop side in pixels
    fps: float = 25.0                # constant output frame rate
    crf: int = 20                    # libx264 constant quality (18 = near lossless .. 23 = default)
    preset: str = "medium"           # libx264 speed preset (veryfast: ~2x faster, larger files)
    gop: int = 25                    # keyframe interval in frames (random-access cost)
    crop_scale: float = 2.6          # crop side / median face height (nominal)
    crop_down: float = 0.3           # crop centre below the face centre, face heights
    crop_margin: float = 0.15        # room around the face motion extent, face heights
    pad: str = "black"               # outside the frame: black | replicate
    target_shard_bytes: int = 1_000_000_000
    subsets: tuple = SUBSETS
    threads: int = 1                 # decoder / encoder threads per worker
    fix_av_offset: bool = False      # shift the audio by the filter's SyncNet offset (see below)

    def __post_init__(self):
        self.subsets = tuple(self.subsets)
        bad = [s for s in self.subsets if s not in SUBSETS]
        if bad:
            raise ConfigError(f"unknown subset(s) {bad}: choose from {', '.join(SUBSETS)}")
        if int(self.size) < 16 or int(self.size) % 2:
            raise ConfigError(f"size must be an even number >= 16 (yuv420p), got {self.size}")
        if not (float(self.fps) > 0 and math.isfinite(float(self.fps))):
            raise ConfigError(f"fps must be positive, got {self.fps}")
        if int(self.gop) < 1:
            raise ConfigError(f"gop must be >= 1, got {self.gop}")
        if not 0 <= int(self.crf) <= 51:
            raise ConfigError(f"crf must be in 0..51, got {self.crf}")
        if self.pad not in PADS:
            raise ConfigError(f"pad must be one of {PADS}, got {self.pad!r}")
        if float(self.crop_scale) <= 0:
            raise ConfigError(f"crop_scale must be positive, got {self.crop_scale}")
        self.size, self.gop, self.crf, self.threads = int(self.size), int(self.gop), int(self.crf), int(self.threads)
        self.fps = float(self.fps)
        self.target_shard_bytes = int(self.target_shard_bytes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["subsets"] = list(self.subsets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def video_bytes_per_s(self) -> float:
        """Rough H.264 rate for planning shards: ~0.2 bit per pixel at crf 20 (measured 0.21 on a real
        512 px talking head, 1 s GOP), halving every +6 crf."""
        return self.size * self.size * self.fps * 0.2 / 8 * 2.0 ** ((20 - self.crf) / 6.0)


# ------------------------------------------------------------------------------------------
# pieces


def frame_rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def n_output_frames(duration_s: float, fps: float) -> int:
    return max(0, int(round(duration_s * fps)))


def interp_landmarks(t_track, lms, times) -> np.ndarray:
    """(T, P, C) landmarks at track times -> (len(times), P, C) at `times`, linear between the
    face frames; NaN where the nearest track frame has no face (or there is none)."""
    t_track = np.asarray(t_track, np.float64)
    lms = np.asarray(lms, np.float32)
    times = np.asarray(times, np.float64)
    T, P, C = lms.shape
    out = np.full((len(times), P, C), np.nan, np.float32)
    valid = np.all(np.isfinite(lms.reshape(T, -1)), axis=1) if T else np.zeros(0, bool)
    if not valid.any() or len(times) == 0:
        return out
    nearest = np.clip(np.searchsorted(t_track, times), 0, T - 1)
    prev = np.clip(nearest - 1, 0, T - 1)
    nearest = np.where(np.abs(t_track[prev] - times) <= np.abs(t_track[nearest] - times), prev, nearest)
    use = valid[nearest]
    tv, lv = t_track[valid], lms[valid].reshape(int(valid.sum()), -1)
    if len(tv) == 1:
        vals = np.repeat(lv, len(times), axis=0)
    else:
        j = np.clip(np.searchsorted(tv, times) - 1, 0, len(tv) - 2)
        w = np.clip((times - tv[j]) / np.maximum(tv[j + 1] - tv[j], 1e-9), 0.0, 1.0)[:, None]
        vals = lv[j] * (1 - w) + lv[j + 1] * w
    out[use] = vals[use].reshape(-1, P, C)
    return out


def wav_bytes(wav: np.ndarray, sample_rate: int = AUDIO_RATE) -> bytes:
    """float32 mono -> 16-bit PCM WAV bytes."""
    pcm = np.round(np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


class _Encoder:
    """libx264 yuv420p into an in-memory mp4 (no faststart: the loaders hold the whole member).

    Tagged limited range ("tv", what `video.convert_frame` delivers) and with `colorspace`, the
    source's matrix (AVColorSpace: 1 BT.709, 5/6 BT.601, 2 unspecified = read as BT.601)."""

    def __init__(self, size: int, fps: float, crf: int, preset: str, gop: int, threads: int = 1,
                 colorspace: int = 2):
        import av

        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        rate = frame_rate(fps)
        s = self.container.add_stream("libx264", rate=rate)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        # limited range + the matrix: x264 writes them to the VUI only with a matrix tag, so an
        # unspecified source matrix is tagged BT.601 (SMPTE 170M), how it is read anyway
        s.codec_context.color_range = 1                  # AVCOL_RANGE_MPEG (limited)
        s.codec_context.colorspace = colorspace if colorspace in (1, 5, 6, 9) else 6
        s.time_base = 1 / rate
        s.codec_context.gop_size = gop
        s.codec_context.thread_count = max(1, threads)
        s.options = {"crf": str(crf), "preset": preset,
                     "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        self.stream = s
        self.n = 0
        self._av = av

    def add(self, yuv: np.ndarray) -> None:
        vf = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.color_range = 1                               # limited: libx264 writes it to the VUI
        vf.pts = self.n
        for p in self.stream.encode(vf):
            self.container.mux(p)
        self.n += 1

    def finish(self) -> bytes:
        for p in self.stream.encode():
            self.container.mux(p)
        self.container.close()
        return self.buf.getvalue()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - nothing to save
            pass


def _planes(frame, rotation: int = 0, size=None) -> tuple:
    """Y, U, V of a decoded frame as uint8 views (no copy) in displayed orientation and
    geometry. `size`: the display (w, h) before rotation (`video.stream_display_size`; None:
    the coded size). Frames in other pixel formats (10-bit, 4:2:2), full range (yuvj, pc) or
    with non-square pixels go through `video.convert_frame` first (limited-range yuv420p at
    `size`, source matrix kept: the encoder is tagged with it)."""
    frame = convert_frame(frame, *(size or (None, None)))
    out = []
    for p in frame.planes[:3]:
        a = np.frombuffer(p, np.uint8, count=p.line_size * p.height).reshape(p.height, p.line_size)
        a = a[:, :p.width]
        out.append(np.rot90(a, k=-rotation // 90) if rotation else a)
    return tuple(out)


def render_video(path: str, start_s: float, n_out: int, cfg: ShardConfig, box,
                 rotation: int = 0) -> tuple[bytes, int]:
    """Decode the segment once, pick the nearest source frame for every output time
    start_s + k / fps (k < n_out), crop, resize, encode. Returns (mp4 bytes, frames written).

    Raises ClipError(DECODE_ERROR) when the source cannot be opened or decoded, or yields
    less than MIN_COVERAGE of the frames (truncated file).
    """
    import av

    if n_out < 1:
        raise ClipError(Reason.TOO_SHORT, f"segment shorter than one frame at {cfg.fps} fps")
    try:
        container = av.open(str(path), mode="r")
    except Exception as e:  # noqa: BLE001 - any open failure is a decode error for this clip
        raise ClipError(Reason.DECODE_ERROR, f"open failed: {e}"[:300]) from None
    enc = None
    try:
        stream = main_streams(container)[0]
        if stream is None:
            raise ClipError(Reason.NO_VIDEO_STREAM, str(path))
        disp = stream_display_size(stream)
        stream.thread_type = "AUTO" if cfg.threads > 1 else "SLICE"
        stream.codec_context.thread_count = cfg.threads
        tb = float(stream.time_base) if stream.time_base else 1.0 / 90000
        t0 = stream_start_s(stream) or 0.0                  # time 0 (ifmdm_data/media/timeline.py)
        src_rate = float(stream.average_rate or stream.guessed_rate or 25)
        src_step = 1.0 / src_rate if src_rate > 0 else 0.04
        if start_s > 0.5:
            container.seek(int((start_s + t0) / tb), stream=stream, backward=True, any_frame=False)
        enc = _Encoder(cfg.size, cfg.fps, cfg.crf, cfg.preset, cfg.gop, cfg.threads,
                       colorspace=int(stream.codec_context.colorspace or 2))
        taus = start_s + np.arange(n_out) / cfg.fps
        k = 0
        prev = None            # (t, frame) of the last decoded frame
        cache = (None, None)   # (id of the source frame, its encoded-ready yuv)

        def emit(frame) -> None:
            nonlocal cache
            if cache[0] is not frame:
                cache = (frame, crop_i420(*_planes(frame, rotation, disp), box, cfg.size, cfg.pad))
            enc.add(cache[1])

        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    t = prev[0] + src_step if prev is not None else start_s
                else:
                    t = float(frame.pts * tb) - t0
                if prev is not None:
                    mid = 0.5 * (prev[0] + t)
                    while k < n_out and taus[k] <= mid:
                        emit(prev[1])
                        k += 1
                    if k >= n_out:
                        break
                prev = (t, frame)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            if prev is None:
                raise ClipError(Reason.DECODE_ERROR, f"decode failed: {e}"[:300]) from None
        if prev is None:
            raise ClipError(Reason.DECODE_ERROR, "no frame decoded in the segment range")
        # end of stream: the last frame serves the output times it is nearest to
        while k < n_out and taus[k] <= prev[0] + max(1.5 * src_step, 0.5 / cfg.fps):
            emit(prev[1])
            k += 1
        if k < MIN_COVERAGE * n_out:
            raise ClipError(Reason.DECODE_ERROR,
                            f"the video ends at {prev[0]:.2f} s: {k} of {n_out} frames of the segment")
        data = enc.finish()
        enc = None
        return data, k
    finally:
        if enc is not None:
            enc.abort()
        container.close()


def _clean(v):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if v is None or isinstance(v, str):
        return v
    return str(v)


def _as_list(v) -> list:
    if v is None or (isinstance(v, float) and v != v):
        return []
    return [str(x) for x in v]


def _track_arrays(tracks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tracks DataFrame -> (t (T,), boxes (T, 4), landmarks (T, P, 3)) in source pixels."""
    t = np.asarray(tracks["t"], np.float64)
    T = len(t)
    boxes = np.array([np.asarray(b, np.float32) if b is not None else np.full(4, np.nan, np.float32)
                      for b in tracks["box"]], np.float32).reshape(T, 4)
    flat = [np.asarray(v, np.float32) for v in tracks["landmarks"]]
    n = max((len(v) for v in flat), default=0)
    if n % 3:
        raise ValueError(f"landmark rows of {n} values are not (P, 3)")
    lms = np.full((T, n // 3, 3), np.nan, np.float32)
    for i, v in enumerate(flat):
        if len(v) == n:
            lms[i] = v.reshape(-1, 3)
    return t, boxes, lms


SYNC_FPS = 25.0   # SyncNet offsets count frames of syncnet_python's 25 fps re-timing


def audio_shift_s(row: dict) -> float:
    """Seconds to shift a segment's audio window by to undo its SyncNet AV offset (0 when the
    manifest row has none): -sync_offset_frames / 25 (an audio lag, negative offset, takes
    the audio from later)."""
    off = row.get("sync_offset_frames")
    try:
        off = float(off)
    except (TypeError, ValueError):
        return 0.0
    return -off / SYNC_FPS if math.isfinite(off) else 0.0


def shifted_audio(path: str, a0: float, seconds: float) -> np.ndarray:
    """16 kHz mono samples of [a0, a0 + seconds), zeros where a0 < 0 (before the file)."""
    from ifmdm_data.media.audio import load_audio

    n = int(round(seconds * AUDIO_RATE))
    if a0 >= 0:
        return load_audio(path, a0, a0 + seconds, AUDIO_RATE)
    lead = min(n, int(round(-a0 * AUDIO_RATE)))
    rest = load_audio(path, 0.0, (n - lead) / AUDIO_RATE, AUDIO_RATE) if n > lead else np.zeros(0, np.float32)
    return np.concatenate([np.zeros(lead, np.float32), rest])[:n]


def make_sample(row: dict, tracks, cfg: ShardConfig, features, source: str | None = None) -> dict:
    """One sample: {member ext: bytes} per `shard.format` (key.mp4, .wav, .speech.npy,
    .landmarks.npy, .json); wav and speech.npy only when the segment's audio decodes.

    `row` is a clips-manifest row (dict), `tracks` the segment's tracks DataFrame,
    `features` a `features.build_features(...)` object; `source`: what the json's `source`
    names when `row["path"]` is a local copy (`storage.spool`) of an object (its URL).
    Raises ClipError when the video cannot be decoded (the caller records the sample as failed).
    """
    from ifmdm_data.features import align_to_frames
    from ifmdm_data.io.paths import fs_path, manifest_path

    key = str(row["segment_id"])
    if "." in key:
        raise ValueError(f"key {key!r} contains a dot (WebDataset splits keys at the first dot)")
    path = fs_path(str(row["path"]))  # a non-UTF-8 name is stored escaped (inputs.manifest_path)
    start_s = float(row["start_s"])
    end_s = float(row["end_s"])
    fps = cfg.fps
    n_want = n_output_frames(end_s - start_s, fps)
    t, boxes, lms = _track_arrays(tracks)
    # the crop box from the face boxes of the segment's own time range
    inside = (t >= start_s - 1e-6) & (t < end_s + 1e-6)
    w, h = int(row.get("width") or 0), int(row.get("height") or 0)
    box = crop_box(boxes[inside] if inside.any() else boxes, w, h, scale=cfg.crop_scale,
                   down=cfg.crop_down, margin=cfg.crop_margin)
    rotation = int(row.get("rotation") or 0)
    mp4, n = render_video(path, start_s, n_want, cfg, box, rotation)
    times = start_s + np.arange(n) / fps
    lm = landmarks_to_crop(interp_landmarks(t, lms, times), box, cfg.size).astype(np.float16)

    out = {"mp4": mp4}
    stage2_ok = bool(row.get("stage2_ok"))
    stage2_reasons = _as_list(row.get("stage2_reasons"))
    has_audio = bool(row.get("has_audio"))
    shift = audio_shift_s(row) if cfg.fix_av_offset else 0.0
    if has_audio:
        try:
            wav = shifted_audio(path, start_s + shift, n / fps)
        except ClipError as e:
            has_audio = False
            reason = str(getattr(e.reason, "value", e.reason))
            if reason not in stage2_reasons:
                stage2_reasons.append(reason)
        else:
            feats = np.asarray(features(wav), np.float32)
            speech = align_to_frames(feats, features.rate_hz, n, fps,
                                     offset_s=getattr(features, "offset_s", None))
            out["wav"] = wav_bytes(wav)
            out["speech.npy"] = sf.npy_bytes(speech.astype(np.float16))
    elif Stage2Reason.NO_AUDIO.value not in stage2_reasons:
        stage2_reasons.append(Stage2Reason.NO_AUDIO.value)
    stage2_ok = stage2_ok and has_audio
    out["landmarks.npy"] = sf.npy_bytes(lm)
    meta = {
        "key": key,
        "source": source or manifest_path(os.path.abspath(path)),
        "start_s": start_s,
        "end_s": start_s + n / fps,
        "fps": fps,
        "n_frames": int(n),
        "size": cfg.size,
        "subset": row.get("subset"),
        "stage2_ok": stage2_ok,
        "stage2_reasons": stage2_reasons,
        "has_audio": has_audio,
        "crop_box": [int(v) for v in box],
        "landmark_scheme": row.get("landmark_scheme") or "",
        "motion_stats": {k: row.get(k) for k in ("head_speed_mean", "head_speed_std",
                                                  "mouth_open_mean", "mouth_open_std")},
        "speech_feature": features.info(),
        "audio_shift_s": float(shift) if has_audio else 0.0,
    }
    assert set(meta) == set(sf.META_KEYS)
    out["json"] = json.dumps(_clean(meta), allow_nan=False).encode()
    return {ext: out[ext] for ext in sf.MAIN_MEMBERS if ext in out}
