"""Stage-2 data: the motion latent of every frame, extracted once with the frozen stage-1 encoder.

DESIGN.md, data flow: "extract motion latents with the frozen encoder (sidecar shards, same
keys)". For every main shard `shards/{subset}/{name}.tar` holding at least one stage-2 usable
clip (`stage2_ok` and `has_audio`), this writes

    shards/motion/<encoder_id>/{subset}/{name}.tar   key.motion.npy float32 (n_frames, D)
                                                     key.motion.json {encoder, dim, mean, std}
    shards/motion/<encoder_id>/encoder.json          which checkpoint made them

in the format of `ifmdm_data.shard.format`, through `ifmdm_data.loaders.write_motion_sidecar`
(the one writer of that format; atomic). `stage2_dataset(shards, motion_root)` reads them.

Object storage
--------------
`shards` may be an object-storage URL (`s3://bucket/shards`, through `ifmdm_data.io.storage`):
the main shards are read with ranged reads (nothing downloaded whole) and the sidecars go to
the same place as on disk, beside the shards: `s3://bucket/shards/motion/<encoder_id>/...`
(`out_root` chooses another folder or prefix, local or remote). Each sidecar is built in a
local temporary file, uploaded under a hidden temporary key and moved to its final key, so
a final key always holds a whole tar (the resume rule below holds as on disk). A location that
cannot be written (no bucket, read-only credentials, endpoint down) stops the extraction
before any clip is encoded, with one line naming it.

Encoder id
----------
`encoder_id(ckpt)` = "{run}-{step:08d}-{sha10}": the run folder's name (runs/x -> "x"; any
character outside [A-Za-z0-9_-] becomes "_"), the checkpoint's global step, and the first 10
hex digits of the SHA-256 of its `ema.safetensors`. The hash makes the id follow the weights:
re-training into the same run folder and step gives another id, copying a checkpoint elsewhere
keeps it. No dots, so it is a safe folder name and WebDataset key component.

Which shards, and which keys
----------------------------
The shards are the ones `stage2_dataset` reads: `list_shards(shards, subsets, stage2=True)`'s
rule, from `shards/index.parquet` (required: it says which shards hold stage-2 clips without
opening every tar). Shards with no stage-2 clip get NO sidecar (`stage2_dataset` never looks
for one); they are counted in the summary as `shards_without_stage2`. Inside a shard, a clip is
extracted when its own `key.json` says `stage2_ok` and `has_audio` (the rule of the loader's
join), in the main shard's order, so a sidecar lists exactly the keys the loader expects.

Resuming
--------
A sidecar becomes visible only when complete (atomic rename), so one that exists was fully
written. It is skipped when its keys are the shard's stage-2 keys in order and it names this
encoder; otherwise (the shard was rewritten, or a foreign file sits there) it is re-extracted
with a warning. `encoder.json` is written first; an output folder that belongs to another
encoder id is refused. A killed run may leave a hidden `.{name}.{pid}.tmp` file (on object
storage a `.{name}.{random}.tmp` object): garbage, safe to delete.

Speed
-----
The encoder alone runs (the decoder's weights are not even built); frames go to the device as
uint8 and are scaled to [-1, 1] there; bf16 autocast on CUDA. mp4 bytes are read sequentially
by the main thread; `decode_workers` threads decode clips ahead (PyAV releases the GIL) while
the device encodes, so on a GPU the decoding is the bottleneck: give it cores. With
`world_size` > 1 (torchrun), rank r takes every world_size-th shard; the caller waits for all
ranks (a barrier) before training on the result.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from ifmdm_data.io import storage
from ifmdm_data.errors import IfmdmError
from ifmdm_data.loaders import (SUBSETS, TarShard, decode_frames, read_meta, sidecar_path,
                                write_motion_sidecar)
from ifmdm_data.shard.format import ShardFormatError, check_member_name

from ifmdm_model.checkpoint import (CheckpointError, load_stage1_checkpoint, read_state, resolve_stage1_checkpoint,
                                    weights_sha256)

log = logging.getLogger("ifmdm_model")

ENCODER_JSON = "encoder.json"


class ExtractionError(IfmdmError):
    """The motion extraction cannot run (checkpoint, shards or output folder unusable)."""


class NoCheckpointError(ExtractionError, CheckpointError):
    """No usable stage-1 checkpoint at the given path."""


class NoIndexError(ExtractionError):
    """shards/index.parquet is missing or unreadable."""


class MissingShardsError(ExtractionError):
    """Shards listed in index.parquet are not on disk (or none has a stage-2 clip)."""


# ------------------------------------------------------------------------------------------
# The frozen encoder
# ------------------------------------------------------------------------------------------

def resolve_checkpoint(path) -> Path:
    """`checkpoint.resolve_stage1_checkpoint`, failing with NoCheckpointError."""
    return resolve_stage1_checkpoint(path, error=NoCheckpointError)


def _sha256(path: Path) -> str:
    return weights_sha256(path)


def _read_state(ck: Path) -> dict:
    return read_state(ck, error=NoCheckpointError)


def _step(ck: Path, state: dict) -> int:
    if "global_step" in state:
        return int(state["global_step"])
    m = re.fullmatch(r"ckpt-(\d+)", ck.name)
    return int(m.group(1)) if m else 0


def _run_name(ck: Path) -> str:
    run = ck.parent.parent if ck.parent.name == "stage1" else ck.parent
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", run.absolute().name).strip("_")
    return name or "run"


def encoder_id(ckpt_dir, _sha: Optional[str] = None) -> str:
    """A stable, filesystem-safe id of a stage-1 checkpoint: "{run}-{step:08d}-{sha10}" (see
    the module docstring). `ckpt_dir` may be anything `resolve_checkpoint` accepts."""
    ck = resolve_checkpoint(ckpt_dir)
    state = _read_state(ck)
    sha = _sha or _sha256(ck / "ema.safetensors")
    return f"{_run_name(ck)}-{_step(ck, state):08d}-{sha[:10]}"


def load_encoder(ck: Path, state: dict, device: torch.device) -> torch.nn.Module:
    """The frozen visual encoder E_v with the checkpoint's EMA weights (no decoder built; its
    `cfg` attached): `checkpoint.load_stage1_checkpoint(encoder_only=True)`."""
    return load_stage1_checkpoint(ck, device, encoder_only=True, state=state, error=NoCheckpointError)[0]


def _device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def encode_frames(encoder: torch.nn.Module, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """RGB uint8 frames (n, H, W, 3) -> motion float32 (n, D), `batch_size` frames at a time on
    the encoder's device (bf16 autocast on CUDA)."""
    device = next(encoder.parameters()).device
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else nullcontext())
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.from_numpy(frames[i:i + batch_size]).to(device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)          # (B, 3, H, W) in [-1, 1]
        with amp:
            _, m = encoder(x)                                              # (B, D)
        out.append(m.float())
    return torch.cat(out).cpu().numpy().astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------
