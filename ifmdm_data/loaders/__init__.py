"""Training data loaders: stage-1 frame pairs and stage-2 motion windows, read from the shards.

The format is defined once in `shard_format.py`. Reading a tar (every header checked before any
data; samples, decoded members, mp4 frames) is in `shard_reader.py`; the stage-2 motion sidecar
writer in `motion_sidecar.py`. This module holds the shard list and its rank / worker split, the
stages that turn samples into training items, the two datasets and their DataLoaders. The public
names of those two modules stay importable from here (`TarShard`, `read_meta`, `decode_frames`,
`write_motion_sidecar`, ...).

Both datasets are torch `IterableDataset`s built as a chain of small stages, each a function
from an iterator to an iterator (the webdataset style):

    stage 1: shards -> samples (checked) -> decoded frame pairs of one clip (or augmented pairs
             of one image of an image set: `image_pairs.py`) -> shuffle -> tensors
    stage 2: shards + sidecars -> clips (checked, joined by key) -> windows -> shuffle -> tensors

Shards are local (or shared-filesystem) paths or object-storage URLs (`s3://bucket/shards`:
`storage.py`; each tar is read with ranged reads through fsspec, credentials and endpoint from
the standard AWS_* variables); a tar is never extracted.

Shard split (every epoch)
-------------------------
1. The shard list (from `shards/index.parquet`, else a glob of `shards/{subset}/*.tar`,
   sorted) is permuted with `numpy.random.default_rng([seed, epoch])`: the same order on every
   rank and worker, a different one each epoch.
2. Round-robin over DDP ranks, then over the DataLoader workers of the rank:
   `order[rank::world_size][worker::num_workers]`. Each tar is read by exactly one worker of
   one rank per epoch; together the ranks see every sample exactly once.
3. Fewer shards than `world_size * num_workers`: the workers (or ranks) left without a shard
   yield nothing for that epoch (a warning says so). Nothing is read twice; but ranks then see
   different numbers of samples, and so does any uneven split: DDP training loops must not
   assume equal-length epochs (run a fixed number of steps per epoch, or stop all ranks when
   the first one runs out). Write at least `world_size * num_workers` shards (many more is
   better: shuffling is per shard plus a buffer).

Rank and world size come from the arguments, else from `torch.distributed` when initialised
(resolved when the dataset is built, in the main process), else 0 and 1. The epoch lives in
shared memory: call `dataset.set_epoch(e)` (or `loader.set_epoch(e)`) before `iter(loader)`;
it reaches persistent workers too. Random choices (pairs, buffers, augmentation) use
`default_rng([seed, epoch, rank, worker])`: a run is reproducible for a fixed worker count.
"""
from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ifmdm_data.io.console import plural
from ifmdm_data.shard.motion_sidecar import write_motion_sidecar  # noqa: F401 - re-exported
from ifmdm_data.shard.format import SIDECAR_MEMBERS, ShardFormatError, check_member_name, check_motion
from ifmdm_data.shard.reader import TarShard, decode_frames, load_checked, read_meta
from ifmdm_data.shard.reader import main_samples  # noqa: F401 - re-exported
from ifmdm_data.shard.reader import UNREAD, split_member  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

SUBSETS = ("coarse", "lip", "hard")
STAGE1_READ = ("mp4", "json", "landmarks.npy", "speech.npy")   # wav is never read
STAGE2_READ = ("json", "landmarks.npy", "speech.npy")           # mp4 and wav are never read


# ---------------------------------------------------------------------------------------------
# Shard lists and the rank / worker split
# ---------------------------------------------------------------------------------------------

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
    """`list_shards` for an object-storage root (same rules, through storage.py)."""
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


# ---------------------------------------------------------------------------------------------
# Stage 1: pairs of frames of one clip
# ---------------------------------------------------------------------------------------------

