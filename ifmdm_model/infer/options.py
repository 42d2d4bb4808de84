"""Checks and conversions of the options of `generate` / `reenact` (the values `ifmdm-infer`
passes through): --motion-mean, --dtype, --fps / --batch-frames / --size, the output path.

Every bad value is an `InferenceError` naming the command-line option."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ifmdm_model.infer.media_io import InferenceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def motion_mean_arg(value, dim: int) -> Union[str, np.ndarray]:
    if isinstance(value, np.ndarray):
        arr = value
    elif value in ("input", "previous"):
        return value
    else:
        p = Path(str(value))
        if not p.is_file():
            raise InferenceError(f"--motion-mean must be input, previous or a .npy file; {p} does not exist")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise InferenceError(f"cannot read --motion-mean {p} ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2:
        arr = arr.mean(0)                       # a motion sequence (T, D): its mean
    if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
        raise InferenceError(f"--motion-mean array must be finite with shape ({dim},) or (T, {dim}), "
                             f"got {arr.shape}")
    return arr


def autocast_for(device: torch.device, dtype: str):
    """The autocast context of --dtype on `device` (fp32: no autocast at all)."""
    if dtype not in DTYPES:
        raise InferenceError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def check_output_options(fps, batch_frames, size, image_size):
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 1 <= fps <= 240):
        raise InferenceError(f"--fps must be in [1, 240], got {fps!r}")
    if not isinstance(batch_frames, int) or batch_frames < 1:
        raise InferenceError(f"batch_frames must be an integer >= 1, got {batch_frames!r}")
    if size is not None and (not isinstance(size, int) or size < 16 or size % 2 or size > 4096):
        raise InferenceError(f"--size must be an even integer in [16, 4096], got {size!r} "
                             f"(the model generates {image_size}x{image_size}; frames are resized to --size)")


def output_path(out_path, overwrite: bool) -> Path:
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise InferenceError(f"{out} exists: pass --overwrite to replace it")
    return out
