"""Speech features at their native rate -> one row per video frame (whole-array and streamed).

`align_to_frames` resamples a (T_native, dim) array; `FrameStream` / `stream_frames` give the
same rows incrementally from an extractor's `stream(wav)` blocks (`ifmdm-infer` on long audio).
The time convention (native frame i centred at offset_s + i / rate_hz, video frame f at f / fps)
is described in `ifmdm_data.features.speech`.
"""
from __future__ import annotations

import math

import numpy as np


def align_to_frames(feats: np.ndarray, rate_hz: float, n_frames: int, fps: float,
                    offset_s: float | None = None) -> np.ndarray:
    """Resample native features to video frames: (n_frames, dim) float32.

    Native frame i is centred at t_i = offset_s + i / rate_hz (offset_s defaults to
    0.5 / rate_hz, the log-mel convention; pass the extractor's `offset_s` for wav2vec2).
    Video frame f is at t_f = f / fps and gets the mean of the native frames with
    t_i in [t_f - 0.5 / fps, t_f + 0.5 / fps). When the native rate is below fps, or a
    window holds no native frame (past the end of the audio), frame f gets the linear
    interpolation of the native features at t_f instead (clamped to the first / last native
    frame outside their span). No native frames at all gives zeros.
    """
    n_frames = max(0, int(n_frames))
    f = np.asarray(feats, dtype=np.float32)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2:
        raise ValueError(f"align_to_frames: feats must be (T, dim), got shape {f.shape}")
    rate_hz, fps, off = _check_rates(rate_hz, fps, offset_s, "align_to_frames")
    t = np.arange(n_frames, dtype=np.float64) / fps
    return _align_rows(f, 0, f.shape[0], t, rate_hz, fps, off)


def _check_rates(rate_hz, fps, offset_s, where: str) -> tuple[float, float, float]:
    rate_hz, fps = float(rate_hz), float(fps)
    if not (rate_hz > 0 and fps > 0 and math.isfinite(rate_hz) and math.isfinite(fps)):
        raise ValueError(f"{where}: rate_hz={rate_hz} and fps={fps} must be > 0")
    return rate_hz, fps, 0.5 / rate_hz if offset_s is None else float(offset_s)


def _align_rows(f: np.ndarray, first: int, T: int, t: np.ndarray, rate_hz: float, fps: float,
                off: float) -> np.ndarray:
    """`align_to_frames` for the video frames at times `t` (seconds), given the native frames
    f = native[first:first + len(f)] of a clip with T native frames in all. Every native
    frame those video frames depend on must be in `f`: the frames of their windows, and for
    interpolated ones the two native frames around t (`FrameStream` guarantees it)."""
    dim = f.shape[1]
    out = np.zeros((t.size, dim), dtype=np.float32)
    if T == 0 or t.size == 0:
        return out
    centres = off + (first + np.arange(f.shape[0], dtype=np.float64)) / rate_hz

    def interp(rows):
        x = np.empty((rows.size, dim), dtype=np.float64)
        for d in range(dim):
            x[:, d] = np.interp(t[rows], centres, f[:, d])
        return x

    if rate_hz < fps:
        return interp(np.arange(t.size)).astype(np.float32)
    half = 0.5 / fps
    # i in window <=> (t_f - half - off) * rate <= i < (t_f + half - off) * rate
    lo = np.ceil((t - half - off) * rate_hz - 1e-9).astype(np.int64)
    hi = np.ceil((t + half - off) * rate_hz - 1e-9).astype(np.int64)
    lo, hi = np.clip(lo, 0, T) - first, np.clip(hi, 0, T) - first
    if lo.min() < 0 or hi.max() > f.shape[0]:  # pragma: no cover - a FrameStream bug
        raise AssertionError(f"native frames {lo.min() + first}..{hi.max() + first} needed, "
                             f"{first}..{first + f.shape[0]} held")
    csum = np.concatenate([np.zeros((1, dim)), np.cumsum(f, axis=0, dtype=np.float64)])
    cnt = hi - lo
    good = cnt > 0
    out[good] = ((csum[hi[good]] - csum[lo[good]]) / cnt[good, None]).astype(np.float32)
    empty = np.flatnonzero(~good)
    if empty.size:
        out[empty] = interp(empty).astype(np.float32)
    return out


