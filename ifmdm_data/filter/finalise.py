"""Finalise `filter`: merge the parts into clips.parquet, decide, write the subsets, the
rejections and the run summary. Pure: no Ray, no video decoding."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.filter.decide import decide
from ifmdm_data.io.atomic import write_json_atomic
from ifmdm_data.reasons import SUBSETS
from ifmdm_data.schema import clips_table, write_parquet_atomic


def _index_segments(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values(["path", "start_s"], kind="stable").reset_index(drop=True)
    df["segment_index"] = df.groupby("clip_id").cumcount().astype("int32")
    df["n_segments"] = df.groupby("clip_id")["segment_id"].transform("size").astype("int32")
    return df


def _identities(df: pd.DataFrame, cfg: FilterConfig) -> pd.DataFrame:
    """identity_id and dup_group over all segments from the stored per-segment signals
    (`identify.collection_ids`, at identity.threshold / max_phash_distance); left null when no
    segment has signals (identity.enabled: false, manifests of older versions)."""
    if not any(c in df and df[c].notna().any() for c in ("face_descriptor", "phash")):
        return df
    from ifmdm_data.filter.identify import collection_ids

    c = cfg.identity
    df = df.copy()
    df["identity_id"], df["dup_group"], df["identity_ids"] = collection_ids(
        df, c.threshold, c.max_phash_distance, audio=c.audio_fingerprint)
    return df


def write_manifests(df: pd.DataFrame, out_dir: str | Path, cfg: FilterConfig) -> dict:
    """Decide and write clips / coarse / lip / hard / rejected .parquet into `out_dir` (a
    folder or an object-storage URL). Returns counts."""
    from ifmdm_data.io.storage import join

    out = str(out_dir)   # a local folder or an object-storage URL
    df = _index_segments(df)
    df, thresholds = decide(df, cfg)
    df = _identities(df, cfg)
    table = clips_table(df)
    write_parquet_atomic(table, join(out, "clips.parquet"))
    for name in SUBSETS:
        write_parquet_atomic(table.filter(pd.Series(df["subset"] == name).to_numpy()), join(out, f"{name}.parquet"))
    write_parquet_atomic(table.filter((~df["accepted"].astype(bool)).to_numpy()), join(out, "rejected.parquet"))
    reasons = Counter(r for rs in df["reasons"] for r in rs)
    s2 = Counter(r for rs, ok in zip(df["stage2_reasons"], df["accepted"]) if ok for r in rs)
    return {
        "segments": int(len(df)),
        "files": int(df["clip_id"].nunique()),
        "accepted": int(df["accepted"].sum()),
        "subsets": {s: int((df["subset"] == s).sum()) for s in SUBSETS},
        "rejected": int((~df["accepted"].astype(bool)).sum()),
        "rejected_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "stage2_ok": int((df["stage2_ok"] & df["accepted"]).sum()),
        "stage2_by_reason": dict(sorted(s2.items(), key=lambda kv: -kv[1])),
        "thresholds": thresholds,
        "hours_accepted": float(df.loc[df["accepted"], "duration_s"].sum() / 3600.0),
        **_identity_counts(df), "identity_threshold": cfg.identity.threshold,
    }


def _identity_counts(df: pd.DataFrame) -> dict:
    """Identities and near-duplicate groups of the run (None when not computed)."""
    if "identity_id" not in df or not df["identity_id"].notna().any():
        return {"identities": None}
    ids = pd.to_numeric(df["identity_id"], errors="coerce").fillna(-1)
    size = df["dup_group"].value_counts()
    return {"identities": int(ids[ids >= 0].nunique()),
            "identities_accepted": int(ids[(ids >= 0) & df["accepted"].astype(bool)].nunique()),
            "segments_without_face": int((pd.to_numeric(df["identity_faces"], errors="coerce") == 0).sum()),
            "dup_groups_multi": int((size > 1).sum()), "dup_segments": int(size[size > 1].sum())}


def stored_config(manifest_dir: str | Path) -> dict | None:
    """The config a run recorded in OUT/summary.json (None without one)."""
    from ifmdm_data.io import storage

    loc = storage.join(str(manifest_dir), "summary.json")
    if not storage.exists(loc):
        return None
    try:
        return json.loads(storage.read_text(loc)).get("config")
    except ValueError:
        return None


def redecide(manifest_dir: str | Path, cfg: FilterConfig) -> dict:
    """Re-run the decisions (and the identity clustering) on an existing clips.parquet with a
    new config (no analysis); OUT/summary.json gets the new counts and config."""
    from ifmdm_data.io import storage
    from ifmdm_data.schema import read_clips

    df = read_clips(manifest_dir)
    counts = write_manifests(df, manifest_dir, cfg)
    loc = storage.join(str(manifest_dir), "summary.json")
    try:
        summary = json.loads(storage.read_text(loc)) if storage.exists(loc) else {}
    except ValueError:
        summary = {}
    summary.update(counts, config=cfg.to_dict())
    write_json_atomic(summary, loc)
    return counts
