"""`ifmdm-data inspect`: one line per segment, optionally compared with sample-set labels."""
from __future__ import annotations

import os

import pandas as pd

from ifmdm_data.schema import read_clips


def display_paths(paths, width: int = 48) -> list:
    """Each path relative to the folder all of them share (so `a/clip.mp4` and `b/clip.mp4`
    stay apart, however deep the dataset sits), elided from the left to `width` characters."""
    paths = [str(p) for p in paths]
    if not paths:
        return []
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:                                     # mixed absolute / relative paths
        root = ""
    rel = [os.path.relpath(p, root) if root else p for p in paths]
    return [r if len(r) <= width else "..." + r[-(width - 3):] for r in rel]


def outcome(row) -> str:
    return row["subset"] if row["accepted"] else ",".join(row["reasons"])


def stage2(row) -> str:
    return "ok" if row["stage2_ok"] else ",".join(r for r in row["stage2_reasons"] if r != "not_in_subset") or "-"


def stage2_all(row) -> str:
    """Every stage-2 reason, `not_in_subset` included: the label vocabulary
    (`ifmdm_data/sample/__init__.py`) names `not_in_subset` for a rejected segment and a
    measured reason (`no_speech`) for others."""
    return "ok" if row["stage2_ok"] else ",".join(row["stage2_reasons"]) or "-"


def match_labels(df: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Pair each labelled segment with the manifest segment that overlaps it most."""
    df = df.assign(file=[os.path.basename(p) for p in df["path"]])
    out = []
    for lab in labels.itertuples():
        segs = df[df["file"] == lab.file]
        if segs.empty:
            out.append((lab.file, lab.start_s, lab.end_s, lab.expected, lab.stage2, "MISSING", "MISSING"))
            continue
        ov = (segs["end_s"].clip(upper=lab.end_s) - segs["start_s"].clip(lower=lab.start_s))
        row = segs.loc[ov.idxmax()]
        out.append((lab.file, lab.start_s, lab.end_s, lab.expected, lab.stage2, outcome(row), stage2_all(row)))
    res = pd.DataFrame(out, columns=["file", "start_s", "end_s", "expected", "expected_stage2", "got", "got_stage2"])
    res["ok"] = [e in g.split(",") for e, g in zip(res["expected"], res["got"])]
    res["ok_stage2"] = [e in g.split(",") for e, g in zip(res["expected_stage2"], res["got_stage2"])]
    return res


def inspect_manifest(manifest_dir: str, labels_path: str | None = None) -> bool:
    """Print the table; returns False when labels are given and any segment disagrees."""
    df = read_clips(manifest_dir)
    if labels_path:
        res = match_labels(df, pd.read_csv(labels_path))
        print(res.to_string(index=False))
        n_ok = int((res["ok"] & res["ok_stage2"]).sum())
        print(f"\n{n_ok}/{len(res)} labelled segments as expected")
        return n_ok == len(res)
    view = pd.DataFrame({
        "file": display_paths(df["path"]),
        "start_s": df["start_s"].round(2), "end_s": df["end_s"].round(2),
        "outcome": [outcome(r) for _, r in df.iterrows()],
        "stage2": [stage2(r) for _, r in df.iterrows()],
        "head": df["head_motion"].round(3), "lip": df["mouth_open_std"].round(3),
        "speech": df["speech_ratio"].round(2), "av_corr": df["av_corr"].round(2),
    })
    for c in ("identity_id", "dup_group"):          # filter's identify stage, `split`; -: no face / no hashes
        ids = pd.to_numeric(df[c], errors="coerce") if c in df else None
        if ids is not None and ids.notna().any():
            view[c] = ["-" if v != v or v < 0 else int(v) for v in ids]
    if "sync_conf" in df and pd.to_numeric(df["sync_conf"], errors="coerce").notna().any():
        view["sync_conf"] = pd.to_numeric(df["sync_conf"], errors="coerce").round(2)   # filter --syncnet
        view["sync_off"] = pd.to_numeric(df["sync_offset_frames"], errors="coerce")
    print(view.to_string(index=False))
    return True
