"""One "time 0" per file (issue 11 A): copies of a real clip whose streams do not start at 0
give the same audio statistics, the same shard audio and the same infer audio as the clip.

Each shifted copy is one ffmpeg command from ../shared/media/video/aoc_talking.mp4 (skipped
when that folder or ffmpeg is absent):
- ts10.mp4: `-c copy -output_ts_offset 10` (video starts at 10.0 s, audio at 9.936 s);
- a.ts: re-encoded to H.264 then remuxed to MPEG-TS (video at 1.464 s, audio at 1.400 s);
- a.mkv: remuxed to Matroska (video at 0.064 s, audio at 0).
The audio statistics are computed by `analyse._audio_stats`, the shard audio by
`shard.shifted_audio`, the infer audio by `media_io.read_audio`: the functions the pipelines
call, on the files.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from conftest import media

SR = 16000


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not found")
    src = media("video", "aoc_talking.mp4")
    d = tmp_path_factory.mktemp("timeline")
    _ffmpeg("-i", src, "-c", "copy", "-output_ts_offset", "10", d / "ts10.mp4")
    _ffmpeg("-i", src, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", d / "h.mp4")
    _ffmpeg("-i", d / "h.mp4", "-c", "copy", "-f", "mpegts", d / "a.ts")
    _ffmpeg("-i", src, "-c", "copy", d / "a.mkv")
    return src, {name: d / name for name in ("ts10.mp4", "a.ts", "a.mkv")}


def _lag_samples(ref: np.ndarray, x: np.ndarray, max_lag: int) -> int:
    """Lag (samples) of x behind ref maximising their cross-correlation; + = x is late."""
    n = min(len(ref), len(x)) - 2 * max_lag
    assert n > SR, "windows too short to correlate"
    core = ref[max_lag:max_lag + n]
    scores = [float(np.dot(core, x[max_lag + k:max_lag + k + n])) for k in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


@pytest.fixture(scope="module")
def stats_fn():
    from ifmdm_data.filter.analyse import _audio_stats
    from ifmdm_data.media.vad import SpeechDetector
    from ifmdm_data.filter.config import load_config

    cfg = load_config()
    speech = SpeechDetector(cfg.audio.vad_threshold)

    def stats(path, start_s=0.0, end_s=8.0):
        t = np.arange(start_s, end_s, 1.0 / cfg.analysis.fps)
        unit = {"path": str(path), "probe": {"has_audio": True}}
        return _audio_stats(unit, start_s, end_s, t, np.zeros(len(t), np.float32), cfg, speech)
    return stats


@pytest.mark.parametrize("name", ["ts10.mp4", "a.ts", "a.mkv"])
def test_filter_audio_stats_match_source(shifted, stats_fn, name):
    src, files = shifted
    ref, got = stats_fn(src), stats_fn(files[name])
    assert ref["speech_ratio"] > 0.5 and ref["loudness_db"] > -40  # the clip itself is speech
    assert got["audio_error"] == ""
    assert abs(got["speech_ratio"] - ref["speech_ratio"]) <= 0.02, (got, ref)
    assert abs(got["loudness_db"] - ref["loudness_db"]) <= 0.5, (got, ref)


@pytest.mark.parametrize("name", ["ts10.mp4", "a.ts", "a.mkv"])
def test_shard_audio_lines_up_with_source(shifted, name):
    from ifmdm_data.shard.segment import shifted_audio

    src, files = shifted
    ref = shifted_audio(str(src), 2.0, 4.0)
    got = shifted_audio(str(files[name]), 2.0, 4.0)
    assert len(got) == len(ref) == 4 * SR
    assert np.abs(got).max() > 0.01, "the shard wav is silent"
    lag = _lag_samples(ref, got, max_lag=SR // 2)
    assert abs(lag) <= 0.020 * SR, f"{name}: shard audio lags the source's by {lag / SR * 1000:.0f} ms"


def test_infer_audio_has_no_leading_silence(shifted, tmp_path):
    """`ifmdm-infer --audio` reads through `read_audio`: a video with a 10 s timestamp offset,
    and an audio-only file with a 5 s offset, give the stream's audio and nothing before it."""
    from ifmdm_model.infer.media_io import read_audio

    src, files = shifted
    ref = read_audio(src)
    got = read_audio(files["ts10.mp4"])
    assert abs(len(got) - len(ref)) <= 0.040 * SR          # one 25 fps frame
    assert _lag_samples(ref[:5 * SR], got[:5 * SR], max_lag=SR // 2) == pytest.approx(0, abs=0.020 * SR)

    # audio-only: what ffmpeg itself decodes from the file (its first sample at 0; an AAC
    # remux may expose the 64 ms encoder priming, and ffmpeg keeps it too)
    wav = media("audio", "speech_en_16k_mono.wav")
    _ffmpeg("-i", wav, "-c:a", "aac", tmp_path / "plain.m4a")
    _ffmpeg("-i", tmp_path / "plain.m4a", "-c", "copy", "-output_ts_offset", "5", tmp_path / "off5.m4a")
    _ffmpeg("-i", tmp_path / "off5.m4a", tmp_path / "ffmpeg.wav")
    ref, got = read_audio(tmp_path / "ffmpeg.wav"), read_audio(tmp_path / "off5.m4a")
    assert abs(len(got) - len(ref)) <= 0.040 * SR, (len(got), len(ref))
    assert _lag_samples(ref[:5 * SR], got[:5 * SR], max_lag=SR // 2) == pytest.approx(0, abs=0.020 * SR)


# ---- smaller offsets (issue 11 A): a video stream starting at 33 ms, an MP3 encoder delay
SUIT_V0 = 0.033008          # man_suit_static_talking.mp4: video at 0.033 s, audio at 0


@pytest.fixture(scope="module")
def suit(tmp_path_factory):
    """man_suit_static_talking.mp4, its MP3-audio copy (video copied, audio re-encoded with
    libmp3lame: an encoder delay), and the file's audio as ffmpeg decodes it to a wav (its
    first sample at the audio stream's start, time 0 of the file's audio)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not found")
    src = media("video", "man_suit_static_talking.mp4")
    d = tmp_path_factory.mktemp("suit")
    _ffmpeg("-i", src, "-c:v", "copy", "-c:a", "libmp3lame", "-q:a", "2", d / "mp3.mp4")
    _ffmpeg("-i", src, "-vn", "-ac", "1", "-ar", str(SR), "-c:a", "pcm_f32le", d / "ref.wav")
    return src, d / "mp3.mp4", d / "ref.wav"


def _wav(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float32)


def test_video_starting_at_33ms_shard_audio_lines_up(suit):
    """Time 0 is the video's first frame (0.033 s into the audio): the shard's [2, 6) s is
    the audio at [2.033, 6.033) of the stream, +-20 ms (ignoring the offset gives 33 ms)."""
    import av

    from ifmdm_data.shard.segment import shifted_audio

    src, _, ref_wav = suit
    with av.open(str(src)) as c:
        v0 = float(c.streams.video[0].start_time * c.streams.video[0].time_base)
        a0 = float(c.streams.audio[0].start_time * c.streams.audio[0].time_base)
    assert v0 - a0 == pytest.approx(SUIT_V0, abs=1e-3)            # the input is what it says
    got = shifted_audio(str(src), 2.0, 4.0)
    full = _wav(ref_wav)
    i0 = int(round((2.0 + v0 - a0) * SR))
    ref = full[i0:i0 + 4 * SR]
    assert len(got) == len(ref) == 4 * SR and np.abs(got).max() > 0.01
    lag = _lag_samples(ref, got, max_lag=SR // 4)
    assert abs(lag) <= 0.020 * SR, f"shard audio lags the stream by {lag / SR * 1000:.0f} ms"


def test_mp3_encoder_delay_removed(suit, stats_fn):
    """The MP3 copy's shard audio lines up with the source's and with the stream as ffmpeg
    decodes it (+-20 ms: the 1105-sample encoder delay, 25 ms, is trimmed), from the start of
    the file (where the priming is), and its speech statistics match (speech_ratio +-0.02)."""
    from ifmdm_data.shard.segment import shifted_audio

    src, mp3, ref_wav = suit
    ref, got = shifted_audio(str(src), 0.0, 4.0), shifted_audio(str(mp3), 0.0, 4.0)
    assert len(got) == len(ref) == 4 * SR and np.abs(got).max() > 0.01
    lag = _lag_samples(ref, got, max_lag=SR // 4)
    assert abs(lag) <= 0.020 * SR, f"MP3 shard audio lags the source's by {lag / SR * 1000:.0f} ms"
    i0 = int(round(SUIT_V0 * SR))
    lag = _lag_samples(_wav(ref_wav)[i0:i0 + 4 * SR], got, max_lag=SR // 4)
    assert abs(lag) <= 0.020 * SR, f"MP3 shard audio lags the stream by {lag / SR * 1000:.0f} ms"
    s_ref, s_got = stats_fn(src, 0.0, 6.0), stats_fn(mp3, 0.0, 6.0)
    assert s_ref["speech_ratio"] > 0.5 and s_got["audio_error"] == ""
    assert abs(s_got["speech_ratio"] - s_ref["speech_ratio"]) <= 0.02, (s_got, s_ref)
    assert abs(s_got["loudness_db"] - s_ref["loudness_db"]) <= 0.5, (s_got, s_ref)
