"""The shard list of a shards/ folder (or bucket) and its per-epoch rank / worker split.

See `ifmdm_data.loaders` for the split rules (a seeded permutation per epoch, then round-robin
over ranks and workers).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import torch

from ifmdm_data.shard.format import ShardFormatError, check_member_name

SUBSETS = ("coarse", "lip", "hard")


def list_shards(shards_root, subsets=SUBSETS, stage2=False) -> list[str]:
    """Sorted absolute tar paths (or URLs) of `subsets` under `shards_root` (a folder or an
    object-storage URL).

    From `shards_root/index.parquet` when present (with `stage2=True`, only shards holding at
    least one `stage2_ok` sample with audio), else `shards_root/{subset}/*.tar`. A list or
    tuple of tar paths is returned as given (sorted).
    """
    from ifmdm_data.io import storage

    if isinstance(shards_root, (list, tuple)):
        return sorted(str(p) if storage.is_url(p) else str(Path(p).absolute()) for p in shards_root)
    if str(shards_root).endswith(".parquet"):    # a split file of `ifmdm-data split`, say
        raise ShardFormatError(f"{shards_root} is a manifest, not a shard folder: run `ifmdm-data shard "
                               f"{shards_root} -o shards/{Path(str(shards_root)).stem}` and use that folder")
    if storage.is_url(shards_root):
        return _list_remote_shards(str(shards_root).rstrip("/"), tuple(subsets), stage2)
    root = Path(shards_root).absolute()
    subsets = tuple(subsets)
    index = root / "index.parquet"
    if index.exists():
        import pyarrow.parquet as pq

        t = pq.read_table(index, columns=["shard", "subset", "stage2_ok", "has_audio"]).to_pydict()
        rows = zip(t["shard"], t["subset"], t["stage2_ok"], t["has_audio"])
        rel = {s for s, sub, ok, audio in rows
               if sub in subsets and (not stage2 or (ok and audio))}
        for r in rel:
            check_member_name(r, str(index))   # relative to shards/, no '..'
        shards = sorted(str(root / r) for r in rel)
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise ShardFormatError(f"{index}: {len(missing)} listed shard(s) do not exist, "
                                   f"e.g. {missing[0]} (re-run `ifmdm-data shard`)")
    else:
        shards = sorted(p for sub in subsets for p in glob.glob(str(root / sub / "*.tar")))
    if not shards:
        raise ShardFormatError(f"{root}: no shards for subsets {list(subsets)} (expected "
                               f"index.parquet or {{subset}}/*.tar; run `ifmdm-data shard`)")
    return shards


def _list_remote_shards(root: str, subsets: tuple, stage2: bool) -> list[str]:
    """`list_shards` for an object-storage root (same rules, through ifmdm_data/io/storage.py)."""
    from ifmdm_data.io import storage

    index = storage.join(root, "index.parquet")
    if storage.isfile(index):
        t = storage.read_parquet(index, columns=["shard", "subset", "stage2_ok", "has_audio"]).to_pydict()
        rel = {s for s, sub, ok, audio in zip(t["shard"], t["subset"], t["stage2_ok"], t["has_audio"])
               if sub in subsets and (not stage2 or (ok and audio))}
        for r in rel:
            check_member_name(r, index)
        shards = sorted(storage.join(root, r) for r in rel)
        present = {storage.join(root, sub, n) for sub in subsets for n in storage.list_names(storage.join(root, sub), ".tar")}
        missing = [s for s in shards if s not in present]
        if missing:
            raise ShardFormatError(f"{index}: {len(missing)} listed shard(s) do not exist, "
                                   f"e.g. {missing[0]} (re-run `ifmdm-data shard`)")
    else:
        shards = sorted(storage.join(root, sub, n) for sub in subsets
                        for n in storage.list_names(storage.join(root, sub), ".tar"))
    if not shards:
        raise ShardFormatError(f"{root}: no shards for subsets {list(subsets)} (expected "
                               f"index.parquet or {{subset}}/*.tar; run `ifmdm-data shard`)")
    return shards


def shard_order(shards: list[str], seed: int, epoch: int) -> list[str]:
    """The epoch's shard order: a permutation seeded by (seed, epoch), equal on every rank."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in perm]


def split_shards(shards: list[str], rank: int, world_size: int, worker: int,
                 num_workers: int) -> list[str]:
    """Round-robin over ranks, then over the rank's workers (see the module docstring)."""
    return shards[rank::world_size][worker::num_workers]


def resolve_rank(rank=None, world_size=None) -> tuple[int, int]:
    if rank is None or world_size is None:
        r, w = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return int(rank), int(world_size)
