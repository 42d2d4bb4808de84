"""Decisions from statistics: subsets, reasons, quantile thresholds, stage 2."""
import numpy as np
import pandas as pd

from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.filter.decide import decide


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


# --- thresholds exactly at their value (issue 16) --------------------------------------
# Convention (config comments, README): minimums are inclusive ("at least this": a value equal
# to a min_* threshold passes) and maximums are inclusive ("above this" is rejected: a value
# equal to a max_* threshold passes).

_AT = [  # (column overrides putting one statistic exactly on its threshold, field of DecideConfig)
    ("face_fraction", "min_face_fraction"),
    ("detected_face_fraction", "min_face_fraction"),
    ("multi_face_fraction", "max_multi_face_fraction"),
    ("face_px", "min_face_px"),
    ("out_of_frame_fraction", "max_out_of_frame_fraction"),
    ("sharpness", "min_sharpness"),
    ("camera_motion", "max_camera_motion"),
]


def test_stage1_statistic_exactly_at_its_threshold_is_accepted():
    d = FilterConfig().decide
    rows = [_row(**{col: float(getattr(d, key))}) for col, key in _AT]
    rows.append(_row(duration_s=FilterConfig().segment.min_duration_s))
    rows.append(_row(width=FilterConfig().segment.min_short_side, height=FilterConfig().segment.min_short_side))
    out, _ = decide(pd.DataFrame(rows), FilterConfig())
    assert [list(r) for r in out["reasons"]] == [[]] * len(rows)
    assert out["subset"].tolist() == ["hard"] * len(rows)


def test_stage1_statistic_just_past_its_threshold_is_rejected():
    """The other side of the same thresholds: the tests above are not vacuous."""
    d, seg = FilterConfig().decide, FilterConfig().segment
    eps = 1e-6
    df = pd.DataFrame([
        _row(face_fraction=d.min_face_fraction - eps), _row(multi_face_fraction=d.max_multi_face_fraction + eps),
        # 64 - 1e-6 is 64.0 in float32 (the stored precision, decided alike): one float32 step below
        _row(face_px=float(np.nextafter(np.float32(d.min_face_px), np.float32(0)))), _row(out_of_frame_fraction=d.max_out_of_frame_fraction + eps),
        _row(sharpness=d.min_sharpness - eps), _row(camera_motion=d.max_camera_motion + eps),
        _row(duration_s=seg.min_duration_s - eps), _row(width=seg.min_short_side - 1),
    ])
    out, _ = decide(df, FilterConfig())
    assert [list(r) for r in out["reasons"]] == [
        ["no_face"], ["multi_face"], ["face_too_small"], ["face_out_of_frame"], ["blurry"],
        ["camera_motion"], ["too_short"], ["low_resolution"]]


def test_motion_exactly_at_its_threshold_moves():
    d = FilterConfig().decide
    df = pd.DataFrame([
        _row(head_motion=d.head_motion_min, mouth_open_std=d.lip_motion_min),   # both at: hard
        _row(head_motion=d.head_motion_min, mouth_open_std=0.0),                # coarse
        _row(head_motion=0.0, mouth_open_std=d.lip_motion_min),                 # lip
        _row(head_motion=d.head_motion_min * 0.999, mouth_open_std=d.lip_motion_min * 0.999),  # static
    ])
    out, _ = decide(df, FilterConfig())
    assert [s if isinstance(s, str) else None for s in out["subset"]] == ["hard", "coarse", "lip", None]
    assert list(out["reasons"].iloc[3]) == ["static"]


def test_stage2_statistic_exactly_at_its_threshold_is_ok():
    d = FilterConfig().decide
    df = pd.DataFrame([
        _row(speech_ratio=d.min_speech_ratio),
        _row(av_corr=d.min_av_corr),
        _row(av_lag_s=d.max_av_lag_s), _row(av_lag_s=-d.max_av_lag_s),
        _row(sync_conf=d.min_sync_conf, sync_offset_frames=float(d.max_sync_offset_frames)),
        _row(sync_conf=d.min_sync_conf, sync_offset_frames=float(-d.max_sync_offset_frames)),
        # just past each: out
        _row(speech_ratio=d.min_speech_ratio - 1e-6),
        _row(av_corr=d.min_av_corr - 1e-6),
        _row(av_lag_s=d.max_av_lag_s + 1e-6),
        _row(sync_conf=d.min_sync_conf - 1e-6, sync_offset_frames=0.0),
        _row(sync_conf=d.min_sync_conf, sync_offset_frames=float(d.max_sync_offset_frames + 1)),
    ])
    out, _ = decide(df, FilterConfig())
    assert out["stage2_ok"].tolist() == [True] * 6 + [False] * 5
    assert [list(r) for r in out["stage2_reasons"][6:]] == [["no_speech"]] + [["av_out_of_sync"]] * 4


