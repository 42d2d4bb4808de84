"""Decide, from segment statistics and the `decide` config: stage-1 subset or rejection
reasons, and stage-2 usability. Pure pandas; re-runnable on a finished manifest
(`ifmdm-data decide`) without touching the videos.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ifmdm_data.filter.config import DecideConfig, FilterConfig
from ifmdm_data.reasons import Reason, Stage2Reason
from ifmdm_data.schema import CLIPS_SCHEMA

# reasons found before or instead of the face analysis: no further checks apply
_HARD_FAILURES = {Reason.UNREADABLE, Reason.EMPTY_FILE, Reason.DECODE_ERROR, Reason.NO_VIDEO_STREAM,
                  Reason.TOO_FEW_FRAMES, Reason.ANALYSIS_ERROR, Reason.WORKER_CRASH}
_QUANTILE_KEYS = {  # threshold key -> statistic it applies to
    "min_sharpness": "sharpness", "max_camera_motion": "camera_motion",
    "head_motion_min": "head_motion", "lip_motion_min": "mouth_open_std",
}


# statistics the manifest stores as float32: decided in float32 (see `stored`)
_FLOAT32 = {f.name for f in CLIPS_SCHEMA if str(f.type) == "float"}


def stored(df: pd.DataFrame, name: str) -> pd.Series:
    """Column `name` as numbers in the precision clips.parquet stores it (NaN where absent).

    A statistic that `filter` computed in float64 is written as float32; comparing it with a
    threshold in float64 would let 0.0199999999 (rejected by `lip_motion_min: 0.02` at filter
    time) become float32(0.02) and pass `ifmdm-data decide`, and float32(0.02) < 0.02 in float64.
    In float32 (a Python-float threshold is compared in the array's precision) both runs agree
    and a stored value exactly at a threshold passes."""
    if name not in df:
        return pd.Series(np.nan, index=df.index)
    s = pd.to_numeric(df[name], errors="coerce")
    return s.astype(np.float32) if name in _FLOAT32 else s


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def resolve_thresholds(df: pd.DataFrame, d: DecideConfig, face_ok: pd.Series) -> dict:
    """Absolute values for every threshold; {quantile: q} ones over the face-ok segments."""
    out = {}
    for key in ("min_sharpness", "max_camera_motion", "head_motion_min", "lip_motion_min"):
        v = getattr(d, key)
        if isinstance(v, dict):
            vals = pd.to_numeric(df.loc[face_ok, _QUANTILE_KEYS[key]], errors="coerce").dropna()
            out[key] = float(np.quantile(vals, v["quantile"])) if len(vals) else float("nan")
        else:
            out[key] = float(v)     # a Python float: compared in the statistic's precision
    return out


def av_out_of_sync(corr: pd.Series, lag: pd.Series, sync_conf: pd.Series, sync_offset: pd.Series,
                   d: DecideConfig) -> pd.Series:
    """The `av_out_of_sync` rule per segment. Where a SyncNet confidence was measured
    (`filter --syncnet`: sync_conf finite), LatentSync's rule: sync_conf < min_sync_conf or
    |sync_offset_frames| > max_sync_offset_frames. Elsewhere the landmark rule: av_corr <
    min_av_corr or |av_lag_s| > max_av_lag_s (NaN counts as out of sync in both)."""
    syncnet = ~(sync_conf >= d.min_sync_conf) | ~(sync_offset.abs() <= d.max_sync_offset_frames)
    landmarks = ~(corr >= d.min_av_corr) | ~(lag.abs() <= d.max_av_lag_s)
    return syncnet.where(np.isfinite(sync_conf), landmarks)


def decide(df: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, dict]:
    """Fill the decision columns of a manifest DataFrame. Returns (df, thresholds used).

    Existing `reasons` that are hard failures (decode errors, crashes) are kept; all other
    decisions are recomputed from the statistics, so a user can re-decide with new thresholds.

    Thresholds are inclusive: a statistic equal to a `min_*` threshold (or `head_motion_min`,
    `lip_motion_min`, `segment.min_duration_s`, `segment.min_short_side`) passes, and one equal
    to a `max_*` threshold passes too; only values strictly beyond a threshold are rejected
    (tests/test_decide.py checks each at its exact value). `{quantile: q}` thresholds are taken
    over the face-ok segments only (no hard failure, no `no_face`, no `multi_face`).
    `av_out_of_sync` is only given to accepted segments; rejected ones get `not_in_subset`.
    """
    d, seg = cfg.decide, cfg.segment
    df = df.copy()
    pre = [[r for r in (rs if isinstance(rs, (list, np.ndarray)) else []) if Reason(r) in _HARD_FAILURES]
           for rs in df["reasons"]]
    failed = pd.Series([bool(p) for p in pre], index=df.index)

    def col(name):
        return stored(df, name)

    no_mesh_face = ~failed & ((col("face_fraction").fillna(0) < d.min_face_fraction)
                              | (col("detected_face_fraction").fillna(0) < d.min_face_fraction))
    # the reason names what is there (issue 11): two or more detected faces are multi_face even
    # when the mesh lost them, and a detected face too small for the mesh is face_too_small
    multi = ~failed & (col("multi_face_fraction").fillna(0) > d.max_multi_face_fraction)
    small_unmeshed = (no_mesh_face & ~multi
                      & (col("detected_face_fraction").fillna(0) >= d.min_face_fraction)
                      & (col("face_px") < d.min_face_px).fillna(False))
    no_face = no_mesh_face & ~multi & ~small_unmeshed
    face_ok = ~failed & ~no_mesh_face & ~multi
    th = resolve_thresholds(df, d, face_ok)

    head_moves = face_ok & (col("head_motion") >= th["head_motion_min"])
    lip_moves = face_ok & (col("mouth_open_std") >= th["lip_motion_min"])
    checks = [
        (Reason.TOO_SHORT, ~failed & (col("duration_s").fillna(0) < seg.min_duration_s)),
        (Reason.LOW_RESOLUTION, ~failed & (np.minimum(col("width"), col("height")).fillna(0) < seg.min_short_side)),
        (Reason.NO_FACE, no_face),
        (Reason.MULTI_FACE, multi),
        (Reason.FACE_TOO_SMALL, (face_ok & (col("face_px").fillna(0) < d.min_face_px)) | small_unmeshed),
        (Reason.FACE_OUT_OF_FRAME, face_ok & (col("out_of_frame_fraction").fillna(0) > d.max_out_of_frame_fraction)),
        (Reason.BLURRY, face_ok & (col("sharpness").fillna(0) < th["min_sharpness"])),
        (Reason.CAMERA_MOTION, face_ok & (col("camera_motion").fillna(0) > th["max_camera_motion"])),
        (Reason.STATIC, face_ok & ~head_moves & ~lip_moves),
    ]
    reasons = [list(p) for p in pre]
    for reason, mask in checks:
        for i in np.flatnonzero(mask.to_numpy()):
            reasons[i].append(reason.value)
    accepted = [not r for r in reasons]
    subset = []
    for ok, h, l in zip(accepted, head_moves, lip_moves):
        subset.append(None if not ok else ("hard" if h and l else "coarse" if h else "lip"))

    s2 = []
    speech, corr, lag = col("speech_ratio"), col("av_corr"), col("av_lag_s")
    # NaN coverage (no audio, a manifest from before the column) is not judged here
    cov = col("audio_coverage")
    too_short = (np.isfinite(cov) & ~(cov >= d.min_audio_coverage)).to_numpy()
    out_of_sync = av_out_of_sync(corr, lag, col("sync_conf"), col("sync_offset_frames"), d).to_numpy()
    audio_err = df["audio_error"] if "audio_error" in df else pd.Series("", index=df.index)
    for i in range(len(df)):
        r = []
        failed_i = bool(failed.iloc[i])
        if isinstance(audio_err.iloc[i], str) and audio_err.iloc[i]:
            r.append(audio_err.iloc[i])
        elif failed_i:
            pass  # nothing was measured
        elif too_short[i]:  # padding, not the file's audio: speech and sync measure silence
            r.append(Stage2Reason.AUDIO_TOO_SHORT.value)
        elif not (speech.iloc[i] >= d.min_speech_ratio):
            r.append(Stage2Reason.NO_SPEECH.value)
        elif accepted[i] and out_of_sync[i]:
            r.append(Stage2Reason.AV_OUT_OF_SYNC.value)
        if not accepted[i]:
            r.append(Stage2Reason.NOT_IN_SUBSET.value)
        s2.append(r)

    df["head_moves"] = head_moves.to_numpy()
    df["lip_moves"] = lip_moves.to_numpy()
    df["reasons"] = reasons
    df["accepted"] = accepted
    df["subset"] = subset
    df["stage2_reasons"] = s2
    df["stage2_ok"] = [not r for r in s2]
    th = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in th.items()}
    return df, th


def provisional_decisions(rows: list[dict], cfg) -> tuple[int | None, int | None]:
    """(accepted, rejected) of a unit's rows by the absolute thresholds of `cfg`, for the
    progress line; (None, None) when a threshold is a dataset quantile (known at the end only)."""
    d = cfg.decide
    if not rows or any(isinstance(getattr(d, k), dict) for k in
                       ("min_sharpness", "max_camera_motion", "head_motion_min", "lip_motion_min")):
        return (0, 0) if not rows else (None, None)
    try:
        df, _ = decide(pd.DataFrame(rows), cfg)
    except Exception:  # noqa: BLE001 - a progress count must never fail the unit
        return None, None
    acc = int(df["accepted"].sum())
    return acc, len(df) - acc
