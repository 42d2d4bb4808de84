"""Pure helpers of benchmarks/av_sync_bench.py (AUC, false-reject / catch rates, length fit)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "av_sync_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "av_sync_bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_auc_mann_whitney():
    assert bench.auc_mann_whitney([3, 4], [1, 2]) == 1.0
    assert bench.auc_mann_whitney([1, 2], [3, 4]) == 0.0
    assert bench.auc_mann_whitney([1.0], [1.0]) == 0.5                 # ties count one half
    assert bench.auc_mann_whitney([2, 0], [1]) == 0.5
    assert bench.auc_mann_whitney([np.nan], [-5.0]) == 0.0             # NaN ranks lowest
    assert bench.auc_mann_whitney([np.nan], [np.nan]) == 0.5
    assert np.isnan(bench.auc_mann_whitney([], [1.0]))


def test_rates_and_fit_length():
    assert bench.rates([True, False, False, False], [True, True, False]) == (0.25, 2 / 3)
    assert all(np.isnan(bench.rates([], [])))
    np.testing.assert_array_equal(bench.fit_length(np.arange(3), 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(bench.fit_length(np.arange(5), 2), [0, 1])
    assert bench.fit_length(np.zeros(0), 3).tolist() == [0, 0, 0]


def test_own_audio_scores_above_every_other_clips_audio():
    """Issue 11: the built-in AV-sync score (lip motion of every decoded frame against the
    speech envelope, `analyse.av_score`) ranks a real talking clip's own audio above the audio
    of the other talking clips (an ordering, measured the way the bench does it); the own audio
    passes the default `decide.min_av_corr`. The landmark score at the analysis rate alone
    (`analysis.dense_mouth` off, the score before) gets both orderings wrong."""
    from conftest import media

    from ifmdm_data.filter import analyse
    from ifmdm_data.media import audio
    from ifmdm_data.filter.config import load_config

    names = ("aoc_talking.mp4", "woman_quiet_talking.mp4")              # analysed
    audios = [media("video", n) for n in (*names, "man_suit_static_talking.mp4")]
    cfg = load_config()
    sr = cfg.audio.sample_rate
    models, _ = analyse.load_models(cfg)
    segs = [bench.analyse_clip(media("video", n), cfg, models, 8.0)[0] for n in names]
    wavs = {p.name: audio.load_audio(str(p), 0.0, None, sr) for p in audios}
    for seg in segs:
        n = int(round((seg["end_s"] - seg["start_s"]) * sr))
        own = bench.score(seg, audio.load_audio(seg["path"], seg["start_s"], seg["end_s"], sr), cfg)["av_corr"]
        assert own == pytest.approx(seg["row_corr"], abs=1e-6)       # the pipeline's own score
        others = {k: bench.score(seg, bench.fit_length(w, n), cfg)["av_corr"]
                  for k, w in wavs.items() if k != seg["clip"]}
        assert own >= cfg.decide.min_av_corr, (seg["clip"], own)
        assert all(own > v for v in others.values()), (seg["clip"], own, others)


@pytest.mark.parametrize("degrees", [90, 270])
def test_rotated_phone_copy_scores_like_the_source(tmp_path, degrees):
    """The lip-motion crops are cut from the decoded (unrotated) frames with the landmarks of the
    analysed (rotated for display) frames mapped back: a copy with a display rotation has the
    source's lip motion and lip-motion score (the same decoded pixels; only the mapping
    differs; the landmark part of av_corr differs, the mesh sees the face turned)."""
    from conftest import media
    from media_factory import write_rotated

    from ifmdm_data.filter import analyse
    from ifmdm_data.media import audio, avsync
    from ifmdm_data.filter.config import load_config

    src = media("video", "aoc_talking.mp4")
    rot = write_rotated(src, tmp_path / "rot.mp4", degrees)
    cfg = load_config()
    models, _ = analyse.load_models(cfg)
    a, b = (bench.analyse_clip(p, cfg, models, 5.0)[0] for p in (src, rot))
    assert len(b["dense"][0]) >= 0.9 * len(a["dense"][0]) > 50     # motion on every decoded frame
    ma, mb = np.asarray(a["dense"][1]), np.asarray(b["dense"][1])
    n = min(len(ma), len(mb))
    assert np.corrcoef(ma[:n], mb[:n])[0, 1] > 0.8                   # the same lip motion
    wav = audio.load_audio(str(src), 0.0, a["end_s"], cfg.audio.sample_rate)
    sa, sb = (avsync.motion_sync(*s["dense"], wav, cfg.audio.sample_rate, 0.0, a["end_s"])["av_corr"]
              for s in (a, b))
    assert sa > 0.3 and abs(sa - sb) < 0.05, (sa, sb)
