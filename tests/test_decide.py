"""Decisions from statistics: subsets, reasons, quantile thresholds, stage 2."""
import pandas as pd

from ifmdm_data.config import FilterConfig
from ifmdm_data.decide import decide


def _row(**kw):
    base = dict(duration_s=5.0, width=512, height=512, face_fraction=1.0, detected_face_fraction=1.0,
                multi_face_fraction=0.0, face_px=200.0, out_of_frame_fraction=0.0, sharpness=100.0,
                camera_motion=0.0, head_motion=0.3, mouth_open_std=0.05, speech_ratio=0.9,
                av_corr=0.5, av_lag_s=0.0, audio_error="", reasons=[])
    base.update(kw)
    return base


def test_subsets_and_reasons():
    df = pd.DataFrame([
        _row(),                                           # hard
        _row(mouth_open_std=0.001),                       # coarse
        _row(head_motion=0.01),                           # lip
        _row(head_motion=0.01, mouth_open_std=0.001),     # static
        _row(face_fraction=0.1),                          # no_face
        _row(multi_face_fraction=0.9),                    # multi_face
        _row(duration_s=1.0),                             # too_short
        _row(reasons=["decode_error"], face_fraction=None),
        _row(face_px=20.0, sharpness=1.0),                # two reasons
    ])
    out, th = decide(df, FilterConfig())
    assert list(out["subset"][:3]) == ["hard", "coarse", "lip"]
    assert [list(r) for r in out["reasons"][3:]] == [
        ["static"], ["no_face"], ["multi_face"], ["too_short"], ["decode_error"],
        ["face_too_small", "blurry"]]
    assert out["accepted"].tolist() == [True] * 3 + [False] * 6
    assert th["head_motion_min"] == FilterConfig().decide.head_motion_min


def test_quantile_threshold_splits_the_dataset():
    cfg = FilterConfig()
    cfg.decide.head_motion_min = {"quantile": 0.5}
    df = pd.DataFrame([_row(head_motion=h, mouth_open_std=0.0) for h in (0.1, 0.2, 0.3, 0.4)])
    out, th = decide(df, cfg)
    assert th["head_motion_min"] == 0.25
    assert [s if isinstance(s, str) else None for s in out["subset"]] == [None, None, "coarse", "coarse"]
    assert [list(r) for r in out["reasons"][:2]] == [["static"], ["static"]]


def test_stage2_reasons():
    df = pd.DataFrame([
        _row(), _row(audio_error="no_audio", speech_ratio=None), _row(speech_ratio=0.05),
        _row(av_corr=0.0), _row(face_fraction=0.0, speech_ratio=0.0),
    ])
    out, _ = decide(df, FilterConfig())
    assert out["stage2_ok"].tolist() == [True, False, False, False, False]
    assert [list(r) for r in out["stage2_reasons"]] == [
        [], ["no_audio"], ["no_speech"], ["av_out_of_sync"], ["no_speech", "not_in_subset"]]