class FrameStream:
    """Per-video-frame speech features computed lazily, for streaming generation.

    `read(n)` returns the next n video frames' features (n, dim) float32, equal (up to float
    error) to the same rows of ``align_to_frames(np.concatenate(list(blocks)), rate_hz,
    n_frames, fps, offset_s)``. `blocks` is an iterator of consecutive native feature blocks
    (an extractor's `stream(wav)`); it is advanced only as far as the frames asked for need:
    the native frames of their windows, and the two around each frame's time for the ones
    that are interpolated (native rate below fps, a window past the end of the audio). The
    native frames no later video frame needs are dropped, so memory is a block or two of
    native frames, whatever the length of the audio. `native_read`: native frames taken from
    `blocks` so far; `exhausted`: whether `blocks` has ended.
    """

    def __init__(self, blocks, rate_hz: float, n_frames: int, fps: float,
                 offset_s: float | None = None, dim: int | None = None):
        self.rate_hz, self.fps, self.offset_s = _check_rates(rate_hz, fps, offset_s, "FrameStream")
        self.n_frames = max(0, int(n_frames))
        self.dim = dim
        self.pos = 0                                 # next video frame
        self.native_read = 0                         # = global index past the held frames
        self.exhausted = False
        self._blocks = iter(blocks)
        self._held: list[np.ndarray] = []            # native frames first .. native_read - 1
        self._first = 0

    def _pull(self, need: int) -> None:
        while self.native_read < need and not self.exhausted:
            try:
                b = np.asarray(next(self._blocks), dtype=np.float32)
            except StopIteration:
                self.exhausted = True
                break
            if b.ndim == 1:
                b = b[:, None]
            if self.dim is None:
                self.dim = b.shape[1]
            if len(b):
                self._held.append(b)
                self.native_read += len(b)

    def _bounds(self, f: int) -> tuple[int, int]:
        """(first, end) native frames video frame f may need (see the class docstring)."""
        x = (f / self.fps - self.offset_s) * self.rate_hz
        j = math.floor(x)                            # interpolation bracket j, j + 1
        end = max(j + 2, 1)                          # before the first centre: frame 0
        if self.rate_hz < self.fps:
            return j, end
        h = 0.5 / self.fps * self.rate_hz
        return min(j, math.ceil(x - h - 1e-9)), max(end, math.ceil(x + h - 1e-9))

    def read(self, n: int) -> np.ndarray:
        """The next n video frames (fewer at the end): (n, dim) float32."""
        n = max(0, min(int(n), self.n_frames - self.pos))
        f0, f1 = self.pos, self.pos + n
        self._pull(self._bounds(f1 - 1)[1] + 1 if n else 0)  # + 1: float slack
        held = np.concatenate(self._held) if len(self._held) > 1 else \
            self._held[0] if self._held else np.zeros((0, self.dim or 0), np.float32)
        t = np.arange(f0, f1, dtype=np.float64) / self.fps
        out = _align_rows(held, self._first, self.native_read, t, self.rate_hz, self.fps,
                          self.offset_s) if n else np.zeros((0, held.shape[1]), np.float32)
        self.pos = f1
        # drop what no later frame needs (2 frames of slack; the last frame is always kept
        # for the clamped interpolation past the end)
        keep = min(max(0, self._bounds(f1)[0] - 2), max(0, self.native_read - 1))
        if keep > self._first:
            held = held[keep - self._first:]
            self._first = keep
        self._held = [held] if len(held) else []
        return out


def stream_frames(fx, wav: np.ndarray, n_frames: int, fps: float, **stream_kwargs) -> FrameStream:
    """`FrameStream` over `fx.stream(wav)`: the per-video-frame features of
    ``align_to_frames(fx(wav), fx.rate_hz, n_frames, fps, offset_s=fx.offset_s)``, computed
    as they are read."""
    return FrameStream(fx.stream(wav, **stream_kwargs), fx.rate_hz, n_frames, fps,
                       offset_s=getattr(fx, "offset_s", None), dim=int(fx.dim))
