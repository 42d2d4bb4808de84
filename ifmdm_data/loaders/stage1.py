"""Stage-1 training data: pairs of frames of one clip (or augmented pairs of one image), with
the shared flip / colour jitter, as a sharded dataset and its DataLoader.

    shards -> samples (checked) -> decoded frame pairs of one clip (or augmented pairs of one
    image of an image set: `ifmdm_data.shard.image_pairs`) -> shuffle -> tensors
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from ifmdm_data.loaders.dataset import EpochDataLoader, ShardDataset, make_loader, shuffled
from ifmdm_data.loaders.shards import SUBSETS, list_shards
from ifmdm_data.shard.reader import TarShard, decode_frames, load_checked, read_meta

STAGE1_READ = ("mp4", "json", "landmarks.npy", "speech.npy")   # wav is never read


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


def stage1_loader(shards_root, batch_size: int, num_workers=None, *, pin_memory=None,
                  drop_last=False, **dataset_kwargs) -> EpochDataLoader:
    """`stage1_dataset(shards_root, **dataset_kwargs)` batched: appearance/motion (B, 3, H, W),
    key: list of B, frames: [i_a (B,), i_m (B,)]."""
    return make_loader(stage1_dataset(shards_root, **dataset_kwargs), batch_size, num_workers,
                       pin_memory, drop_last)
