"""`ifmdm-data split`: identity- and duplicate-disjoint train / val / test manifests.

Each row keeps `source_manifest`, the `filter` folder it came from, so that `shard` and `report`
given a split file find its tracks (OUT/tracks/, `schema.read_segment_tracks`) there.

1. `annotate` clusters `identity_id` and `dup_group` over all rows of the manifests given
   (identify.collection_ids) from the per-segment signals `filter` stored (face descriptor,
   pHashes, audio fingerprint); rows without them (older manifests) get them computed here,
   in one process (identify.segment_signals: about 1 s per segment on one CPU core).
2. `assign_splits` joins segments that share an identity, a duplicate group or a source file
   (union-find) into components; each component goes to one split. Components are assigned
   largest first (ties in a seeded random order) to the split whose per-subset quota (fraction x
   segments of that subset; rejected segments are a stratum of their own) is least filled, so
   every split gets about its fraction of every subset where the components allow it. Each
   requested split gets at least one component when there are enough.
3. `run_split` writes SPLIT/{train,val,test}.parquet with schema.SPLIT_SCHEMA (the clips
   columns + the annotations + `split`) and returns a summary.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ifmdm_data.filter.dedup import N_FRAMES, UnionFind
from ifmdm_data.errors import InputError
from ifmdm_data.faces.identity import THRESHOLD

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REJECTED = "rejected"


def read_manifests(manifests: Sequence[str | Path]) -> pd.DataFrame:
    """One or more manifest folders / clips or split .parquet files -> one DataFrame (rows
    concatenated; a segment_id seen twice keeps its first row)."""
    from ifmdm_data.schema import read_clips, tracks_folders

    if not manifests:
        raise InputError("no manifest given")
    parts = []
    for m in manifests:      # each row remembers its manifest folder: `shard` finds its tracks there
        part = read_clips(m)
        part["source_manifest"] = tracks_folders(part, m)
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    return df.drop_duplicates("segment_id", keep="first").reset_index(drop=True)


def annotate(manifest_dir_or_df, identity: bool = True, dup: bool = True, force: bool = False,
             encoder: Optional[Callable] = None, threshold: float = THRESHOLD,
             max_distance: int = 10, n_frames: int = N_FRAMES, max_side: int = 640,
             audio: bool = True, progress: bool = False) -> pd.DataFrame:
    """Return a copy of the manifest with identity_id / dup_group (and the per-segment signals
    behind them: face_descriptor, identity_spread / _mixed / _faces, phash, audio_fingerprint).

    `filter` stores the signals (its identify stage); here they are computed only for rows that
    lack them (manifests of older versions, `identity.enabled: false`), or for every row with
    `force`: `identify.segment_signals` on `n_frames` frames of [start_s, end_s) of `path`
    (longer side at most `max_side` px). A segment whose file cannot be decoded gets no face
    (identity_id -1) and no hashes (a dup group of its own). identity_id and dup_group are then
    clustered over all rows (`identify.collection_ids`), so segments of several manifests share
    ids. `encoder`: frame -> (128,) or None (default: DlibFaceEncoder).
    Also returns the per-segment cost in df.attrs["annotate_s_per_segment"].
    """
    from ifmdm_data.filter.identify import collection_ids, empty_signals, segment_signals
    from ifmdm_data.schema import IDENTITY_SIGNALS

    df = manifest_dir_or_df.copy() if isinstance(manifest_dir_or_df, pd.DataFrame) else read_manifests([manifest_dir_or_df])
    for c in IDENTITY_SIGNALS:
        if c not in df:
            df[c] = None
    wanted = (["identity_id"] if identity else []) + (["dup_group"] if dup else [])
    if (not force and all(c in df and df[c].notna().all() for c in wanted)
            and not df["phash"].notna().any() and not df["face_descriptor"].notna().any()):
        return df          # ids given with the manifest, no signals (e.g. a dataset's own speaker labels): kept
    lacking = [i for i in range(len(df)) if force or not _has_signals(df.iloc[i], identity, dup)]
    if lacking:
        if identity and encoder is None:
            from ifmdm_data.faces.identity import DlibFaceEncoder
            encoder = DlibFaceEncoder()
        t0, failed = time.time(), 0
        it = lacking
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="annotate", unit="seg")
        rows = {}
        for i in it:
            r = df.iloc[i]
            rot = r.get("rotation")
            rot = int(rot) if rot is not None and rot == rot else 0      # null (NaN) -> 0
            try:
                rows[i] = segment_signals(str(r["path"]), float(r["start_s"]), float(r["end_s"]), rot,
                                          encoder if identity else None, n_frames=n_frames, max_side=max_side,
                                          threshold=threshold, audio=audio and dup)
            except Exception as e:  # noqa: BLE001 - a bad file is a segment without signals
                failed += 1
                log.info("annotate: %s: %s", r["segment_id"], e)
                rows[i] = empty_signals()
        for c in IDENTITY_SIGNALS:
            col = df[c].astype(object).tolist()
            for i, sig in rows.items():
                col[i] = sig[c]
            df[c] = col
        df.attrs["annotate_s_per_segment"] = (time.time() - t0) / len(lacking)
        df.attrs["annotate_failed"] = failed
        if failed:
            log.warning("annotate: %d of %d segments could not be decoded (no identity, own dup group)",
                        failed, len(lacking))
    ids, groups, id_lists = collection_ids(df, threshold, max_distance, audio=audio)
    if identity:
        df["identity_id"] = ids
        df["identity_ids"] = id_lists
    if dup:
        df["dup_group"] = groups
    return df


def _has_signals(row, identity: bool, dup: bool) -> bool:
    """The row holds what `annotate` needs (a list, possibly empty, is a computed value)."""
    def ok(v):
        return v is not None and not (isinstance(v, float) and v != v)
    return (not identity or ok(row.get("face_descriptor"))) and (not dup or ok(row.get("phash")))


def components(df: pd.DataFrame, by: str = "identity") -> np.ndarray:
    """(N,) component label per row: rows sharing a clip_id, a dup_group or (by='identity') an
    identity (identity_id >= 0, or any of identity_ids) are connected (union-find)."""
    keys = ["clip_id", "dup_group"] + (["identity_id"] if by == "identity" else [])
    # (identity_ids below: the ids of a mixed segment's frames)
    uf = UnionFind(len(df))
    for k in keys:
        if k not in df:
            continue
        first: dict = {}
        for i, v in enumerate(df[k].tolist()):
            if v is None or (isinstance(v, float) and v != v) or (k == "identity_id" and v < 0):
                continue
            j = first.setdefault(v, i)
            if j != i:
                uf.union(i, j)
    if by == "identity" and "identity_ids" in df:   # a mixed segment: every person it shows
        first = {}
        for i, v in enumerate(df["identity_ids"].tolist()):
            if v is None or (isinstance(v, float) and v != v):
                continue
            for p in v:
                j = first.setdefault(int(p), i)
                if j != i:
                    uf.union(i, j)
    return uf.labels()


def assign_splits(df: pd.DataFrame, fractions: dict, seed: int = 0, by: str = "identity"):
    """Rows -> (split name per row as a Series ('train' / 'val' / 'test'), (N,) component
    label, (C,) component sizes): whole components per split, stratified by `subset` (see the
    module docstring). `fractions`: split -> fraction (train = the rest)."""
    comp = components(df, by)
    strata = df["subset"].where(df["subset"].notna(), REJECTED).astype(str).to_numpy()
    names = sorted(set(strata))
    sidx = {s: i for i, s in enumerate(names)}
    n_comp = int(comp.max()) + 1 if len(comp) else 0
    counts = np.zeros((n_comp, len(names)))                         # (C, S) segments per stratum
    np.add.at(counts, (comp, np.array([sidx[s] for s in strata], int)), 1)
    total = counts.sum(0)                                            # (S,)
    splits = [s for s in SPLITS if s == "train" or fractions.get(s, 0) > 0]
    frac = np.array([fractions.get(s, 0.0) if s != "train" else 1.0 - sum(fractions.values()) for s in splits])
    target = frac[:, None] * total[None]                             # (P, S) segments wanted
    filled = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_comp)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]  # largest first, seeded ties
    choice = np.zeros(n_comp, int)
    for c in order:
        mix = counts[c] / max(counts[c].sum(), 1)                    # the component's strata
        need = ((target - filled) / np.maximum(total, 1) * mix).sum(1)  # (P,) missing share
        p = int(np.argmax(need))
        choice[c] = p
        filled[p] += counts[c]
    # every requested split gets a component when there are enough: move the smallest ones
    sizes = counts.sum(1)
    for p in range(1, len(splits)):
        if n_comp >= len(splits) and not (choice == p).any():
            donors = [c for c in order[::-1] if (choice == choice[c]).sum() > 1]
            if donors:
                choice[donors[0]] = p
    return pd.Series(np.array(splits)[choice[comp]], index=df.index, name="split"), comp, sizes


def stored_identity_settings(df: pd.DataFrame) -> tuple[Optional[float], Optional[int]]:
    """The identity.threshold and identity.max_phash_distance the rows' `filter` runs used
    (OUT/summary.json of each source manifest folder; `decide` updates it); (None, None) when
    the folders disagree or do not say."""
    import json

    from ifmdm_data.io import storage

    seen = set()
    for folder in sorted(set(df["source_manifest"].dropna())) if "source_manifest" in df else []:
        loc = storage.join(folder, "summary.json")
        try:
            ident = json.loads(storage.read_text(loc)).get("config", {}).get("identity") if storage.exists(loc) else None
        except (OSError, ValueError):
            ident = None
        seen.add(((ident or {}).get("threshold"), (ident or {}).get("max_phash_distance")))
    if len(seen) == 1:
        t, d = seen.pop()
        return (float(t) if t is not None else None), (int(d) if d is not None else None)
    return None, None


def run_split(manifests: Sequence[str | Path], out: str | Path, by: str = "identity",
              test_fraction: float = 0.05, val_fraction: float = 0.0, seed: int = 0,
              threshold: Optional[float] = None, max_distance: Optional[int] = None, progress: bool = False,
              encoder: Optional[Callable] = None) -> dict:
    """Read, annotate where needed, assign, write OUT/{train,val,test}.parquet; return a summary
    {splits: {name: {segments, fraction (the share asked for), identities, dup_groups,
    subsets: {subset: n}}}, groups, ...}."""
    from ifmdm_data.schema import split_table, write_parquet_atomic

    if by not in ("identity", "clip"):
        raise InputError(f"--by takes identity or clip, got {by!r}")
    for name, f in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
        if not 0.0 <= f < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {f}")
    if test_fraction + val_fraction >= 1.0:
        raise InputError("--test-fraction + --val-fraction must be < 1")
    df = read_manifests(manifests)
    if not len(df):
        raise InputError(f"the manifests {', '.join(map(str, manifests))} have no segments")
    stored_t, stored_d = stored_identity_settings(df)
    threshold = threshold if threshold is not None else (stored_t if stored_t is not None else THRESHOLD)
    max_distance = max_distance if max_distance is not None else (stored_d if stored_d is not None else 10)
    if not 0 < threshold < 2 or not 0 <= max_distance <= 64:
        raise InputError(f"--identity-threshold must be in (0, 2) (dlib distance) and --dup-bits in [0, 64]; "
                         f"got {threshold}, {max_distance}")
    df = annotate(df, identity=(by == "identity"), dup=True, threshold=threshold,
                  max_distance=max_distance, encoder=encoder, progress=progress)
    # by clip: identities only where the manifest has them (-1 elsewhere); a row without a
    # dup_group is a group of its own
    ident = pd.to_numeric(df["identity_id"], errors="coerce") if "identity_id" in df else pd.Series(np.nan, index=df.index)
    df["identity_id"] = ident.fillna(-1).astype("int64")
    dup = pd.to_numeric(df["dup_group"], errors="coerce") if "dup_group" in df else pd.Series(np.nan, index=df.index)
    free = dup.isna().to_numpy()
    dup[free] = (dup.max() if dup.notna().any() else -1) + 1 + np.arange(int(free.sum()))
    df["dup_group"] = dup.astype("int64")
    split, comp, _ = assign_splits(df, {"test": test_fraction, "val": val_fraction}, seed=seed, by=by)
    df["split"] = split
    df["split_group"] = comp
    from ifmdm_data.io import storage

    out = storage.prepare_output(str(out))       # a local folder or an object-storage prefix
    summary = {"segments": int(len(df)), "groups": int(comp.max()) + 1, "by": by, "seed": seed,
               "threshold": threshold, "max_phash_distance": max_distance,
               "identities": int(df.loc[df["identity_id"] >= 0, "identity_id"].nunique()),
               "dup_groups_multi": int((df["dup_group"].value_counts() > 1).sum()),
               "annotate_s_per_segment": df.attrs.get("annotate_s_per_segment"),
               "annotate_failed": df.attrs.get("annotate_failed", 0), "splits": {}}
    asked = {"train": 1.0 - test_fraction - val_fraction, "val": val_fraction, "test": test_fraction}
    for name in SPLITS:
        part = df[df["split"] == name]
        if name != "train" and not len(part) and not asked[name]:
            continue
        write_parquet_atomic(split_table(part), storage.join(out, f"{name}.parquet"))
        sub = part["subset"].where(part["subset"].notna(), REJECTED).value_counts()
        ids = part.loc[part["identity_id"] >= 0, "identity_id"]
        summary["splits"][name] = {
            "segments": int(len(part)), "fraction": asked[name], "identities": int(ids.nunique()),
            "dup_groups": int(part["dup_group"].nunique()),
            "subsets": {k: int(v) for k, v in sorted(sub.items())},
            "identities_per_subset": {k: int(ids[part.loc[ids.index, "subset"].fillna(REJECTED) == k].nunique())
                                      for k in sorted(sub.index)},
        }
    return summary
