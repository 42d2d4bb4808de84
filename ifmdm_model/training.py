"""Training machinery shared by both stages: options, distributed set-up, resume, EMA, autocast, TensorBoard, endless epochs.

Used by `ifmdm_model.stage1.train` and `ifmdm_model.stage2.train` (plain PyTorch; DDP when
launched by `torchrun`: NCCL on GPUs, gloo on CPU; bf16 autocast and TF32 on CUDA, float32 on
the CPU). No model code and no curriculum logic here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterator, Optional

import torch

from ifmdm_data.errors import IfmdmError

from ifmdm_model.checkpoint import load_weights


class TrainingError(IfmdmError):
    """Training cannot go on (non-finite loss, no data)."""


@dataclass
class TrainOptions:
    run_dir: Path
    vgg_weights: Optional[str] = None
    resume: bool = True            # continue from run_dir/stage1/latest when present
    max_steps: Optional[int] = None  # stop once this many curriculum steps are trained (smoke
                                     # tests; the steps of skipped levels do not count)
    device: str = "auto"
    seed: int = 0
    num_workers: Optional[int] = None
    batch_size: Optional[int] = None


# ------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------

def setup_distributed(device: str = "auto") -> tuple[torch.device, int, int]:
    """(device, rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", local), rank, world
    return torch.device("cpu"), rank, world


def restore(ck: Path, data: dict, model, ema, opt) -> tuple[int, int]:
    """Load weights, EMA and optimizer from a loaded checkpoint; returns (global step, next
    epoch). The caller has already checked that the checkpoint matches its configuration."""
    load_weights(model, data["model"], str(ck / "model.safetensors"))
    load_weights(ema, data["ema"], str(ck / "ema.safetensors"))
    opt.load_state_dict(data["optim"]["opt"])
    st = data["state"]
    return int(st["global_step"]), int(st.get("epoch", 0)) + 1


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """DDP around `model` when world > 1 (it broadcasts rank 0's weights and buffers, and
    averages the gradients in backward), else `model`."""
    if world <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


# ------------------------------------------------------------------------------------------
# Logging, precision, EMA, data
# ------------------------------------------------------------------------------------------

def tensorboard_writer(rank: int, folder: Path):
    """A SummaryWriter on rank 0, None elsewhere."""
    if rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(folder))


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a disabled context on the CPU (float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    src = model.module if hasattr(model, "module") else model
    for e, p in zip(ema.parameters(), src.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), src.buffers()):
        e.copy_(b)


def endless_epochs(loader, first_epoch: int, empty: str) -> Iterator[dict]:
    """Batches of `loader` epoch after epoch (set_epoch each time, for the shuffle), from
    `first_epoch` on; an epoch without a batch is a TrainingError with the message `empty`."""
    for epoch in count(first_epoch):
        loader.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise TrainingError(empty)


def loader_workers(requested: int, world: int = 1) -> int:
    """DataLoader worker processes per rank: `requested` (the plan's `num_workers` or
    `--num-workers`), capped at the CPUs this process may use divided by the ranks on this node
    (`os.sched_getaffinity`), so a small machine does not start more workers than it has cores
    (PyTorch warns, and the workers only contend). 0 stays 0 (load in the training process)."""
    if requested <= 0:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                    # not on Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)
    return max(1, min(requested, cpus // max(1, local)))


def log_first_step(log, trained: int, step: int, total: int, log_every: int, seconds: float) -> None:
    """A console line after the first step this process trains (`trained` == 1; data loading,
    worker start and warm-up are in it), so that a run whose next log line is `log_every` steps
    away does not look hung. `step`: the global step reached; `total`: where the run stops."""
    if trained == 1 and step != total and step % log_every != 0:
        nxt = min(total, (step // log_every + 1) * log_every)
        log.info("step %d/%d done in %.1f s (loaders started, first batch); next log at step %d",
                 step, total, seconds, nxt)
