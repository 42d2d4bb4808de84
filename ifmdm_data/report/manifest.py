"""What the report shows, read from a manifest: its segments grouped by outcome, the thresholds
used and the counts (plus the groups' colours and the statistics drawn)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ifmdm_data.errors import InputError
from ifmdm_data.reasons import SUBSETS

GROUPS = SUBSETS + ("rejected",)
COLOURS = {"coarse": "#1f77b4", "lip": "#ff7f0e", "hard": "#2ca02c", "rejected": "#d62728"}
# (column, label, threshold key, where the key lives: thresholds | decide)
METRICS = [
    ("head_motion", "head motion: mean head speed, face sizes / s", "head_motion_min", "thresholds"),
    ("mouth_open_std", "lip motion: std of the mouth opening, face sizes", "lip_motion_min", "thresholds"),
    ("face_px", "face size: median face-box height, source px", "min_face_px", "decide"),
    ("speech_ratio", "speech ratio: fraction of the segment with speech (stage 2)", "min_speech_ratio", "decide"),
    ("av_corr", "AV sync: mouth / speech-envelope correlation (stage 2)", "min_av_corr", "decide"),
]
# drawn only when the run scored segments with SyncNet (`filter --syncnet`)
SYNC_METRIC = ("sync_conf", "AV sync: SyncNet confidence (stage 2, filter --syncnet)", "min_sync_conf", "decide")


def metrics_of(df: pd.DataFrame) -> list:
    """METRICS, plus the SyncNet confidence when some segment has one."""
    if "sync_conf" in df and np.isfinite(pd.to_numeric(df["sync_conf"], errors="coerce")).any():
        return METRICS + [SYNC_METRIC]
    return METRICS


def load_manifest(manifest_dir) -> tuple[pd.DataFrame, dict]:
    """(segments with their report "group" and "tracks_dir", summary.json or {}) of a manifest
    folder, a clips.parquet or a split file (local or object storage)."""
    from ifmdm_data.io import storage
    from ifmdm_data.schema import read_clips, tracks_folders

    if str(manifest_dir).endswith(".parquet"):   # a clips.parquet or a split file of `split`
        df = read_clips(manifest_dir)
        df["tracks_dir"] = tracks_folders(df, manifest_dir)
        df["group"] = [s if a and isinstance(s, str) else "rejected" for s, a in zip(df["subset"], df["accepted"])]
        return df, {}
    if not storage.is_url(manifest_dir) and Path(manifest_dir, "train.parquet").is_file():
        read_clips(manifest_dir)          # a split folder: the one-line hint to give a split file
    if not storage.isfile(storage.join(manifest_dir, "clips.parquet")):
        raise InputError(f"no clips.parquet in {manifest_dir}: run "
                         f"`ifmdm-data filter INPUTS -o {manifest_dir}` first, then report on that folder")
    df = read_clips(manifest_dir)
    df["tracks_dir"] = tracks_folders(df, manifest_dir)
    summary = {}
    if storage.isfile(storage.join(manifest_dir, "summary.json")):
        try:
            summary = json.loads(storage.read_text(storage.join(manifest_dir, "summary.json")))
        except (OSError, ValueError):
            summary = {}
    df["group"] = [s if a and isinstance(s, str) else "rejected" for s, a in zip(df["subset"], df["accepted"])]
    return df, summary


def decide_values(summary: dict) -> tuple[dict, dict, str]:
    """(absolute thresholds, decide config, note). Falls back to the shipped defaults."""
    from ifmdm_data.filter.config import load_config

    decide = dict((summary.get("config") or {}).get("decide") or {})
    note = ""
    if not decide:
        decide = load_config().to_dict()["decide"]
        note = "summary.json has no config: thresholds shown are the shipped defaults"
    th = dict(summary.get("thresholds") or {})
    for k in ("head_motion_min", "lip_motion_min", "min_sharpness", "max_camera_motion"):
        if k not in th:
            th[k] = decide.get(k) if isinstance(decide.get(k), (int, float)) else None
    return th, decide, note


def count_outcomes(df: pd.DataFrame) -> dict:
    """The run's counts (segments, files, accepted, per subset / reason, hours) from the rows."""
    acc = df["accepted"].astype(bool)
    rej = pd.Series([r for rs in df["reasons"] for r in rs], dtype=object).value_counts()
    s2 = pd.Series([r for rs, a in zip(df["stage2_reasons"], acc) if a for r in rs], dtype=object).value_counts()
    return {
        "segments": int(len(df)), "files": int(df["path"].nunique()), "accepted": int(acc.sum()),
        "subsets": {s: int((df["group"] == s).sum()) for s in SUBSETS},
        "rejected": int((~acc).sum()), "rejected_by_reason": {k: int(v) for k, v in rej.items()},
        "stage2_ok": int((df["stage2_ok"].astype(bool) & acc).sum()),
        "stage2_by_reason": {k: int(v) for k, v in s2.items()},
        "hours_accepted": float(df.loc[acc, "duration_s"].sum() / 3600.0),
    }