# Shards: which ones, which keys
# ------------------------------------------------------------------------------------------

def _shards_root(shards_root) -> str:
    """The shards folder as extraction names it: an absolute local path, or a URL without a
    trailing '/'."""
    if storage.is_url(shards_root):
        return str(shards_root).rstrip("/")
    return str(Path(storage.local(shards_root)).absolute())


def stage2_shards(shards_root, subsets) -> tuple[list[str], dict, int]:
    """(sorted absolute paths (or URLs) of the shards of `subsets` holding a stage-2 clip,
    {path: {key: n_frames} of its stage-2 clips}, number of shards of `subsets` without one),
    from index.parquet. `shards_root`: a local folder or an object-storage URL."""
    root = _shards_root(shards_root)
    remote = storage.is_url(root)
    index = storage.join(root, "index.parquet")
    if not storage.isfile(index):      # StorageError (one line) when the bucket is unreachable
        raise NoIndexError(f"{index} does not exist: give the shards/ folder written by "
                           f"`ifmdm-data shard` (it lists which shards hold stage-2 clips)")
    try:
        t = storage.read_parquet(index, columns=["key", "shard", "subset", "n_frames", "stage2_ok",
                                                 "has_audio"]).to_pydict()
    except Exception as e:  # noqa: BLE001
        raise NoIndexError(f"{index}: cannot read ({type(e).__name__}: {e}); re-run "
                           f"`ifmdm-data shard`") from None
    keys: dict[str, dict] = {}
    all_rel = set()
    for key, rel, sub, n, ok, audio in zip(t["key"], t["shard"], t["subset"], t["n_frames"],
                                           t["stage2_ok"], t["has_audio"]):
        if sub not in subsets:
            continue
        check_member_name(rel, str(index))
        all_rel.add(rel)
        if ok and audio:
            keys.setdefault(storage.join(root, rel) if remote else str(Path(root) / rel), {})[key] = int(n)
    shards = sorted(keys)
    if remote:   # one listing per folder, not one request per shard
        present = {storage.join(d, n) for d in {storage.parent(s) for s in shards}
                   for n in storage.list_names(d, ".tar")}
        missing = [s for s in shards if s not in present]
    else:
        missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise MissingShardsError(f"{index}: {len(missing)} listed shard(s) do not exist, e.g. "
                                 f"{missing[0]} (re-run `ifmdm-data shard`)")
    if not shards:
        raise MissingShardsError(f"{index}: no shard of subsets {list(subsets)} holds a stage-2 "
                                 f"clip (stage2_ok and has_audio); nothing to extract")
    return shards, keys, len(all_rel) - len(shards)