def test_quantile_threshold_over_face_ok_segments_only():
    """README/filter.yaml: {quantile: q} is computed over the segments that passed the face
    checks. Rejected-for-face rows with very different statistics must not move it."""
    cfg = FilterConfig()
    cfg.decide.head_motion_min = {"quantile": 0.5}
    cfg.decide.min_sharpness = {"quantile": 0.25}
    ok = [_row(head_motion=h, sharpness=s, mouth_open_std=0.0)
          for h, s in ((0.1, 40.0), (0.2, 50.0), (0.3, 60.0), (0.4, 70.0))]
    bad = [_row(face_fraction=0.0, head_motion=5.0, sharpness=1000.0),      # no_face
           _row(multi_face_fraction=1.0, head_motion=6.0, sharpness=2000.0),  # multi_face
           _row(reasons=["decode_error"], head_motion=7.0, sharpness=3000.0)]  # hard failure
    out, th = decide(pd.DataFrame(ok + bad), cfg)
    # median of 0.1..0.4 by linear interpolation: (0.2 + 0.3) / 2; the 25 % point of 40..70:
    # position 0.25 * 3 = 0.75 between 40 and 50 -> 47.5. Over all 7 rows it would be 0.4 / 55.
    assert abs(th["head_motion_min"] - 0.25) < 1e-12
    assert abs(th["min_sharpness"] - 47.5) < 1e-12
    assert [s if isinstance(s, str) else None for s in out["subset"][:4]] == [None, None, "coarse", "coarse"]
    assert [list(r) for r in out["reasons"][:4]] == [["blurry", "static"], ["static"], [], []]


def test_av_out_of_sync_is_not_added_to_rejected_segments():
    """Stage2Reason: av_out_of_sync is for accepted segments; a rejected one gets
    not_in_subset only (its face track is not trusted for a sync measure)."""
    df = pd.DataFrame([
        _row(head_motion=0.0, mouth_open_std=0.0, av_corr=-0.5),     # static, out of sync
        _row(face_px=10.0, av_lag_s=2.0),                            # face_too_small, out of sync
        _row(av_corr=-0.5),                                          # accepted, out of sync
    ])
    out, _ = decide(df, FilterConfig())
    assert out["accepted"].tolist() == [False, False, True]
    assert [list(r) for r in out["stage2_reasons"]] == [["not_in_subset"], ["not_in_subset"], ["av_out_of_sync"]]


# --- float32 storage: clips.parquet keeps the statistics as float32 -----------------------

