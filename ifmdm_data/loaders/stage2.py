"""Stage-2 training data: windows of motion latents (from the motion sidecars) with the aligned
speech features (from the main shards), as a sharded dataset and its DataLoader.

    shards + sidecars -> clips (checked, joined by key) -> windows -> shuffle -> tensors
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ifmdm_data.loaders.dataset import EpochDataLoader, ShardDataset, make_loader, shuffled
from ifmdm_data.loaders.shards import SUBSETS, list_shards
from ifmdm_data.shard.format import SIDECAR_MEMBERS, ShardFormatError, check_motion
from ifmdm_data.shard.reader import TarShard, load_checked, read_meta

STAGE2_READ = ("json", "landmarks.npy", "speech.npy")           # mp4 and wav are never read


def sidecar_path(shard: str, motion_root) -> str:
    """motion_root/{subset}/{same tar name}: the subset is the shard's folder."""
    from ifmdm_data.io import storage

    sub, name = shard.rstrip("/").rsplit("/", 2)[-2:]
    if storage.is_url(motion_root):
        return storage.join(motion_root, sub, name)
    p = Path(shard)
    return str(Path(motion_root).absolute() / p.parent.name / p.name)


def read_motion(side: TarShard, key: str, n_frames: int) -> tuple[np.ndarray, dict]:
    where = side.where(key)
    members = side.members(key)
    for m in SIDECAR_MEMBERS:
        if m not in members:
            raise ShardFormatError(f"{where}: missing member .{m}")
    meta = side.read(key, "motion.json")
    try:
        d = int(meta["dim"])
        mean = np.asarray(meta["mean"], np.float32)
        std = np.asarray(meta["std"], np.float32)
    except (TypeError, KeyError, ValueError) as e:
        raise ShardFormatError(f"{where}.motion.json: needs dim, mean, std ({e!r})") from None
    if mean.shape != (d,) or std.shape != (d,):
        raise ShardFormatError(f"{where}.motion.json: mean/std must have dim={d} values")
    motion = check_motion(side.read(key, "motion.npy"), meta, n_frames, where)
    return motion, {"mean": mean, "std": std, "encoder": meta.get("encoder")}


def joined_clips(pairs: Iterable[tuple[str, str]], stats: Counter) -> Iterator[dict]:
    """Stage: (main shard, sidecar) -> stage-2 clips {key, speech, motion, mean, std}.

    The sidecar must list a subsequence of the main shard's keys, in the same order, holding
    every stage-2 usable sample (stage2_ok and has_audio)."""
    for path, side_path in pairs:
        with TarShard(path) as main, TarShard(side_path) as side:
            side_keys, pos = side.keys(), 0
            for key, _ in main.samples():
                meta = read_meta(main, key)
                stats["clips_read"] += 1
                in_side = pos < len(side_keys) and side_keys[pos] == key
                usable = bool(meta["stage2_ok"]) and bool(meta["has_audio"])
                if not in_side and usable:
                    nxt = side_keys[pos] if pos < len(side_keys) else "the end of the sidecar"
                    raise ShardFormatError(
                        f"{side_path}: no motion for key {key!r} of {path} (found {nxt!r}); "
                        f"a sidecar lists the main shard's keys in the same order: re-run the "
                        f"motion extraction")
                pos += in_side
                if not usable:
                    stats["clips_not_stage2"] += 1
                    continue
                s = load_checked(main, key, meta, STAGE2_READ)
                n = int(meta["n_frames"])
                motion, mstats = read_motion(side, key, n)
                yield {"key": key, "speech": s["speech.npy"], "motion": motion,
                       "mean": mstats["mean"], "std": mstats["std"]}
            if pos < len(side_keys):
                raise ShardFormatError(f"{side_path}: key {side_keys[pos]!r} is not in {path} "
                                       f"(or not in the same order)")
        stats["shards_read"] += 1


MOTION_STATS = ("clip", "window")


