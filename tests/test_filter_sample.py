"""`filter` on the project's own labelled sample set: every segment lands where its label says."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ifmdm_data.report.inspect import match_labels
from ifmdm_data.schema import CLIPS_SCHEMA, TRACKS_SCHEMA, read_clips, read_segment_tracks


def test_every_labelled_segment_as_expected(sample_dir, sample_manifests):
    out, _ = sample_manifests
    res = match_labels(read_clips(out), pd.read_csv(sample_dir / "labels.csv"))
    bad = res[~(res["ok"] & res["ok_stage2"])]
    assert bad.empty, "\n" + bad.to_string()


def test_exact_accounting_and_outputs(sample_dir, sample_manifests):
    out, summary = sample_manifests
    df = pd.read_parquet(out / "clips.parquet")
    inputs = {p.name for p in sample_dir.glob("*.mp4")}
    assert {Path(p).name for p in df["path"]} == inputs
    assert summary["inputs"] == len(inputs) and summary["segments"] == len(df)
    assert df["segment_id"].is_unique and not df["segment_id"].str.contains(r"\.").any()
    # subsets and rejected partition clips.parquet
    parts = {n: pd.read_parquet(out / f"{n}.parquet") for n in ("coarse", "lip", "hard", "rejected")}
    assert sum(len(p) for p in parts.values()) == len(df)
    for n in ("coarse", "lip", "hard"):
        assert set(parts[n]["subset"]) <= {n}
    assert not parts["rejected"]["accepted"].any()
    assert all(len(r) > 0 for r in parts["rejected"]["reasons"])
    # one schema for writer and readers
    assert pq.read_schema(out / "clips.parquet").names == CLIPS_SCHEMA.names
    saved = json.loads((out / "summary.json").read_text())
    assert saved["subsets"] == summary["subsets"]
    assert sum(saved["subsets"].values()) + saved["rejected"] == len(df)


def test_tracks_for_every_analysed_segment(sample_manifests):
    out, _ = sample_manifests
    df = pd.read_parquet(out / "clips.parquet")
    for r in df[df["n_analysed"].fillna(0) > 0].itertuples():
        t, meta = read_segment_tracks(out, r.segment_id)
        assert list(t.columns) == TRACKS_SCHEMA.names and meta["segment_id"] == r.segment_id
        assert len(t) == r.n_analysed
        times = t["t"].to_numpy()
        assert times.min() >= r.start_s - 1e-6 and times.max() < r.end_s + 1e-6


def test_motion_statistics_order(sample_manifests):
    """The ground truth of the generator: which clips move their heads / lips."""
    df = read_clips(sample_manifests[0]).assign(file=lambda d: d["path"].map(lambda p: Path(p).name))
    by = df.groupby("file").first()
    for moving in ("coarse_head.mp4", "hard_talk.mp4"):
        assert by.loc[moving, "head_motion"] > 3 * by.loc["lip_talk.mp4", "head_motion"]
    for talking in ("lip_talk.mp4", "hard_talk.mp4"):
        assert by.loc[talking, "mouth_open_std"] > 5 * by.loc["coarse_head.mp4", "mouth_open_std"]
    assert by.loc["lip_talk.mp4", "av_corr"] > by.loc["dubbed_talk.mp4", "av_corr"] + 0.3


def test_labels_compare_every_stage2_reason():
    """Expected `not_in_subset` is only met by a rejected segment; a measured reason shown
    without `not_in_subset` (an accepted segment with no speech) is a mismatch, not ok."""
    df = pd.DataFrame({
        "path": ["/d/rej.mp4", "/d/acc.mp4"], "start_s": [0.0, 0.0], "end_s": [4.0, 4.0],
        "accepted": [False, True], "subset": [None, "coarse"], "reasons": [["no_face"], []],
        "stage2_ok": [False, False], "stage2_reasons": [["no_speech", "not_in_subset"], ["no_speech"]],
    })
    labels = pd.DataFrame({"file": ["rej.mp4", "acc.mp4", "acc.mp4"], "start_s": [0.0] * 3, "end_s": [4.0] * 3,
                           "expected": ["no_face", "coarse", "coarse"],
                           "stage2": ["not_in_subset", "not_in_subset", "no_speech"]})
    res = match_labels(df, labels)
    assert res["got_stage2"].tolist() == ["no_speech,not_in_subset", "no_speech", "no_speech"]
    assert res["ok_stage2"].tolist() == [True, False, True]
