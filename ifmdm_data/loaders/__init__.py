"""Training data loaders: stage-1 frame pairs and stage-2 motion windows, read from the shards.

The format is defined once in `ifmdm_data.shard.format`. Reading a tar (every header checked
before any data; samples, decoded members, mp4 frames) is in `ifmdm_data.shard.reader`; the
stage-2 motion sidecar writer in `ifmdm_data.shard.motion_sidecar`. This package holds:

    shards.py   the shard list and its rank / worker split
    dataset.py  the sharded IterableDataset base, the shuffle buffer, the DataLoader factory
    stage1.py   frame pairs (+ augmentation): `stage1_dataset`, `stage1_loader`
    stage2.py   motion windows + speech: `stage2_dataset`, `stage2_loader`

Every public name of those modules, and of the shard reader and sidecar writer, is importable
from here (`stage1_loader`, `TarShard`, `read_meta`, `decode_frames`, `write_motion_sidecar`, ...).

Both datasets are torch `IterableDataset`s built as a chain of small stages, each a function
from an iterator to an iterator (the webdataset style):

    stage 1: shards -> samples (checked) -> decoded frame pairs of one clip (or augmented pairs
             of one image of an image set: `ifmdm_data/shard/image_pairs.py`) -> shuffle -> tensors
    stage 2: shards + sidecars -> clips (checked, joined by key) -> windows -> shuffle -> tensors

Shards are local (or shared-filesystem) paths or object-storage URLs (`s3://bucket/shards`:
`ifmdm_data/io/storage.py`; each tar is read with ranged reads through fsspec, credentials and endpoint from
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

# the public API, re-exported (user code imports these names from `ifmdm_data.loaders`)
from ifmdm_data.loaders.dataset import (EpochDataLoader, ShardDataset,  # noqa: F401
                                        default_num_workers, make_loader, shuffled)
from ifmdm_data.loaders.shards import (SUBSETS, list_shards, resolve_rank,  # noqa: F401
                                       shard_order, split_shards)
from ifmdm_data.loaders.stage1 import (LUMA, STAGE1_READ, Stage1Dataset, clip_pairs,  # noqa: F401
                                       image_pairs, jitter_pair, pair_tensors, sample_pairs,
                                       stage1_dataset, stage1_loader, stage1_samples, to_tensor)
from ifmdm_data.loaders.stage2 import (MOTION_STATS, STAGE2_READ, Stage2Dataset,  # noqa: F401
                                       clip_windows, joined_clips, read_motion, sidecar_path,
                                       stage2_dataset, stage2_loader, window_stats)
from ifmdm_data.shard.format import SIDECAR_MEMBERS, ShardFormatError, check_member_name, check_motion  # noqa: F401
from ifmdm_data.shard.motion_sidecar import write_motion_sidecar  # noqa: F401
from ifmdm_data.shard.reader import (UNREAD, TarShard, decode_frames, load_checked,  # noqa: F401
                                     main_samples, read_meta, split_member)
