"""Audio fingerprints (Chromaprint via pyacoustid): the same audio after re-encoding and
trimming matches at the right offset; different speech does not."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ifmdm_data.media.audio import load_audio
from ifmdm_data.filter.fingerprint import RATE_HZ, audio_dup_pairs, audio_fingerprint, ber_at, match
from tests.conftest import media

SR = 16000


@pytest.fixture(scope="module")
def speech():
    return {n: load_audio(media("audio", n), 0.0, None, SR)
            for n in ("speech_en_16k_mono.wav", "speech_en_44k_stereo.wav", "speech_ja_48k_s24.wav")}


def test_fingerprint_rate_and_silence(speech):
    x = speech["speech_en_16k_mono.wav"]
    fp = audio_fingerprint(x, SR)
    assert all(0 <= v < 2 ** 32 for v in fp)
    # ~8.1 values per second, less Chromaprint's start-up (about 2 s of its filters)
    assert abs(len(fp) - (len(x) / SR - 2.0) * RATE_HZ) < 8
    assert audio_fingerprint(np.zeros(SR * 5, np.float32), SR) == []
    assert audio_fingerprint(x[: SR], SR) == []


def test_reencoded_trimmed_copy_matches_at_its_offset(speech, tmp_path):
    """An MP3 copy (64 kb/s, 22.05 kHz) of the English speech starting 2.0 s in: same audio,
    offset 2.0 s x 8.07/s = 16 values, bit error rate far below 0.35; the other two speech
    files (other speakers, other words) do not match it."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    src = media("audio", "speech_en_16k_mono.wav")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "2.0", "-i", str(src), "-ar", "22050", "-c:a", "libmp3lame",
                    "-b:a", "64k", str(tmp_path / "copy.mp3")], check=True)
    a = audio_fingerprint(speech["speech_en_16k_mono.wav"], SR)
    b = audio_fingerprint(load_audio(tmp_path / "copy.mp3", 0.0, None, SR), SR)
    m = match(a, b)
    assert m is not None and abs(m[0] - round(2.0 * RATE_HZ)) <= 1 and m[1] < 0.2
    others = [audio_fingerprint(speech[n], SR) for n in ("speech_en_44k_stereo.wav", "speech_ja_48k_s24.wav")]
    assert all(match(o, b) is None and match(a, o) is None for o in others)
    assert audio_dup_pairs([a, others[0], b, others[1]]) == [(0, 2)]
    # 4 s segments (11 values after Chromaprint's ~2.6 s start-up) of the same audio still match
    x = speech["speech_en_16k_mono.wav"]
    y = load_audio(tmp_path / "copy.mp3", 0.0, None, SR)
    a4, b4 = audio_fingerprint(x[3 * SR:7 * SR], SR), audio_fingerprint(y[1 * SR:5 * SR], SR)
    assert len(a4) < 24 and match(a4, b4) is not None
    assert all(match(audio_fingerprint(speech[n][:4 * SR], SR), b4) is None
               for n in ("speech_en_44k_stereo.wav", "speech_ja_48k_s24.wav"))


def test_ber_of_unrelated_values_is_about_one_half():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2 ** 32, 500, dtype=np.uint64), rng.integers(0, 2 ** 32, 500, dtype=np.uint64)
    ber, n = ber_at(a, b, 0)
    assert n == 500 and 0.45 < ber < 0.55
    assert ber_at(a, a, 0) == (0.0, 500)
    assert ber_at(a[10:], a, -10)[0] == 0.0 and ber_at(a[10:], a, -10)[1] == 490
