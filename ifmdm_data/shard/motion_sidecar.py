"""The stage-2 motion sidecar writer: `write_motion_sidecar`, the one implementation of that format.

The format is defined in `ifmdm_data.shard.format` (`SIDECAR_MEMBERS`, `check_motion`); the stage-2
motion extraction (`ifmdm_model.stage2.extract`) writes the sidecars through this module, and
`loaders.stage2_dataset` reads them back, joined by key with the main shards. A sidecar is a
local file or an object (`s3://...`, through `ifmdm_data/io/storage.py`).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ifmdm_data.shard.format import SIDECAR_MEMBERS, ShardFormatError, check_member_name, npy_bytes


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_tar(f, items: Iterable[tuple[str, np.ndarray, str]], where_path: str):
    """The sidecar members of `items` into the open binary file `f`; (keys, dim, encoder)."""
    import time

    seen, dim, encoder = set(), None, None
    now = time.time()
    with tarfile.open(fileobj=f, mode="w") as tar:
        for key, motion, enc in items:
            where = f"{where_path}: sample {key}"
            if not key or "." in key or key in seen:
                raise ShardFormatError(f"{where}: keys must be unique and contain no dot")
            for m in SIDECAR_MEMBERS:
                check_member_name(f"{key}.{m}", where_path)
            if (not isinstance(motion, np.ndarray) or motion.dtype != np.float32
                    or motion.ndim != 2 or motion.shape[0] < 1):
                got = (getattr(motion, "dtype", type(motion)),
                       getattr(motion, "shape", None))
                raise ShardFormatError(f"{where}: motion must be float32 (n, D), got {got}")
            if not np.isfinite(motion).all():
                raise ShardFormatError(f"{where}: motion has non-finite values")
            dim = motion.shape[1] if dim is None else dim
            encoder = enc if encoder is None else encoder
            if motion.shape[1] != dim or enc != encoder:
                raise ShardFormatError(f"{where}: dim {motion.shape[1]} / encoder {enc!r} "
                                       f"differ from {dim} / {encoder!r} of earlier keys")
            m64 = motion.astype(np.float64)
            meta = {"encoder": enc, "dim": int(dim), "mean": m64.mean(0).tolist(),
                    "std": m64.std(0).tolist()}
            _add_member(tar, f"{key}.motion.json", json.dumps(meta).encode(), now)
            _add_member(tar, f"{key}.motion.npy", npy_bytes(motion), now)
            seen.add(key)
    return seen, dim, encoder


def write_motion_sidecar(path, items: Iterable[tuple[str, np.ndarray, str]]) -> dict:
    """Write a stage-2 sidecar tar: for each (key, motion float32 (n, D), encoder_id) the
    members key.motion.npy and key.motion.json ({"encoder", "dim", "mean", "std"}: per-clip
    statistics over frames, population std). Keys in the main shard's order.

    `path` is a local path or an object-storage URL (`s3://bucket/shards/motion/...`).
    Atomic: a local sidecar is written to a hidden temporary name in the same folder, then
    os.replace'd; an object is written to a local temporary file, uploaded under a hidden
    temporary key beside it and moved to its final key (`storage.atomic_local`), so a final
    name always holds a whole tar. A failure leaves no file (and no object). Returns
    {"path", "clips", "dim", "encoder"}.
    """
    from ifmdm_data.io import storage

    if storage.is_url(path):
        url = str(path)
        with storage.atomic_local(url) as tmp:
            with open(tmp, "wb") as f:
                seen, dim, encoder = _write_tar(f, items, url)
        return {"path": url, "clips": len(seen), "dim": dim, "encoder": encoder}
    path = Path(storage.local(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            seen, dim, encoder = _write_tar(f, items, str(path))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(path), "clips": len(seen), "dim": dim, "encoder": encoder}