def _usable(meta: dict) -> bool:
    return bool(meta["stage2_ok"]) and bool(meta["has_audio"])


def sidecar_is_complete(side: str, main: str, eid: str) -> bool:
    """True when the sidecar lists the main shard's stage-2 keys (by their key.json, the
    loader's rule) in order and names `eid`."""
    try:
        with TarShard(main) as m:
            want = [k for k in m.keys() if _usable(read_meta(m, k))]
        with TarShard(side) as s:
            if s.keys() != want:
                return False
            return not want or s.read(want[0], "motion.json").get("encoder") == eid
    except (ShardFormatError, KeyError, AttributeError):
        return False


def clip_jobs(shards: Iterable[str]) -> Iterator[dict]:
    """Stage: main shards -> {shard, key, n, mp4 bytes} of each stage-2 clip in tar order, then
    {shard, end: True} after each shard (read sequentially, in this thread)."""
    for path in shards:
        with TarShard(path) as t:
            for key in t.keys():
                meta = read_meta(t, key)
                if not _usable(meta):
                    continue
                if "mp4" not in t.members(key):
                    raise ShardFormatError(f"{t.where(key)}: missing member .mp4")
                yield {"shard": path, "key": key, "n": int(meta["n_frames"]),
                       "mp4": t.read(key, "mp4")}
        yield {"shard": path, "end": True}


def _decode_clip(job: dict, size: int) -> np.ndarray:
    n = job["n"]
    frames = decode_frames(job["mp4"], range(n), size, f"{job['shard']}: sample {job['key']}")
    return np.stack([frames[i] for i in range(n)]) if n else np.zeros((0, size, size, 3), np.uint8)


def decoded_ahead(jobs: Iterable[dict], size: int, pool: Optional[ThreadPoolExecutor],
                  depth: int) -> Iterator[dict]:
    """Stage: adds "frames" (a future of uint8 (n, size, size, 3)) to each clip job, decoding
    up to `depth` jobs ahead in `pool` (inline when pool is None)."""
    queue: deque = deque()
    for job in jobs:
        if "key" in job:
            if pool is None:
                job["frames"] = _Done(_decode_clip(job, size))
            else:
                job["frames"] = pool.submit(_decode_clip, job, size)
        queue.append(job)
        while len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# ------------------------------------------------------------------------------------------
# The extraction
# ------------------------------------------------------------------------------------------

def _write_json_atomic(path, obj) -> None:
    """Atomic JSON write (the project's one implementation, argument order of this module);
    `path` is a local path or an object-storage URL."""
    from ifmdm_data.io.atomic import write_json_atomic as _write
    _write(obj, path if storage.is_url(path) else Path(path))


def _claim_out_root(out_root, record: dict) -> None:
    """Write encoder.json, or check that the folder already belongs to this encoder. The
    first write into `out_root`: a location that cannot be written fails here, in one line,
    before any clip is encoded."""
    path = storage.join(str(out_root), ENCODER_JSON)
    try:
        claimed = storage.isfile(path)
    except storage.StorageError as e:  # e.g. the bucket does not exist
        raise ExtractionError(f"cannot write the motion sidecars to {out_root}: "
                              f"{e}".splitlines()[0][:400]) from None
    if claimed:
        try:
            old = json.loads(storage.read_text(path)).get("encoder_id")
        except (ValueError, AttributeError):
            old = None
        if old != record["encoder_id"]:
            raise ExtractionError(f"{out_root} holds the motion of encoder {old!r} ({path}), not "
                                  f"{record['encoder_id']!r}: use the default out_root "
                                  f"(shards/motion/<encoder_id>) or an empty folder")
        return
    try:
        _write_json_atomic(path, record)
    except (OSError, storage.StorageError) as e:
        raise ExtractionError(f"cannot write the motion sidecars to {out_root}: "
                              f"{e}".splitlines()[0][:400]) from None