def sample_pairs(n_frames: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """k distinct ordered pairs (i_a, i_m), i_a != i_m, uniform over a clip of n_frames
    (all n*(n-1) pairs when there are fewer than k)."""
    total = n_frames * (n_frames - 1)
    flat = rng.choice(total, size=min(k, total), replace=False)
    a, r = np.divmod(flat, n_frames - 1)
    m = r + (r >= a)
    return [(int(i), int(j)) for i, j in zip(a, m)]


def stage1_samples(shards: Iterable[str], stats: Counter) -> Iterator[dict]:
    """Stage: shard paths -> checked samples: video samples with the members STAGE1_READ
    decoded (`main_samples`' checks), image samples (`ifmdm-data shard --images`) with their
    picture decoded as uint8 RGB under "image"."""
    from ifmdm_data.shard.image_set import IMAGE_MEMBERS, check_image_sample, is_image_sample

    for path in shards:
        with TarShard(path) as shard:
            for key, members in shard.samples():
                meta = read_meta(shard, key)
                stats["clips_read"] += 1
                if is_image_sample(members):
                    s = shard.load(key, set(IMAGE_MEMBERS))
                    s["json"], s["image"] = meta, check_image_sample(s, path)
                    yield s
                else:
                    yield load_checked(shard, key, meta, STAGE1_READ)
        stats["shards_read"] += 1


def image_pairs(s: dict, size: int, pairs_per_clip: int, rng: np.random.Generator,
                stats: Counter) -> Iterator[dict]:
    """`pairs_per_clip` pairs from one image sample: two random warps of the picture each
    (`image_pairs.image_motion_pair`), resized to size x size first; frames (0, 0)."""
    from ifmdm_data.shard.image_pairs import image_motion_pair

    img = s["image"]
    if img.shape[0] != size or img.shape[1] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    stats["images_decoded"] += 1
    for _ in range(pairs_per_clip):
        a, m = image_motion_pair(img, rng)
        yield {"appearance": a, "motion": m, "key": s["__key__"], "frames": (0, 0)}


def clip_pairs(samples: Iterable[dict], size: int, pairs_per_clip: int,
               rng: np.random.Generator, stats: Counter, threads: int = 1) -> Iterator[dict]:
    """Stage: samples -> `pairs_per_clip` pairs of uint8 frames per clip (one decode a clip);
    an image sample gives `pairs_per_clip` augmented pairs of its picture (`image_pairs`)."""
    for s in samples:
        if "image" in s:
            yield from image_pairs(s, size, pairs_per_clip, rng, stats)
            continue
        key, n = s["__key__"], int(s["json"]["n_frames"])
        if n < 2:
            stats["clips_too_short"] += 1
            continue
        pairs = sample_pairs(n, pairs_per_clip, rng)
        frames = decode_frames(s["mp4"], [i for p in pairs for i in p], size,
                               f"{s['__shard__']}: sample {key}", threads, stats)
        stats["clips_decoded"] += 1
        for i_a, i_m in pairs:
            yield {"appearance": frames[i_a], "motion": frames[i_m], "key": key,
                   "frames": (i_a, i_m)}


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


LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def jitter_pair(a: np.ndarray, m: np.ndarray, rng: np.random.Generator,
                strength: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The same random horizontal flip and the same colour transform on both RGB uint8 frames
    of a pair: brightness b, contrast c, saturation s drawn in [1 - strength, 1 + strength].

    brightness x1 = b x; contrast x2 = c (x1 - b mu) + b mu (mu: mean luma of the pair);
    saturation x3 = s x2 + (1 - s) luma(x2). All three compose to one affine colour map,
    applied (and clipped to 0..255) in one cv2.transform pass per frame.
    """
    flip = rng.random() < 0.5
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    mu = float(LUMA @ ((np.array(cv2.mean(a)[:3]) + np.array(cv2.mean(m)[:3])) / 2))
    mat = np.empty((3, 4), np.float32)
    mat[:, :3] = (1 - s) * b * c * LUMA[None, :] + s * b * c * np.eye(3, dtype=np.float32)
    mat[:, 3] = b * mu * (1 - c)
    out = []
    for x in (a, m):
        if flip:
            x = cv2.flip(x, 1)
        out.append(cv2.transform(x, mat))
    return out[0], out[1]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(cv2.split(img))).float().div_(127.5).sub_(1.0)


def pair_tensors(pairs: Iterable[dict], augment: bool, rng: np.random.Generator) -> Iterator[dict]:
    """Stage: uint8 pairs -> float32 (3, H, W) in [-1, 1] (optionally jittered together)."""
    for p in pairs:
        a, m = p["appearance"], p["motion"]
        if augment:
            a, m = jitter_pair(a, m, rng)
        yield {"appearance": to_tensor(a), "motion": to_tensor(m), "key": p["key"],
               "frames": p["frames"]}


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

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


class Stage1Dataset(ShardDataset):
    """Pairs (appearance frame, motion frame) of one clip: {"appearance", "motion": float32
    (3, size, size) in [-1, 1], "key", "frames": (i_a, i_m)}."""

    def __init__(self, shards, size=256, pairs_per_clip=16, shuffle_buffer=256, augment=False,
                 decode_threads=1, **split):
        super().__init__(shards, **split)
        self.size, self.pairs_per_clip = int(size), int(pairs_per_clip)
        self.shuffle_buffer, self.augment = int(shuffle_buffer), bool(augment)
        self.decode_threads = int(decode_threads)

    def _iterate(self, shards, rng):
        samples = stage1_samples(shards, self.stats)
        pairs = clip_pairs(samples, self.size, self.pairs_per_clip, rng, self.stats,
                           self.decode_threads)
        pairs = shuffled(pairs, self.shuffle_buffer, rng)
        return pair_tensors(pairs, self.augment, rng)


def stage1_dataset(shards_root, subsets=SUBSETS, size=256, pairs_per_clip=16,
                   shuffle_buffer=256, seed=0, augment=False, rank=None, world_size=None,
                   epoch=0, decode_threads=1) -> Stage1Dataset:
    """Stage-1 training pairs from `shards_root` (a shards/ folder or a list of tars).

    Each clip is decoded once (sequentially, PyAV, from memory) and gives `pairs_per_clip`
    random pairs of distinct frames; pairs are shuffled across clips with a buffer of
    `shuffle_buffer` pairs (kept as uint8: ~2 * size^2 * 3 bytes each). `augment`: the same
    random flip and small colour jitter on both frames of a pair. See the module docstring
    for the rank / worker split. Image shards (`ifmdm-data shard --images`, subset "images")
    give pairs made by augmentation: two random warps of one picture (a global similarity
    transform + a local elastic warp each, `image_pairs.image_motion_pair`), `pairs_per_clip`
    pairs per image; frames is (0, 0) for them.

    Cost: decoding the clip dominates (one decode feeds `pairs_per_clip` pairs), so pairs/s
    per worker grows almost linearly with `pairs_per_clip` and falls ~4x from 256 to 512 px
    clips. Measured on one core, 8 s clips, 16 pairs a clip: ~380 pairs/s from 256 px clips,
    ~170 pairs/s from 512 px clips resized to 256 (~270 with 32 pairs a clip).
    """
    return Stage1Dataset(list_shards(shards_root, subsets), size=size,
                         pairs_per_clip=pairs_per_clip, shuffle_buffer=shuffle_buffer,
                         augment=augment, decode_threads=decode_threads, seed=seed, epoch=epoch,
                         rank=rank, world_size=world_size)


# ---------------------------------------------------------------------------------------------
# Stage 2: windows of motion latents + aligned speech features
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# DataLoaders
# ---------------------------------------------------------------------------------------------

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


def stage1_loader(shards_root, batch_size: int, num_workers=None, *, pin_memory=None,
                  drop_last=False, **dataset_kwargs) -> EpochDataLoader:
    """`stage1_dataset(shards_root, **dataset_kwargs)` batched: appearance/motion (B, 3, H, W),
    key: list of B, frames: [i_a (B,), i_m (B,)]."""
    return make_loader(stage1_dataset(shards_root, **dataset_kwargs), batch_size, num_workers,
                       pin_memory, drop_last)


def stage2_loader(shards_root, motion_root, batch_size: int, num_workers=None, *,
                  pin_memory=None, drop_last=False, **dataset_kwargs) -> EpochDataLoader:
    """`stage2_dataset(shards_root, motion_root, **dataset_kwargs)` batched: motion
    (B, n_f, D), speech (B, n_f, dim), hint / motion_mean / motion_std (B, D), ...
    (`motion_stats="window"`: the statistics of each window instead of its clip's)."""
    return make_loader(stage2_dataset(shards_root, motion_root, **dataset_kwargs), batch_size,
                       num_workers, pin_memory, drop_last)
