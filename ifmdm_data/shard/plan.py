"""The shard plan: which samples go into which shard, fixed on the first `shard` run.

Samples of a subset are sorted by key and packed in order into shards of about
`ShardConfig.target_shard_bytes` (estimated sizes); a re-run keeps the planned shards as they
are and packs samples they lack into new shards after them (OUT/_work/plan.json).
"""
from __future__ import annotations

import json

import pandas as pd

from ifmdm_data.reasons import SUBSETS
from ifmdm_data.shard import format as sf
from ifmdm_data.shard.segment import AUDIO_RATE, ShardConfig

PLAN_VERSION = 1


def _estimate_bytes(duration_s: float, cfg: ShardConfig, speech_dim: int, n_points: int = 478) -> int:
    d = max(float(duration_s or 0.0), 0.0)
    per_s = (cfg.video_bytes_per_s() + 2 * AUDIO_RATE + cfg.fps * speech_dim * 2
             + cfg.fps * n_points * 2 * 2)
    return int(d * per_s) + 4096


def _pack(keys_sizes: list[tuple[str, int]], subset: str, first_index: int, target: int) -> list[dict]:
    shards, cur, cur_bytes = [], [], 0
    for key, size in keys_sizes:
        if cur and cur_bytes + size > target:
            shards.append((cur, cur_bytes))
            cur, cur_bytes = [], 0
        cur.append(key)
        cur_bytes += size
    if cur:
        shards.append((cur, cur_bytes))
    return [{"name": sf.SHARD_NAME.format(subset=subset, index=first_index + i), "keys": keys,
             "est_bytes": int(b)} for i, (keys, b) in enumerate(shards)]


def make_plan(selected: pd.DataFrame, cfg: ShardConfig, speech_dim: int, old: dict | None) -> tuple[dict, int]:
    """Deterministic assignment of samples to shards per subset: sorted by key, packed in
    order up to cfg.target_shard_bytes (estimated sizes). Keeps `old`'s shards as they are
    and packs samples it lacks into new shards after them. Returns (plan, new shard count)."""
    plan = {"version": PLAN_VERSION, "subsets": {}} if old is None else json.loads(json.dumps(old))
    added = 0
    for subset in SUBSETS:
        part = selected[selected["subset"] == subset]
        if part.empty:
            continue
        shards = plan["subsets"].setdefault(subset, [])
        planned = {k for s in shards for k in s["keys"]}
        new = part[~part["segment_id"].isin(planned)].sort_values("segment_id")
        if new.empty:
            continue
        first = 1 + max((int(s["name"].rsplit("-", 1)[1].split(".")[0]) for s in shards), default=-1)
        items = [(r.segment_id, _estimate_bytes(r.duration_s, cfg, speech_dim))
                 for r in new.itertuples()]
        fresh = _pack(items, subset, first, cfg.target_shard_bytes)
        shards.extend(fresh)
        added += len(fresh)
    return plan, added