def extract_motion(checkpoint, shards_root, out_root=None, subsets=SUBSETS, batch_size: int = 64,
                   device="auto", progress: bool = True, decode_workers: Optional[int] = None,
                   rank: int = 0, world_size: int = 1) -> dict:
    """Extract the motion vector of every frame of every stage-2 clip with the frozen stage-1
    encoder (EMA weights) and write the sidecar shards (see the module docstring).

    checkpoint: a run folder (runs/x), its stage1 folder or a ckpt-XXXXXXXX folder.
    shards_root: the shards/ folder (with index.parquet), local or an object-storage URL.
    out_root: default shards_root/motion/<encoder_id> (a URL when shards_root is one).
    decode_workers: clip-decoding threads (default: the cores, at most 8; 0 decodes inline).
    rank / world_size: this process's share of shards.

    Returns {encoder_id, out_root, shards_written, shards_skipped, shards_without_stage2,
    clips, frames (extracted by this call), seconds, frames_per_s, device}.
    """
    t0 = time.perf_counter()
    ck = resolve_checkpoint(checkpoint)
    state = _read_state(ck)
    sha = _sha256(ck / "ema.safetensors")
    eid = encoder_id(ck, _sha=sha)
    subsets = tuple(subsets)
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown or not subsets:
        raise ExtractionError(f"unknown subset(s) {unknown or subsets}; known: {list(SUBSETS)}")
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    root = _shards_root(shards_root)
    shards, index_keys, n_empty = stage2_shards(root, subsets)
    if out_root is None:
        out = storage.join(root, "motion", eid) if storage.is_url(root) else Path(root) / "motion" / eid
    else:
        out = _shards_root(out_root)
        out = out if storage.is_url(out) else Path(out)
    dev = _device(device)
    encoder = load_encoder(ck, state, dev)
    cfg = encoder.cfg
    _claim_out_root(out, {"encoder_id": eid, "checkpoint": str(ck.absolute()),
                          "run": _run_name(ck), "step": _step(ck, state),
                          "ema_sha256": sha, "model": state.get("model"),
                          "motion_dim": cfg.motion_dim, "image_size": cfg.image_size,
                          "weights": "ema.safetensors (encoder only)"})

    mine = shards[rank::world_size]
    todo, skipped = [], 0
    for s in mine:
        side = sidecar_path(s, out)
        if storage.isfile(side):
            if sidecar_is_complete(side, s, eid):
                skipped += 1
                continue
            log.warning("%s: does not match %s for encoder %s; extracting again", side, s, eid)
        todo.append(s)

    if decode_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        decode_workers = max(1, min(8, cores or 1))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(sum(index_keys[s].values()) for s in todo), unit="frame",
                   unit_scale=True, desc=f"motion {eid}", dynamic_ncols=True)
    log.info("motion extraction %s on %s: %d shard(s) to do, %d already done -> %s",
             eid, dev, len(todo), skipped, out)

    written = clips = frames = 0
    pool = ThreadPoolExecutor(decode_workers) if decode_workers > 0 else None
    try:
        items = []
        for job in decoded_ahead(clip_jobs(todo), cfg.image_size, pool, decode_workers + 1):
            if job.get("end"):
                write_motion_sidecar(sidecar_path(job["shard"], out), items)
                written += 1
                items = []
                if bar is not None:
                    bar.set_postfix(shards=f"{written}/{len(todo)}", clips=clips)
                continue
            motion = encode_frames(encoder, job.pop("frames").result(), batch_size)
            items.append((job["key"], motion, eid))
            clips += 1
            frames += len(motion)
            if bar is not None:
                bar.update(len(motion))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    summary = {"encoder_id": eid, "out_root": str(out), "shards_written": written,
               "shards_skipped": skipped, "shards_without_stage2": n_empty, "clips": clips,
               "frames": frames, "seconds": round(seconds, 3),
               "frames_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0,
               "device": str(dev)}
    log.info("motion extraction done: %s", summary)
    return summary
