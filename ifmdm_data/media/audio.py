"""Audio side of the `filter` stage: decoding, speech presence, loudness, audio-visual sync.

Everything here is a pure function except `SpeechDetector`, which holds the silero-vad model
(shipped inside the silero-vad wheel, so it loads offline). All functions accept odd input
(empty arrays, silence, NaN, very short clips) and return neutral values instead of raising:
speech ratio 0, loudness -120 dBFS, correlation NaN. The only exceptions are the `ClipError`s
of `load_audio`, which become `stage2_reasons` rows.

Time convention: `start_s`/`end_s` and the `times` of `envelope` are seconds from the file's
time 0 as `timeline.time_origin_s` defines it (the video stream's first frame; the audio's first
sample when there is no video), which is the timeline video frames use too.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np

from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Stage2Reason
from ifmdm_data.media.timeline import stream_start_s, time_origin_s

DB_FLOOR = -120.0
VAD_RATES = (8000, 16000)
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

    from ifmdm_data.filter.inputs import fs_path
    from ifmdm_data.media.video import main_streams

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


# --------------------------------------------------------------------------------------------
# speech presence


def _as_mono(wav) -> np.ndarray:
    """float32 1-D copy with NaN/inf replaced by 0 (channels averaged when 2-D)."""
    a = np.asarray(wav, dtype=np.float32)
    if a.ndim == 0:
        a = a.reshape(1)
    elif a.ndim == 2:  # the shorter axis holds the channels
        a = a.mean(axis=int(np.argmin(a.shape)))
    elif a.ndim > 2:
        a = a.reshape(-1)
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _resample_for_vad(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    if sample_rate in VAD_RATES:
        return wav, sample_rate
    from scipy.signal import resample_poly
    frac = Fraction(16000, int(sample_rate))
    out = resample_poly(wav, frac.numerator, frac.denominator).astype(np.float32)
    return out, 16000


class SpeechDetector:
    """silero-vad speech detector (the jit model shipped in the silero-vad wheel).

    Load once per worker and reuse; not safe to share between threads (the model is
    recurrent and keeps state). Importing silero_vad calls torch.set_num_threads(1) as a
    side effect; this class restores the caller's thread count after the import.
    Audio at any rate is accepted: rates other than 8/16 kHz are resampled to 16 kHz.
    """

    def __init__(self, threshold: float = 0.5):
        import torch
        n_threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
            from silero_vad.utils_vad import get_speech_timestamps_from_probs
        finally:
            torch.set_num_threads(n_threads)
        with warnings.catch_warnings():
            # torch.jit.load and importlib.resources.path deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = load_silero_vad(onnx=False)
        self.threshold = float(threshold)
        self._from_probs = get_speech_timestamps_from_probs
        self._torch = torch

    def speech_probs(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        """Per-window speech probabilities and the window hop in samples at the VAD rate
        (512 samples = 32 ms at 16 kHz, 256 at 8 kHz). Returns (probs, hop) with the VAD
        rate implied: hop 512 -> 16 kHz, hop 256 -> 8 kHz."""
        a, sr = _resample_for_vad(_as_mono(wav), int(sample_rate))
        hop = 512 if sr == 16000 else 256
        if len(a) == 0:
            return np.zeros(0, dtype=np.float32), hop
        if len(a) < hop:  # the model refuses less than one window
            a = np.concatenate([a, np.zeros(hop - len(a), dtype=np.float32)])
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        with torch.inference_mode():
            if hasattr(self.model, "audio_forward"):
                probs = self.model.audio_forward(x.unsqueeze(0), sr)[0].numpy()
            else:  # pragma: no cover - other model flavours
                self.model.reset_states()
                pad = (-len(a)) % hop
                x = torch.nn.functional.pad(x, (0, pad))
                probs = np.array([self.model(x[i:i + hop], sr).item()
                                  for i in range(0, len(x), hop)], dtype=np.float32)
        return np.asarray(probs, dtype=np.float32).reshape(-1), hop

    def speech_segments(self, wav: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
        """Speech segments as (start_s, end_s) seconds relative to the start of `wav`,
        sorted, non-overlapping, clipped to the duration. Empty for empty/silent input."""
        sample_rate = int(sample_rate)
        if sample_rate <= 0:
            return []
        a = _as_mono(wav)
        duration = len(a) / sample_rate
        if len(a) == 0 or not np.any(a):
            return []
        probs, hop = self.speech_probs(a, sample_rate)
        vad_sr = 16000 if hop == 512 else 8000
        n_vad = int(round(duration * vad_sr))
        stamps = self._from_probs(
            probs.tolist(), sampling_rate=vad_sr, threshold=self.threshold,
            return_seconds=False, audio_length_samples=n_vad)
        segs = []
        for s in stamps:
            t0 = max(0.0, s["start"] / vad_sr)
            t1 = min(duration, s["end"] / vad_sr)
            if t1 > t0:
                if segs and t0 <= segs[-1][1]:
                    segs[-1] = (segs[-1][0], max(segs[-1][1], t1))
                else:
                    segs.append((t0, t1))
        return segs

    def speech_ratio(self, wav: np.ndarray, sample_rate: int) -> float:
        """Fraction of the duration of `wav` inside speech segments, in [0, 1]."""
        sample_rate = int(sample_rate)
        a = _as_mono(wav)
        if sample_rate <= 0 or a.size == 0:
            return 0.0
        duration = len(a) / sample_rate
        covered = sum(t1 - t0 for t0, t1 in self.speech_segments(a, sample_rate))
        return float(min(1.0, max(0.0, covered / duration)))


# --------------------------------------------------------------------------------------------
# loudness and envelope


def loudness_dbfs(wav: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS),
    floored at -120 (silence, empty input). NaN/inf samples count as 0."""
    a = _as_mono(wav).astype(np.float64)
    if a.size == 0:
        return DB_FLOOR
    rms = math.sqrt(float(np.mean(a * a)))
    if rms <= 0.0 or not math.isfinite(rms):
        return DB_FLOOR
    return float(max(DB_FLOOR, 20.0 * math.log10(rms)))