def _stored(df: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """The rows as `ifmdm-data decide` reads them back: written by the manifest writer, read
    by read_clips (float32 statistics)."""
    from ifmdm_data.schema import clips_table, read_clips, write_parquet_atomic

    rows = [dict(r, path=f"/d/{i}.mp4", clip_id=str(i), segment_id=f"{i}_0", start_s=0.0, end_s=5.0)
            for i, r in enumerate(df.to_dict("records"))]
    write_parquet_atomic(clips_table(rows), tmp_path / "clips.parquet")
    return read_clips(tmp_path)


def _at_every_threshold():
    d, seg = FilterConfig().decide, FilterConfig().segment
    rows = [_row(**{col: float(getattr(d, key))}) for col, key in _AT]
    rows += [_row(duration_s=seg.min_duration_s),
             _row(head_motion=d.head_motion_min, mouth_open_std=d.lip_motion_min),
             _row(speech_ratio=d.min_speech_ratio), _row(av_corr=d.min_av_corr),
             _row(av_lag_s=d.max_av_lag_s), _row(av_lag_s=-d.max_av_lag_s),
             _row(audio_coverage=d.min_audio_coverage),
             _row(sync_conf=d.min_sync_conf, sync_offset_frames=float(d.max_sync_offset_frames))]
    return pd.DataFrame(rows)


def test_stored_float32_statistic_exactly_at_its_threshold_passes_redecide(tmp_path):
    """float32(0.02) < 0.02 in float64: a stored value exactly at a threshold must still pass."""
    back = _stored(_at_every_threshold(), tmp_path)
    assert back["mouth_open_std"].dtype == "float32"
    assert float(back["mouth_open_std"].iloc[8]) < FilterConfig().decide.lip_motion_min   # the trap
    out, _ = decide(back, FilterConfig())
    assert [list(r) for r in out["reasons"]] == [[]] * len(back)
    assert out["subset"].tolist() == ["hard"] * len(back)
    assert out["stage2_ok"].all(), out["stage2_reasons"].tolist()


def test_filter_and_redecide_agree_next_to_a_threshold(tmp_path):
    """A float64 statistic just below a threshold whose float32 is the threshold's float32:
    `filter` (float64 in memory) and `ifmdm-data decide` (float32 from the file) decide alike."""
    d = FilterConfig().decide
    below = [np.nextafter(np.float64(getattr(d, k)), -np.inf) for k in ("lip_motion_min", "min_speech_ratio")]
    assert all(np.float32(b) == np.float32(getattr(d, k)) for b, k in zip(below, ("lip_motion_min", "min_speech_ratio")))
    df = pd.DataFrame([_row(head_motion=0.0, mouth_open_std=below[0]), _row(speech_ratio=below[1]),
                       _row(face_px=np.nextafter(np.float64(d.min_face_px), -np.inf))])
    fresh, _ = decide(df, FilterConfig())
    again, _ = decide(_stored(df, tmp_path), FilterConfig())
    for c in ("reasons", "stage2_reasons"):
        assert [list(r) for r in fresh[c]] == [list(r) for r in again[c]], c
    assert fresh["subset"].tolist() == again["subset"].tolist() == ["lip", "hard", "hard"]


# --- mutation-testing holes (issue 16: bash scripts/mutation.sh decide) ---------------------

def test_unmeasured_statistic_fails_a_min_check_and_passes_a_max_check():
    """A statistic that is NaN (not measured) counts as 0: below every positive `min_*` threshold
    (rejected) and below every `max_*` one (passes). The thresholds sit between 0 and 1 so that
    a NaN read as anything but 0 decides differently."""
    cfg = FilterConfig()
    d, seg = cfg.decide, cfg.segment
    d.min_face_px, d.min_sharpness, d.max_camera_motion = 0.5, 0.5, 0.5
    seg.min_duration_s, seg.min_short_side = 0.5, 1
    nan = float("nan")
    df = pd.DataFrame([
        _row(face_fraction=nan), _row(detected_face_fraction=nan),       # no face
        _row(multi_face_fraction=nan), _row(out_of_frame_fraction=nan),  # passes
        _row(duration_s=nan), _row(width=nan),                           # too short, low resolution
        _row(face_px=nan), _row(sharpness=nan), _row(camera_motion=nan),
    ])
    out, _ = decide(df, cfg)
    assert [list(r) for r in out["reasons"]] == [
        ["no_face"], ["no_face"], [], [], ["too_short"], ["low_resolution"], ["face_too_small"], ["blurry"], []]


def test_a_detected_face_too_small_for_the_mesh_is_face_too_small_not_no_face():
    """Issue 11: the mesh lost the face (face_fraction 0) but the detector saw one in enough
    frames (detected_face_fraction exactly at min_face_fraction: inclusive) whose median height
    is below min_face_px: `face_too_small`. At min_face_px exactly, or with no face_px at all,
    it is `no_face`; two faces stay `multi_face`."""
    d = FilterConfig().decide
    lost = dict(face_fraction=0.0, detected_face_fraction=d.min_face_fraction)
    df = pd.DataFrame([
        _row(**lost, face_px=d.min_face_px - 1),
        _row(**lost, face_px=d.min_face_px),
        _row(**lost, face_px=float("nan")),
        _row(**lost, face_px=d.min_face_px - 1, multi_face_fraction=1.0),
        _row(face_fraction=0.0, detected_face_fraction=d.min_face_fraction - 1e-6, face_px=10.0),
        _row(face_fraction=0.0, detected_face_fraction=float("nan"), face_px=10.0),   # no detection evidence
    ])
    out, _ = decide(df, FilterConfig())
    assert [list(r) for r in out["reasons"]] == [
        ["face_too_small"], ["no_face"], ["no_face"], ["multi_face"], ["no_face"], ["no_face"]]


def test_quantile_threshold_without_any_face_ok_segment_is_none():
    """No face-ok segment: a {quantile: q} threshold has nothing to be taken over; it is
    reported as None (not NaN, not an error) and every segment keeps its face reason."""
    cfg = FilterConfig()
    cfg.decide.min_sharpness = {"quantile": 0.5}
    df = pd.DataFrame([_row(face_fraction=0.0), _row(face_fraction=0.1)])
    out, th = decide(df, cfg)
    assert th["min_sharpness"] is None
    assert th["head_motion_min"] == cfg.decide.head_motion_min
    assert [list(r) for r in out["reasons"]] == [["no_face"], ["no_face"]]


def test_decide_on_a_fresh_manifest_with_missing_columns_and_no_reasons():
    """A manifest without `reasons`/`audio_error`/`audio_coverage` values (None reasons, the
    columns absent) decides like one with empty ones, and gives the motion flags as columns."""
    full = pd.DataFrame([_row(), _row(head_motion=0.0), _row(mouth_open_std=0.0)])
    bare = full.drop(columns=["audio_error"]).assign(reasons=[None, None, None])
    a, _ = decide(full, FilterConfig())
    b, _ = decide(bare, FilterConfig())
    for c in ("reasons", "stage2_reasons"):
        assert [list(r) for r in b[c]] == [list(r) for r in a[c]] == [[], [], []]
    assert b["subset"].tolist() == ["hard", "lip", "coarse"]
    assert b["head_moves"].tolist() == [True, False, True]
    assert b["lip_moves"].tolist() == [True, True, False]


def test_decide_keeps_the_rows_of_a_manifest_with_its_own_index():
    """Re-deciding a selection of a manifest (index 10, 11, 12, not 0..2): each row's decision
    is its own, as with a fresh index."""
    df = pd.DataFrame([_row(reasons=["decode_error"]), _row(), _row(face_fraction=0.0)], index=[10, 11, 12])
    out, _ = decide(df, FilterConfig())
    assert [list(r) for r in out["reasons"]] == [["decode_error"], [], ["no_face"]]
    assert out["accepted"].tolist() == [False, True, False]


def test_audio_coverage_below_its_minimum_is_audio_too_short_and_failed_rows_are_not_judged():
    """audio_coverage < min_audio_coverage: `audio_too_short` (its speech and sync measure the
    padding). A hard failure (nothing measured) gets no stage-2 reason besides not_in_subset,
    even with no speech statistic."""
    d = FilterConfig().decide
    df = pd.DataFrame([
        _row(audio_coverage=d.min_audio_coverage - 0.01),
        _row(audio_coverage=d.min_audio_coverage),
        _row(reasons=["decode_error"], speech_ratio=float("nan"), audio_coverage=float("nan")),
    ])
    out, _ = decide(df, FilterConfig())
    assert [list(r) for r in out["stage2_reasons"]] == [["audio_too_short"], [], ["not_in_subset"]]


def test_stored_reads_numbers_in_the_manifest_precision():
    """`stored`: an absent column is all NaN (float), text is NaN, a float32 statistic becomes
    float32, and a float64 one (duration_s) stays float64: a duration just under min_duration_s
    is too short even though its float32 is min_duration_s."""
    from ifmdm_data.filter.decide import stored

    df = pd.DataFrame({"sharpness": ["1.5", "n/a"], "duration_s": [2.5, 2.5]})
    miss = stored(df, "sync_conf")
    assert miss.dtype.kind == "f" and miss.isna().all() and list(miss.index) == [0, 1]
    s = stored(df, "sharpness")
    assert s.dtype == np.float32 and s.iloc[0] == np.float32(1.5) and np.isnan(s.iloc[1])
    assert stored(df, "duration_s").dtype == np.float64
    seg = FilterConfig().segment
    under = np.nextafter(seg.min_duration_s, 0)
    assert np.float32(under) == np.float32(seg.min_duration_s)
    out, _ = decide(pd.DataFrame([_row(duration_s=under)]), FilterConfig())
    assert list(out["reasons"].iloc[0]) == ["too_short"]


def test_speech_ratio_exactly_at_a_float32_exact_threshold_is_ok():
    """min_speech_ratio is inclusive. With the default 0.3 the stored float32(0.3) is above 0.3,
    so the boundary is checked at 0.25, exact in float32: 0.25 passes, the next float32 below
    it is `no_speech`."""
    cfg = FilterConfig()
    cfg.decide.min_speech_ratio = 0.25
    below = float(np.nextafter(np.float32(0.25), np.float32(0)))
    out, _ = decide(pd.DataFrame([_row(speech_ratio=0.25), _row(speech_ratio=below)]), cfg)
    assert [list(r) for r in out["stage2_reasons"]] == [[], ["no_speech"]]
