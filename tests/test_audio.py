"""Tests for ifmdm_data.media.audio: decoding, VAD, loudness, envelope, audio-visual sync.

Real-media tests use the shared sample media (../shared/media next to the repository) and
skip when it is absent. The speech-ratio bounds below come from measurements on those files
(silero-vad 6.2.3, threshold 0.5, 16 kHz): talking clips 0.61-0.98, the ambient clip 0.00,
the music clip 0.08 over its 33.6 s, 0.26 over 0-10 s, 0.31 over 5-15 s (it has ~3 s of
voice-like sound at 1.5-4.8 s).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ifmdm_data.media.vad import SpeechDetector
from ifmdm_data.media.avsync import av_sync
from ifmdm_data.media.loudness import envelope, loudness_dbfs
from ifmdm_data.media.audio import load_audio
from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Stage2Reason

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
needs_media = pytest.mark.skipif(
    not MEDIA.is_dir(), reason=f"shared sample media not found at {MEDIA} (../shared/media)")

SR = 16000
SPEECH_MIN = 0.5       # every talking clip / speech file is above this
NON_SPEECH_MAX = 0.4   # ambient and music (any 10 s slice) are below this

SPEECH_AUDIO = {  # file -> duration in seconds (from the WAV headers)
    "speech_en_16k_mono.wav": 9.6,
    "speech_ja_48k_s24.wav": 436436 / 48000,
    "speech_en_44k_stereo.wav": 7.5,
}
SPEECH_VIDEOS = ["aoc_talking.mp4", "man_suit_static_talking.mp4", "woman_quiet_talking.mp4",
                 "woman_fullbody_smallface_hevc.mp4", "man_halfbody_talking_hevc.mp4",
                 "man_talking_2s.mp4"]


@pytest.fixture(scope="module")
def detector():
    # One thread, as a worker runs it: the VAD steps a tiny model through 32 ms windows, and
    # several OpenMP threads on a busy machine only slow it down.
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield SpeechDetector(threshold=0.5)
    torch.set_num_threads(n)


def smooth_noise(n, rng, width=5):
    """A random smooth series (moving-average-filtered white noise), like a speech envelope."""
    x = rng.standard_normal(n + 4 * width)
    k = np.hanning(2 * width + 1)
    return np.convolve(x, k / k.sum(), mode="same")[2 * width:2 * width + n]


# ------------------------------------------------------------------------------- load_audio

@needs_media
@pytest.mark.parametrize("name", sorted(SPEECH_AUDIO))
def test_load_audio_wav_length_and_range(name):
    path = MEDIA / "audio" / name
    dur = SPEECH_AUDIO[name]
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - round(dur * SR)) <= 2
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    exact = load_audio(path, 0.0, dur)
    assert len(exact) == round(dur * SR)
    part = load_audio(path, 1.25, 3.5)
    assert len(part) == round(2.25 * SR)


@needs_media
def test_stereo_downmix_is_channel_mean():
    # FFmpeg's own stereo->mono matrix is (L+R)/sqrt(2) (+3 dB); we want the channel mean.
    sf = pytest.importorskip("soundfile")
    path = MEDIA / "audio" / "speech_en_44k_stereo.wav"
    ref, sr = sf.read(str(path), dtype="float32")
    wav = load_audio(path, sample_rate=sr)  # same rate: no resampling, only the downmix
    n = min(len(ref), len(wav))
    np.testing.assert_allclose(wav[:n], ref.mean(axis=1)[:n], atol=1e-4)


@needs_media
def test_load_audio_slice_matches_full_decode():
    path = MEDIA / "video" / "aoc_talking.mp4"  # AAC at 16 kHz: no resampling, exact match
    full = load_audio(path)
    part = load_audio(path, 3.0, 5.0)
    np.testing.assert_allclose(part, full[3 * SR:5 * SR], atol=1e-5)
    # 44.1 kHz AAC: seeking changes the resampling phase by < 1 sample, not the alignment
    path = MEDIA / "video" / "woman_quiet_talking.mp4"
    full = load_audio(path)
    part = load_audio(path, 3.0, 5.0)
    assert len(part) == 2 * SR
    assert np.corrcoef(part, full[3 * SR:5 * SR])[0, 1] > 0.95


@needs_media
def test_load_audio_pads_past_the_end_and_handles_odd_ranges():
    path = MEDIA / "video" / "aoc_talking.mp4"  # 8.0 s of audio
    wav = load_audio(path, 7.0, 9.0)
    assert len(wav) == 2 * SR
    assert np.abs(wav[:SR // 2]).max() > 0 and not np.any(wav[-SR // 2:])
    after = load_audio(path, 20.0, 21.0)
    assert len(after) == SR and not np.any(after)
    assert len(load_audio(path, 2.0, 2.0)) == 0
    assert len(load_audio(path, 3.0, 1.0)) == 0
    assert len(load_audio(path, -1.0, 1.0)) == SR  # negative start counts from 0
    assert len(load_audio(path, 7.5, float("nan"))) == SR // 2  # NaN end: to the end


@needs_media
@pytest.mark.parametrize("name", ["man_expressions_noaudio.mp4", "sintel_cuts_noaudio.mp4"])
def test_no_audio_stream(name):
    with pytest.raises(ClipError) as ei:
        load_audio(MEDIA / "video" / name)
    assert ei.value.reason == Stage2Reason.NO_AUDIO


def test_not_media_is_audio_decode_error(tmp_path):
    # A file that does not open as media: we cannot tell whether it has audio, so it is a
    # decode error (stage 1 rejects it as `decode_error` too), not `no_audio`.
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (fake, empty, tmp_path / "missing.mp4"):
        with pytest.raises(ClipError) as ei:
            load_audio(path)
        assert ei.value.reason == Stage2Reason.AUDIO_DECODE_ERROR
        assert ei.value.detail


# ------------------------------------------------------------------------------- VAD

@needs_media
@pytest.mark.parametrize("name", sorted(SPEECH_AUDIO))
def test_speech_files_have_speech(detector, name):
    wav = load_audio(MEDIA / "audio" / name)
    assert detector.speech_ratio(wav, SR) > SPEECH_MIN


@needs_media
@pytest.mark.parametrize("name", SPEECH_VIDEOS)
def test_talking_videos_have_speech(detector, name):
    wav = load_audio(MEDIA / "video" / name)
    segs = detector.speech_segments(wav, SR)
    assert segs and all(0 <= a < b <= len(wav) / SR + 1e-6 for a, b in segs)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(segs, segs[1:]))
    assert detector.speech_ratio(wav, SR) > SPEECH_MIN


@needs_media
def test_quiet_speech_is_still_speech(detector):
    wav = load_audio(MEDIA / "video" / "woman_quiet_talking.mp4")
    assert -40.0 < loudness_dbfs(wav) < -30.0  # about -35 dBFS
    assert detector.speech_ratio(wav, SR) > SPEECH_MIN


@needs_media
def test_ambient_and_music_are_not_speech(detector):
    ambient = load_audio(MEDIA / "video" / "woman_static_ambient.mp4")
    assert detector.speech_ratio(ambient, SR) < 0.1  # measured 0.00
    music = MEDIA / "video" / "woman_faces_music_34s.mp4"
    assert detector.speech_ratio(load_audio(music), SR) < 0.2  # measured 0.08
    for start in (0.0, 10.0, 20.0):  # 0-10 s holds the most voice-like sound: 0.26
        assert detector.speech_ratio(load_audio(music, start, start + 10.0), SR) < NON_SPEECH_MAX


def test_vad_robust_to_odd_input(detector):
    rng = np.random.default_rng(0)
    assert detector.speech_segments(np.zeros(0, np.float32), SR) == []
    assert detector.speech_ratio(np.zeros(0, np.float32), SR) == 0.0
    assert detector.speech_ratio(np.zeros(SR * 2, np.float32), SR) == 0.0
    assert detector.speech_ratio(np.full(SR, np.nan, np.float32), SR) == 0.0
    assert detector.speech_ratio(np.zeros(100, np.float32), SR) == 0.0
    short = (0.01 * rng.standard_normal(100)).astype(np.float32)
    assert 0.0 <= detector.speech_ratio(short, SR) <= 1.0
    assert detector.speech_ratio(np.zeros(SR), 0) == 0.0
    noise = (0.05 * rng.standard_normal(SR * 2)).astype(np.float32)
    noise[::7] = np.nan
    for sr in (8000, 16000, 22050, 44100, 48000):
        assert 0.0 <= detector.speech_ratio(noise, sr) <= 1.0
    stereo = np.stack([noise, noise])  # (channels, n) is averaged
    assert 0.0 <= detector.speech_ratio(stereo, SR) <= 1.0


@needs_media
def test_vad_resamples_other_rates(detector):
    path = MEDIA / "audio" / "speech_en_44k_stereo.wav"
    at16 = detector.speech_ratio(load_audio(path, sample_rate=16000), 16000)
    at44 = detector.speech_ratio(load_audio(path, sample_rate=44100), 44100)
    at48 = detector.speech_ratio(load_audio(path, sample_rate=48000), 48000)
    assert abs(at44 - at16) < 0.1 and abs(at48 - at16) < 0.1


def test_detector_keeps_callers_thread_count():
    # `import silero_vad` calls torch.set_num_threads(1); SpeechDetector undoes that.
    code = ("import torch; torch.set_num_threads(2);"
            "from ifmdm_data.media.vad import SpeechDetector; SpeechDetector();"
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "2"


# ------------------------------------------------------------------------------- loudness

def test_loudness():
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    assert loudness_dbfs(sine) == pytest.approx(-3.01, abs=0.05)
    assert loudness_dbfs(0.1 * sine) == pytest.approx(-23.01, abs=0.05)
    assert loudness_dbfs(np.ones(100)) == pytest.approx(0.0)
    assert loudness_dbfs(np.zeros(SR)) == -120.0
    assert loudness_dbfs(np.zeros(0)) == -120.0
    assert loudness_dbfs(np.full(10, np.nan)) == -120.0
    assert loudness_dbfs(np.full(10, 1e-9)) == -120.0
    with_nan = sine.copy()
    with_nan[::2] = np.nan
    assert np.isfinite(loudness_dbfs(with_nan))


# ------------------------------------------------------------------------------- envelope

def test_envelope_synthetic():
    t = np.arange(2 * SR) / SR
    tone = 0.1 * np.sin(2 * np.pi * 1000 * t)
    gated = tone * (t >= 1.0)  # silence, then a 1 kHz tone
    times = np.array([0.5, 1.5, -1.0, 5.0, np.nan])
    env = envelope(gated, SR, times)
    assert env.shape == times.shape
    assert env[0] == pytest.approx(np.log(1e-4), abs=0.01)  # silence: the floor
    assert env[1] == pytest.approx(np.log(0.1 / np.sqrt(2) + 1e-4), abs=0.05)
    assert np.isnan(env[2:]).all()  # windows outside the audio
    # the band-pass makes rumble count much less than voice-band sound of the same level
    rumble = 0.1 * np.sin(2 * np.pi * 20 * t)
    assert envelope(rumble, SR, [1.0])[0] < env[1] - 2.0
    # odd input
    assert envelope(np.zeros(0), SR, [0.1]).shape == (1,)
    assert envelope(gated, SR, np.zeros(0)).shape == (0,)
    assert np.isfinite(envelope(np.ones(10), SR, [0.0])).all()


@needs_media
def test_envelope_of_real_speech(detector):
    wav = load_audio(MEDIA / "video" / "aoc_talking.mp4")
    fps = 25.0
    times = np.arange(int(len(wav) / SR * fps)) / fps
    env = envelope(wav, SR, times)
    assert np.isfinite(env).all()
    assert env.min() >= np.log(1e-4) - 1e-6 and env.max() < 0.0
    assert env.std() > 0.5  # syllables: a lively envelope
    inside = np.zeros(len(times), bool)
    for a, b in detector.speech_segments(wav, SR):
        inside |= (times >= a) & (times < b)
    assert 0 < inside.sum() < len(times)
    assert env[inside].mean() > env[~inside].mean() + 1.5  # measured: -4.1 vs -7.4


# ------------------------------------------------------------------------------- av_sync

FPS = 25.0


def test_av_sync_recovers_lag():
    rng = np.random.default_rng(1)
    base = smooth_noise(10 * int(FPS) + 3, rng)
    # audio lags video by 3 frames: env[i] == mouth[i - 3]
    mouth = base[3:] + 0.2 * base.std() * rng.standard_normal(len(base) - 3)
    env = base[:-3]
    r = av_sync(mouth, env, FPS)
    assert r["av_lag_s"] == pytest.approx(3 / FPS)
    assert r["av_corr"] > 0.8
    assert r["av_corr_zero"] < r["av_corr"]
    # and the other way round: audio leads
    r = av_sync(env, mouth, FPS)
    assert r["av_lag_s"] == pytest.approx(-3 / FPS)
    assert r["av_corr"] > 0.8


def test_av_sync_unrelated_is_low():
    rng = np.random.default_rng(2)
    corrs = [av_sync(smooth_noise(500, rng), smooth_noise(500, rng), FPS)["av_corr"]
             for _ in range(5)]
    assert max(corrs) < 0.3


def test_av_sync_ignores_nan_and_slow_drift():
    rng = np.random.default_rng(3)
    n = 15 * int(FPS)
    base = smooth_noise(n + 2, rng)
    mouth = base[2:].copy()
    env = base[:-2] + np.linspace(0, 20 * base.std(), n)  # strong loudness drift
    mouth[rng.random(n) < 0.3] = np.nan  # frames without a face
    mouth[100:160] = np.nan
    r = av_sync(mouth, env, FPS)
    assert r["av_lag_s"] == pytest.approx(2 / FPS)
    assert r["av_corr"] > 0.8
    # different lengths: cut to the shorter
    assert av_sync(mouth, env[:-40], FPS)["av_lag_s"] == pytest.approx(2 / FPS)


def test_av_sync_degenerate_inputs_give_nan():
    rng = np.random.default_rng(4)
    x = smooth_noise(300, rng)
    keys = {"av_corr", "av_lag_s", "av_corr_zero"}
    cases = [
        (np.zeros(0), np.zeros(0), FPS),
        (x[:30], x[:30], FPS),                          # 1.2 s < 2 s of overlap
        (np.where(np.arange(300) < 40, x, np.nan), x, FPS),  # only 1.6 s with a face
        (np.full(300, np.nan), x, FPS),
        (np.ones(300), x, FPS),                         # constant mouth
        (x, x, 0.0),
        (x, x, float("nan")),
    ]
    for mouth, env, fps in cases:
        r = av_sync(mouth, env, fps)
        assert set(r) == keys
        assert np.isnan(r["av_corr"]) and np.isnan(r["av_lag_s"])
    r = av_sync(x, x, FPS)
    assert r["av_corr"] == pytest.approx(1.0) and r["av_lag_s"] == 0.0
    assert r["av_corr_zero"] == pytest.approx(1.0)


@needs_media
def test_av_sync_on_real_envelope():
    # No mouth landmarks here (the face pipeline is elsewhere): a mouth series derived from
    # the real envelope, delayed video (audio leads by 4 frames = 0.16 s), plus noise.
    wav = load_audio(MEDIA / "video" / "aoc_talking.mp4")
    times = np.arange(int(len(wav) / SR * FPS)) / FPS
    env = envelope(wav, SR, times)
    rng = np.random.default_rng(5)
    mouth = np.concatenate([np.full(4, np.nan), env[:-4]]) + 0.5 * rng.standard_normal(len(env))
    r = av_sync(mouth, env, FPS)
    assert r["av_lag_s"] == pytest.approx(-4 / FPS)
    assert r["av_corr"] > 0.6