def window_stats(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over frames of a motion window (n_f, D), computed in float64 like the
    sidecar's per-clip statistics (population std), returned as float32 (D,), (D,)."""
    m64 = motion.astype(np.float64)
    return m64.mean(0).astype(np.float32), m64.std(0).astype(np.float32)


def clip_windows(clips: Iterable[dict], window: int, stride: int, stats: Counter,
                 motion_stats: str = "clip") -> Iterator[dict]:
    """Stage: clips -> every window of `window` frames, starts 0, stride, 2*stride, ...;
    clips shorter than `window` are skipped (counted in stats["clips_too_short"]).
    `motion_stats`: "clip": motion_mean / motion_std are the clip's (from the sidecar);
    "window": they are computed over the window's own frames (as the IF-MDM authors' code does)."""
    if motion_stats not in MOTION_STATS:
        raise ValueError(f"motion_stats must be one of {MOTION_STATS}, got {motion_stats!r}")
    for c in clips:
        motion, speech = c["motion"], c["speech"]
        n = motion.shape[0]
        if n < window:
            stats["clips_too_short"] += 1
            continue
        mean, std = torch.from_numpy(c["mean"]), torch.from_numpy(c["std"])
        for start in range(0, n - window + 1, stride):
            hint = motion[start - 1] if start > 0 else motion[0]
            stats["windows"] += 1
            if motion_stats == "window":
                w_mean, w_std = window_stats(motion[start:start + window])
                mean, std = torch.from_numpy(w_mean), torch.from_numpy(w_std)
            yield {"motion": torch.from_numpy(motion[start:start + window].copy()),   # (n_f, D)
                   "speech": torch.from_numpy(speech[start:start + window].astype(np.float32)),
                   "hint": torch.from_numpy(hint.copy()),                               # (D,)
                   "hint_is_first": start == 0,
                   "motion_mean": mean, "motion_std": std,
                   "key": c["key"], "start": start}


class Stage2Dataset(ShardDataset):
    """Windows {"motion": (n_f, D), "speech": (n_f, dim), "hint": (D,), "hint_is_first",
    "motion_mean": (D,), "motion_std": (D,), "key", "start"} (float32 tensors); the
    statistics are the clip's or the window's own (`motion_stats`, see `clip_windows`)."""

    def __init__(self, shards, sidecars: dict, window=32, stride=None, shuffle_buffer=256,
                 motion_stats="clip", **split):
        super().__init__(shards, **split)
        self.sidecars = dict(sidecars)
        self.window = int(window)
        self.stride = int(stride or window)
        self.shuffle_buffer = int(shuffle_buffer)
        self.motion_stats = motion_stats
        if self.window < 1 or self.stride < 1:
            raise ValueError("window and stride must be >= 1")
        if motion_stats not in MOTION_STATS:
            raise ValueError(f"motion_stats must be one of {MOTION_STATS}, got {motion_stats!r}")

    def _iterate(self, shards, rng):
        clips = joined_clips(((s, self.sidecars[s]) for s in shards), self.stats)
        windows = clip_windows(clips, self.window, self.stride, self.stats, self.motion_stats)
        return shuffled(windows, self.shuffle_buffer, rng)


def stage2_dataset(shards_root, motion_root, subsets=SUBSETS, window=32, stride=None,
                   shuffle_buffer=256, seed=0, rank=None, world_size=None,
                   epoch=0, motion_stats="clip") -> Stage2Dataset:
    """Stage-2 windows from the main shards (speech, json) joined by key with the motion
    sidecars `motion_root/{subset}/{same tar name}`. Only samples with stage2_ok and audio;
    `stride` defaults to `window`; hint = motion of the frame before the window (the first
    frame's own motion, with hint_is_first=True, when the window starts at 0).
    `motion_stats`: motion_mean / motion_std per "clip" (the sidecar's) or per "window"."""
    shards = list_shards(shards_root, subsets, stage2=True)
    sidecars = {s: sidecar_path(s, motion_root) for s in shards}
    from ifmdm_data.io import storage
    missing = [p for p in sidecars.values() if not storage.isfile(p)]
    if missing:
        raise ShardFormatError(f"{len(missing)} motion sidecar(s) missing, e.g. {missing[0]}: "
                               f"run the stage-2 motion extraction for {motion_root}")
    return Stage2Dataset(shards, sidecars, window=window, stride=stride,
                         shuffle_buffer=shuffle_buffer, motion_stats=motion_stats, seed=seed,
                         epoch=epoch, rank=rank, world_size=world_size)


def stage2_loader(shards_root, motion_root, batch_size: int, num_workers=None, *,
                  pin_memory=None, drop_last=False, **dataset_kwargs) -> EpochDataLoader:
    """`stage2_dataset(shards_root, motion_root, **dataset_kwargs)` batched: motion
    (B, n_f, D), speech (B, n_f, dim), hint / motion_mean / motion_std (B, D), ...
    (`motion_stats="window"`: the statistics of each window instead of its clip's)."""
    return make_loader(stage2_dataset(shards_root, motion_root, **dataset_kwargs), batch_size,
                       num_workers, pin_memory, drop_last)