def bandpass_speech(wav: np.ndarray, sample_rate: int, low_hz: float = 80.0,
                    high_hz: float = 4000.0) -> np.ndarray:
    """Zero-phase 4th-order Butterworth band-pass (default 80-4000 Hz, the top edge capped
    below Nyquist). Inputs too short for filtfilt's padding come back unfiltered."""
    from scipy.signal import butter, sosfiltfilt
    a = _as_mono(wav).astype(np.float64)
    sample_rate = int(sample_rate)
    nyq = sample_rate / 2.0
    if a.size == 0 or sample_rate <= 0:
        return a
    high = min(float(high_hz), 0.45 * sample_rate)
    low = float(low_hz)
    if low <= 0 or low >= high:
        return a
    sos = butter(4, [low / nyq, high / nyq], btype="bandpass", output="sos")
    padlen = 3 * (2 * len(sos) + 1)
    if a.size <= padlen:
        return a
    return sosfiltfilt(sos, a)


def envelope(wav: np.ndarray, sample_rate: int, times: np.ndarray,
             win_s: float = 0.04) -> np.ndarray:
    """Speech amplitude envelope at `times` (seconds from the start of `wav`).

    The audio is band-passed to 80-4000 Hz (rumble and hiss count less), then for each
    time the RMS in a window of `win_s` centred on it is taken and log-compressed:
    log(rms + 1e-4) (natural log; silence -> about -9.2). Windows partly outside the audio
    use the overlapping part; a window entirely outside the audio gives NaN (so `av_sync`
    ignores those frames). Returns float64 of the same length as `times`.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.full(t.shape, np.nan)
    sample_rate = int(sample_rate)
    a = _as_mono(wav)
    if t.size == 0 or a.size == 0 or sample_rate <= 0:
        return out
    x = bandpass_speech(a, sample_rate)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    half = max(float(win_s), 1.0 / sample_rate) / 2.0
    ok = np.isfinite(t)
    lo = np.zeros(t.shape, dtype=np.int64)
    hi = np.zeros(t.shape, dtype=np.int64)
    lo[ok] = np.clip(np.round((t[ok] - half) * sample_rate), 0, a.size).astype(np.int64)
    hi[ok] = np.clip(np.round((t[ok] + half) * sample_rate), 0, a.size).astype(np.int64)
    good = ok & (hi > lo)
    n = (hi[good] - lo[good]).astype(np.float64)
    energy = np.maximum(csum[hi[good]] - csum[lo[good]], 0.0)  # cumsum round-off can dip < 0
    out[good] = np.log(np.sqrt(energy / n) + 1e-4)
    return out


# --------------------------------------------------------------------------------------------
# audio-visual agreement


_NAN_SYNC = {"av_corr": float("nan"), "av_lag_s": float("nan"), "av_corr_zero": float("nan")}


def _nan_moving_mean(x: np.ndarray, win: int) -> np.ndarray:
    """Centred moving mean over `win` samples that ignores NaN (NaN where no valid sample)."""
    valid = np.isfinite(x)
    v = np.where(valid, x, 0.0)
    kernel = np.ones(win)
    s = np.convolve(v, kernel, mode="same")
    c = np.convolve(valid.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1e-12), np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if den <= 1e-12 * max(1, x.size) or not math.isfinite(den):
        return float("nan")
    return float(np.clip(np.dot(x, y) / den, -1.0, 1.0))


def av_sync(mouth: np.ndarray, env: np.ndarray, fps: float, max_lag_s: float = 0.4,
            min_overlap_s: float = 2.0, detrend_s: float | None = 1.0) -> dict:
    """Audio-visual agreement between a mouth-opening series and the speech envelope.

    Both series are sampled at the same times, `fps` per second (the longer one is cut to
    the shorter). Each is detrended (its ~`detrend_s` centred moving average subtracted,
    so slow loudness drift does not dominate; None or 0 disables) and the Pearson
    correlation (z-scored signals, no derivatives) is taken at every integer-frame lag L in
    [-max_lag_s, max_lag_s] over the pairs (mouth[i], env[i + L]) where both are finite:
    NaN frames (no face, audio missing) are excluded pairwise. A lag needs at least
    `min_overlap_s` seconds of valid pairs, else its correlation is NaN.

    Returns {'av_corr': the best (largest) correlation, 'av_lag_s': its lag in seconds,
    positive when the audio lags the video (the sound comes after the mouth moves),
    'av_corr_zero': the correlation at lag 0}. All NaN when no lag has enough overlap or a
    signal is constant. Ties go to the smallest |lag|.
    """
    try:
        fps = float(fps)
        max_lag_s = float(max_lag_s)
    except (TypeError, ValueError):
        return dict(_NAN_SYNC)
    if not (math.isfinite(fps) and fps > 0 and math.isfinite(max_lag_s)):
        return dict(_NAN_SYNC)
    m = np.asarray(mouth, dtype=np.float64).reshape(-1)
    e = np.asarray(env, dtype=np.float64).reshape(-1)
    n = min(m.size, e.size)
    m = np.where(np.isfinite(m[:n]), m[:n], np.nan)
    e = np.where(np.isfinite(e[:n]), e[:n], np.nan)
    min_pairs = max(3, int(math.ceil(min_overlap_s * fps - 1e-9)))
    if n < min_pairs:
        return dict(_NAN_SYNC)
    if detrend_s:
        win = max(3, int(round(detrend_s * fps)) | 1)  # odd, >= 3 frames
        if win < n:
            m = m - _nan_moving_mean(m, win)
            e = e - _nan_moving_mean(e, win)

    k = max(0, int(math.floor(abs(max_lag_s) * fps + 1e-9)))
    lags = np.arange(-k, k + 1)
    corrs = np.full(lags.shape, np.nan)
    for j, lag in enumerate(lags):
        if lag >= 0:
            mm, ee = m[:n - lag], e[lag:]
        else:
            mm, ee = m[-lag:], e[:n + lag]
        both = np.isfinite(mm) & np.isfinite(ee)
        if int(both.sum()) < min_pairs:
            continue
        corrs[j] = _pearson(mm[both], ee[both])

    zero = float(corrs[k])
    if not np.any(np.isfinite(corrs)):
        return {"av_corr": float("nan"), "av_lag_s": float("nan"), "av_corr_zero": zero}
    best_val = np.nanmax(corrs)
    cand = np.flatnonzero(np.isfinite(corrs) & (corrs >= best_val - 1e-12))
    best = cand[np.argmin(np.abs(lags[cand]))]
    return {"av_corr": float(corrs[best]), "av_lag_s": float(lags[best] / fps),
            "av_corr_zero": zero}


MOTION_RATE_HZ = 25.0        # the uniform grid the dense lip-motion track is resampled to
MOTION_DETREND_S = 2.0       # its detrending window (bench clips, prototype: 1 s AUC 0.93, 2 s 0.965)
# The mouth moves before the sound it shapes: on the real talking clips the motion energy
# leads the speech envelope by 0.04-0.4 s (median 0.2 s). The lag search is centred on this
# lead, and av_lag_s is reported relative to it.
MOTION_LEAD_S = 0.16
# The built-in score (`analyse.av_score`) is a weighted mean of the lip-motion score (weight
# 1 - this) and the landmark mouth-opening score at the analysis rate (this). On the real
# clips (benchmarks/av_sync_bench.py, segments >= 2.5 s) the lip motion carries it: AUC
# 0.945 alone, 0.965 blended, 0.625 landmark alone; on mouths that open exactly with the
# loudness (the synthetic sample set) the landmark score is the stronger one.
AV_LANDMARK_WEIGHT = 0.3


def resample_track(t: np.ndarray, x: np.ndarray, start_s: float, end_s: float, rate: float,
                   max_gap_s: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values): an irregularly sampled track (times `t`, values `x`; NaN ignored)
    linearly interpolated onto the uniform grid start_s, start_s + 1/rate, ... < end_s. Grid
    points outside the samples' span or in a gap longer than `max_gap_s` are NaN; an infinite
    end_s ends the grid at the last sample."""
    t = np.asarray(t, np.float64).reshape(-1)
    x = np.asarray(x, np.float64).reshape(-1)[:t.size]
    ok = np.isfinite(t) & np.isfinite(x)
    t, x = t[ok], x[ok]
    end = min(float(end_s), float(t.max()) + 1.0 / float(rate)) if t.size else float(start_s)
    g = np.arange(float(start_s), end - 1e-9, 1.0 / float(rate)) if end > start_s else np.zeros(0)
    out = np.full(g.shape, np.nan)
    if t.size < 2:
        return g, out
    y = np.interp(g, t, x)
    lo = np.clip(np.searchsorted(t, g, "right") - 1, 0, t.size - 1)   # last sample <= g
    hi = np.clip(np.searchsorted(t, g, "left"), 0, t.size - 1)        # first sample >= g
    gap = t[hi] - t[lo]
    inside = (g >= t[0]) & (g <= t[-1]) & (gap <= max_gap_s)
    out[inside] = y[inside]
    return g, out


def motion_sync(t: np.ndarray, motion: np.ndarray, wav: np.ndarray, sample_rate: int,
                start_s: float, end_s: float, max_lag_s: float = 0.4,
                rate: float = MOTION_RATE_HZ, detrend_s: float = MOTION_DETREND_S,
                lead_s: float = MOTION_LEAD_S) -> dict:
    """`av_sync` of the lip-motion energy of every decoded frame (`signals.DenseMouth`: times
    `t` in seconds from the start of the file, `motion`) against the speech envelope of
    `wav` (which starts at `start_s`): both on a uniform `rate` grid over [start_s, end_s)
    (`resample_track`; the envelope at the grid times), detrended over `detrend_s`, offset
    search within +-max_lag_s in 1/rate steps around `lead_s` (the motion at time t is paired
    with the envelope at t + lead_s + lag). Same keys as `av_sync`; av_lag_s and
    av_corr_zero are relative to the lead."""
    g, m = resample_track(np.asarray(t, np.float64) + float(lead_s), motion, start_s, end_s, rate)
    if g.size == 0:
        return dict(_NAN_SYNC)
    env = envelope(wav, sample_rate, g - float(start_s))
    return av_sync(m, env, rate, max_lag_s, detrend_s=detrend_s)
