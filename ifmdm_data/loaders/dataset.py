"""The shared training-data plumbing: the sharded IterableDataset base (epoch, rank / worker
split), the shuffle-buffer stage and the DataLoader factory (fork-server workers)."""
from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections import Counter
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ifmdm_data.io.console import plural
from ifmdm_data.loaders.shards import resolve_rank, shard_order, split_shards

log = logging.getLogger("ifmdm_data.loaders")


def shuffled(items: Iterable, bufsize: int, rng: np.random.Generator) -> Iterator:
    """Stage: shuffle with a buffer of `bufsize` items (0 or 1: keep the order)."""
    if bufsize <= 1:
        yield from items
        return
    buf = []
    for x in items:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        j = int(rng.integers(bufsize))
        yield buf[j]
        buf[j] = x
    for j in rng.permutation(len(buf)):
        yield buf[j]


class ShardDataset(IterableDataset):
    """Base: the shard list, the epoch (shared with workers) and the rank / worker split."""

    def __init__(self, shards: list[str], seed: int = 0, epoch: int = 0, rank=None,
                 world_size=None):
        super().__init__()
        if seed < 0 or epoch < 0:
            raise ValueError("seed and epoch must be >= 0")
        self.shards = list(shards)
        self.seed = int(seed)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self._epoch = multiprocessing.Value("q", int(epoch), lock=False)
        self.stats: Counter = Counter()   # this process only (exact when num_workers=0)
        if len(self.shards) < self.world_size:
            warnings.warn(f"{plural(len(self.shards), 'shard')} for {self.world_size} ranks: some ranks "
                          f"get no data (DDP would wait on them); write more shards")

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Call before iter(loader): also reaches persistent DataLoader workers."""
        self._epoch.value = int(epoch)

    def worker_shards(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[str]:
        return split_shards(shard_order(self.shards, self.seed, epoch), self.rank,
                            self.world_size, worker, num_workers)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            cv2.setNumThreads(1)   # one worker per core
        epoch = self.epoch
        shards = self.worker_shards(epoch, worker, num_workers)
        if not shards:
            warnings.warn(f"rank {self.rank} worker {worker}: no shard this epoch "
                          f"({plural(len(self.shards), 'shard')} for {plural(self.world_size, 'rank')} x "
                          f"{plural(num_workers, 'worker')})")
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        before = Counter(self.stats)
        yield from self._iterate(shards, rng)
        log.info("rank %d worker %d epoch %d: %s", self.rank, worker, epoch,
                 dict(self.stats - before))

    def _iterate(self, shards: list[str], rng: np.random.Generator) -> Iterator[dict]:
        raise NotImplementedError


class EpochDataLoader(DataLoader):
    """A DataLoader whose `set_epoch(e)` reshuffles the shards (call it before each epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def default_num_workers() -> int:
    """One worker per core of this rank, leaving one core to the training process (max 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (cores or 1) // max(1, local) - 1))


def _init_worker(env: dict, worker_id: int) -> None:
    from ifmdm_data.io.storage import apply_env
    apply_env(env)


def make_loader(dataset: ShardDataset, batch_size: int, num_workers=None, pin_memory=None,
                drop_last=False, prefetch_factor=2) -> EpochDataLoader:
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    # Workers start from a fork server, not by forking this process: a trainer (or a test
    # session) may hold threads of Ray, mediapipe or CUDA whose locks a forked child would
    # inherit locked; that hung a DataLoader worker in the test suite.
    # The fork server keeps the environment of the moment it started (the first loader of the
    # process), so the object-storage variables set now travel to the workers explicitly.
    ctx, init = None, None
    if num_workers > 0:
        import functools
        import multiprocessing as mp

        from ifmdm_data.io.storage import forward_env
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        init = functools.partial(_init_worker, forward_env())
    return EpochDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        worker_init_fn=init,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0, multiprocessing_context=ctx,
        prefetch_factor=prefetch_factor if num_workers > 0 else None)
