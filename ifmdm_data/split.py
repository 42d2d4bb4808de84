"""`ifmdm-data split`: identity- and duplicate-disjoint train / val / test manifests.

Each row keeps `source_manifest`, the `filter` folder it came from, so that `shard` and `report`
given a split file find its tracks (OUT/tracks/<segment_id>.parquet) there.

1. `annotate` adds `identity_id` (identity.py) and `dup_group` (dedup.py) where a manifest lacks
   them, from a few frames of each segment's source video (path, start_s, end_s). `filter` does
   not compute them yet, so this runs in one process here (about 1-2 s per segment on one CPU
   core: decode + 4 dlib descriptors + 8 pHashes).
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

from .dedup import N_FRAMES, UnionFind, dup_groups, frame_hashes, hash_to_hex, hex_to_hash, sample_frames
from .errors import InputError
from .identity import THRESHOLD, cluster_identities, describe_segment

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REJECTED = "rejected"


def read_manifests(manifests: Sequence[str | Path]) -> pd.DataFrame:
    """One or more manifest folders / clips or split .parquet files -> one DataFrame (rows
    concatenated; a segment_id seen twice keeps its first row)."""
    from .schema import read_clips, tracks_folders

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
             max_distance: int = 10, n_frames: int = N_FRAMES, max_side: int = 1280,
             progress: bool = False) -> pd.DataFrame:
    """Return a copy of the manifest with identity_id / identity_spread / identity_mixed /
    identity_faces / face_descriptor and phash / dup_group, computed where absent (or `force`).

    Per segment: `n_frames` frames spread over [start_s, end_s) of `path` (longer side at most
    `max_side` px); pHash of each, the dlib descriptor of every second one. A segment whose file
    cannot be decoded gets no face (identity_id -1) and no hashes (a dup group of its own).
    Descriptors already in the manifest (face_descriptor) are re-clustered without decoding;
    so are stored phash lists. `encoder`: frame -> (128,) or None (default: DlibFaceEncoder).
    Returns also per-segment cost in df.attrs["annotate_s_per_segment"].
    """
    df = manifest_dir_or_df.copy() if isinstance(manifest_dir_or_df, pd.DataFrame) else read_manifests([manifest_dir_or_df])
    need_id = identity and (force or "identity_id" not in df)
    need_dup = dup and (force or "dup_group" not in df)
    have_desc = not force and "face_descriptor" in df
    have_hash = not force and "phash" in df
    decode_id = need_id and not have_desc
    decode_dup = need_dup and not have_hash
    if decode_id and encoder is None:
        from .identity import DlibFaceEncoder
        encoder = DlibFaceEncoder()
    n = len(df)
    if decode_id or decode_dup:
        descs, spreads, mixed, faces, hashes = [None] * n, [np.nan] * n, [False] * n, [0] * n, [[] for _ in range(n)]
        t0, failed = time.time(), 0
        it = range(n)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="annotate", unit="seg")
        for i in it:
            r = df.iloc[i]
            rot = r.get("rotation")
            rot = int(rot) if rot is not None and rot == rot else 0      # null (NaN) -> 0
            try:
                frames = sample_frames(str(r["path"]), float(r["start_s"]), float(r["end_s"]), n=n_frames,
                                       rotation=rot, max_side=max_side)
            except Exception as e:  # noqa: BLE001 - a bad file is a segment without signals
                failed += 1
                log.info("annotate: %s: %s", r["segment_id"], e)
                continue
            if decode_dup:
                hashes[i] = [hash_to_hex(h) for h in frame_hashes(frames)]
            if decode_id:
                s = describe_segment(frames[::2], encoder, threshold)
                descs[i], spreads[i], mixed[i], faces[i] = s["descriptor"], s["spread"], s["mixed"], s["n_faces"]
        df.attrs["annotate_s_per_segment"] = (time.time() - t0) / max(n, 1)
        df.attrs["annotate_failed"] = failed
        if failed:
            log.warning("annotate: %d of %d segments could not be decoded (no identity, own dup group)", failed, n)
        if decode_dup:
            df["phash"] = hashes
        if decode_id:
            df["face_descriptor"] = [d if d is not None else np.zeros(0, np.float32) for d in descs]
            df["identity_spread"] = np.asarray(spreads, np.float32)
            df["identity_mixed"] = mixed
            df["identity_faces"] = np.asarray(faces, np.int32)
    if need_id:
        descs = [np.asarray(d, np.float32) if d is not None and len(d) else None for d in df["face_descriptor"]]
        df["identity_id"] = cluster_identities(descs, threshold)
    if need_dup:
        df["dup_group"] = dup_groups([[hex_to_hash(h) for h in (hs if hs is not None else [])] for hs in df["phash"]],
                                     max_distance=max_distance)
    return df


def components(df: pd.DataFrame, by: str = "identity") -> np.ndarray:
    """(N,) component label per row: rows sharing a clip_id, a dup_group or (by='identity') an
    identity_id >= 0 are connected (union-find)."""
    keys = ["clip_id", "dup_group"] + (["identity_id"] if by == "identity" else [])
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


def run_split(manifests: Sequence[str | Path], out: str | Path, by: str = "identity",
              test_fraction: float = 0.05, val_fraction: float = 0.0, seed: int = 0,
              threshold: float = THRESHOLD, max_distance: int = 10, progress: bool = False,
              encoder: Optional[Callable] = None) -> dict:
    """Read, annotate where needed, assign, write OUT/{train,val,test}.parquet; return a summary
    {splits: {name: {segments, identities, dup_groups, subsets: {subset: n}}}, groups, ...}."""
    from .schema import split_table, write_parquet_atomic

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
    df = annotate(df, identity=(by == "identity"), dup=True, threshold=threshold,
                  max_distance=max_distance, encoder=encoder, progress=progress)
    if "identity_id" not in df:
        df["identity_id"] = -1
    split, comp, _ = assign_splits(df, {"test": test_fraction, "val": val_fraction}, seed=seed, by=by)
    df["split"] = split
    df["split_group"] = comp
    out = Path(out)
    summary = {"segments": int(len(df)), "groups": int(comp.max()) + 1, "by": by, "seed": seed,
               "identities": int(df.loc[df["identity_id"] >= 0, "identity_id"].nunique()),
               "dup_groups_multi": int((df["dup_group"].value_counts() > 1).sum()),
               "annotate_s_per_segment": df.attrs.get("annotate_s_per_segment"),
               "annotate_failed": df.attrs.get("annotate_failed", 0), "splits": {}}
    for name in SPLITS:
        part = df[df["split"] == name]
        if name != "train" and not len(part) and not {"val": val_fraction, "test": test_fraction}[name]:
            continue
        write_parquet_atomic(split_table(part), out / f"{name}.parquet")
        sub = part["subset"].where(part["subset"].notna(), REJECTED).value_counts()
        ids = part.loc[part["identity_id"] >= 0, "identity_id"]
        summary["splits"][name] = {
            "segments": int(len(part)), "identities": int(ids.nunique()),
            "dup_groups": int(part["dup_group"].nunique()),
            "subsets": {k: int(v) for k, v in sorted(sub.items())},
            "identities_per_subset": {k: int(ids[part.loc[ids.index, "subset"].fillna(REJECTED) == k].nunique())
                                      for k in sorted(sub.index)},
        }
    return summary
