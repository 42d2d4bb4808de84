"""Stage-1 training: the motion autoencoder, level by level through the curriculum.

Plain PyTorch; device-agnostic (CUDA with bf16 autocast and TF32 when present, CPU
otherwise); DDP when launched by `torchrun` (NCCL on GPUs, gloo on CPU); EMA weights;
safetensors checkpoints with the curriculum position, so `--resume` continues at the same
level, step and learning rate. Resuming restarts the data stream with a new epoch seed (the
loaders cannot seek inside an epoch), so the sample order after a resume differs from an
uninterrupted run; the model, optimizer, EMA, step and schedule are exact.

A level whose subsets have no samples (shards/index.parquet) is skipped with a warning: its
steps count as done without being trained, so the global step keeps meaning the same
curriculum position and resume stays exact; state.json lists the skipped levels. Under DDP the
generator and the optional discriminator are both DDP-wrapped, so every rank holds the same
weights.

The machinery both stages share (TrainOptions, DDP set-up, resume, EMA, autocast, TensorBoard,
endless epochs) is in `ifmdm_model.training`; `TrainOptions` and `TrainingError` are importable
from here as well.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional

import torch

from ifmdm_model.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from ifmdm_model.curriculum import Curriculum
from ifmdm_model.training import (TrainingError, TrainOptions, autocast_for, ema_update, endless_epochs, restore,
                                  loader_workers, log_first_step, setup_distributed, tensorboard_writer,
                                  wrap_ddp)

log = logging.getLogger("ifmdm_model")


# ------------------------------------------------------------------------------------------
# Which levels have data
# ------------------------------------------------------------------------------------------

def subset_samples(shards) -> dict:
    """Samples per subset under `shards` (a folder or an object-storage URL; the video subsets
    and `images`, an image set's): the rows of index.parquet, else (no index) the tar files of
    `{subset}/*.tar`."""
    from ifmdm_data.io import storage

    from ifmdm_model.curriculum import LEVEL_SUBSETS as SUBSETS

    root = str(shards)
    index = storage.join(root, "index.parquet")
    if storage.isfile(index):
        try:
            subs = storage.read_parquet(index, columns=["subset"]).column("subset").to_pylist()
        except Exception as e:  # noqa: BLE001 - unreadable index: one line, the file named
            raise TrainingError(f"{index}: cannot read the subset column ({type(e).__name__}: {e})") from None
        return {s: subs.count(s) for s in SUBSETS}
    return {s: len(storage.list_names(storage.join(root, s), ".tar")) for s in SUBSETS}


def level_counts(cur) -> list:
    """Samples per subset of each stage-1 level's shard folder (its own `shards:`, else the
    curriculum's), each folder counted once."""
    by_root: dict = {}
    out = []
    for lv in cur.stage1.levels:
        root = str(lv.shards or cur.shards)
        if root not in by_root:
            by_root[root] = subset_samples(root)
        out.append(by_root[root])
    return out


def empty_levels(plan, counts) -> list:
    """Indices of the levels none of whose subsets has a sample (`counts`: one dict for all
    levels, or one per level as `level_counts` gives)."""
    per = counts if isinstance(counts, list) else [counts] * len(plan.levels)
    return [i for i, lv in enumerate(plan.levels) if not any(per[i].get(s, 0) > 0 for s in lv.subsets)]


def level_start(plan, li: int) -> int:
    """The global step at which level `li` starts (len(levels): the end of the curriculum)."""
    return sum(lv.steps for lv in plan.levels[:li])


def stop_step(plan, skipped, max_steps: Optional[int]) -> int:
    """The global step at which `max_steps` trained steps are reached (the skipped levels'
    steps do not count); the end of the curriculum without a limit."""
    if max_steps is None:
        return plan.total_steps
    left = max_steps
    for i, lv in enumerate(plan.levels):
        if i not in skipped:
            if left <= lv.steps:
                return level_start(plan, i) + left
            left -= lv.steps
    return plan.total_steps


# ------------------------------------------------------------------------------------------
# Training loop
# ------------------------------------------------------------------------------------------

def _batches(shards: Path, subsets, plan, size, batch_size, num_workers, seed, first_epoch,
             rank, world) -> Iterator[dict]:
    from ifmdm_data.loaders import list_shards, stage1_loader

    # a worker gets whole shards: more workers than this rank's shards would sit idle (and warn),
    # e.g. an image set of one tar
    per_rank = -(-len(list_shards(str(shards), tuple(subsets))) // max(1, world))
    num_workers = min(num_workers, max(1, per_rank)) if num_workers else num_workers
    loader = stage1_loader(str(shards), batch_size, num_workers, subsets=tuple(subsets), size=size,
                           pairs_per_clip=plan.pairs_per_clip, augment=plan.augment, seed=seed,
                           rank=rank, world_size=world, drop_last=True)
    yield from endless_epochs(loader, first_epoch,
                              f"no training batches (batch size {batch_size}) from subsets "
                              f"{list(subsets)} under {shards}: run `ifmdm-data shard` first, "
                              f"or lower the batch size")


def _grid(out: dict, batch: dict):
    import torchvision

    n = min(4, batch["appearance"].shape[0])
    rows = [batch["appearance"][:n], batch["motion"][:n], out["recon"][:n].detach().float().cpu()]
    img = torchvision.utils.make_grid(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, nrow=n)
    m = out["masks"][-1][0].detach().float().cpu()                        # (G, H, W) finest scale
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    masks = torchvision.utils.make_grid(m.unsqueeze(1), nrow=int(math.ceil(math.sqrt(m.shape[0]))))
    return img, masks


def train_stage1(cur: Curriculum, opts: TrainOptions) -> dict:
    from ifmdm_model.stage1.losses import Stage1Loss, Stage1LossConfig
    from ifmdm_model.stage1.model import build_discriminator, build_stage1

    plan = cur.stage1
    device, rank, world = setup_distributed(opts.device)
    torch.manual_seed(opts.seed)            # the same initial weights (and EMA) on every rank
    run = Path(opts.run_dir) / "stage1"
    model_config = plan.model_config()                  # the size + curriculum.yaml's ablations
    model = build_stage1(model_config).to(device)
    model_cfg = model.cfg.to_dict()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    wl = plan.loss
    perceptual = wl.perceptual if opts.vgg_weights else 0.0
    if wl.perceptual > 0 and not opts.vgg_weights and rank == 0:
        log.warning("no --vgg-weights given: the perceptual loss is OFF (L1 + local flow only)")
    loss_fn = Stage1Loss(Stage1LossConfig(l1=wl.l1, perceptual=perceptual, local_flow=wl.local_flow,
                                          gan=wl.gan, vgg_weights=opts.vgg_weights)).to(device)
    disc = build_discriminator(model_config).to(device) if wl.gan > 0 else None
    torch.manual_seed(opts.seed + rank)     # per-rank randomness from here on
    per_level = level_counts(cur)
    counts = per_level[0] if all(not lv.shards for lv in plan.levels) else \
        {f"{lv.name}:{s}": per_level[i].get(s, 0) for i, lv in enumerate(plan.levels) for s in lv.subsets}
    skipped = empty_levels(plan, per_level)
    if len(skipped) == len(plan.levels):
        raise TrainingError(
            f"no curriculum level has training samples under {cur.shards}: the levels name "
            + "; ".join(f"'{lv.name}' [{', '.join(lv.subsets)}]" for lv in plan.levels)
            + f", and the shards hold {', '.join(f'{s} {n}' for s, n in counts.items())} samples: "
              f"shard the subsets the levels name, or fit curriculum.yaml's levels to the data")
    skipped_names = [plan.levels[i].name for i in skipped]
    opt = torch.optim.Adam(model.parameters(), lr=plan.levels[0].lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=plan.levels[0].lr, betas=(0.0, 0.99)) if disc else None

    step, epoch = 0, 0
    levels_json = [lv.record() for lv in plan.levels]
    ck = latest_checkpoint(run) if opts.resume else None
    if ck is not None:
        data = load_checkpoint(ck)
        st = data["state"]
        if st.get("model_config") != model_cfg or st.get("model") != plan.model:
            raise CheckpointError(f"{ck} was trained with model {st.get('model')} {st.get('model_config')}, "
                                  f"not {plan.model}: use another -o folder")
        if st.get("levels") != levels_json:
            raise CheckpointError(f"{ck} was trained with other curriculum levels; use another -o "
                                  f"folder or restore the curriculum")
        step, epoch = restore(ck, data, model, ema, opt)
        before = st.get("skipped_levels", [])
        if before != skipped_names and rank == 0:
            log.warning("%s skipped levels %s; these shards leave %s empty (a level behind the "
                        "checkpoint's position is not trained again)", ck, before or "none",
                        skipped_names or "none")
        if disc is not None and "disc" in data["optim"]:
            disc.load_state_dict(data["optim"]["disc"])
            opt_d.load_state_dict(data["optim"]["opt_d"])
        if rank == 0:
            log.info("resumed from %s at step %d", ck, step)
    for i in skipped:
        if rank == 0 and level_start(plan, i + 1) > step:
            lv = plan.levels[i]
            log.warning("level %d/%d '%s' skipped: its subsets [%s] have no samples under %s "
                        "(its %d steps are not trained)", i + 1, len(plan.levels), lv.name,
                        ", ".join(lv.subsets), cur.shards, lv.steps)
    ddp = wrap_ddp(model, device, world)
    # the discriminator's gradients are averaged over the ranks like the generator's; the
    # generator's GAN term goes through the bare module (frozen), which needs no reduction
    ddp_disc = wrap_ddp(disc, device, world) if disc is not None else None
    writer = tensorboard_writer(rank, run / "tb")
    amp = autocast_for(device)
    total = stop_step(plan, skipped, opts.max_steps)
    batch_size = opts.batch_size or plan.batch_size
    workers = loader_workers(plan.num_workers if opts.num_workers is None else opts.num_workers, world)
    size = model_config.image_size

    def state_json(level_idx):
        return {"model": plan.model, "model_config": model_cfg, "levels": levels_json,
                "global_step": step, "level": level_idx, "epoch": epoch, "world_size": world,
                "skipped_levels": skipped_names, "subset_samples": counts,
                "curriculum": str(cur.path), "loss": asdict(plan.loss), "vgg_weights": opts.vgg_weights}

    def save(level_idx):
        if rank == 0:
            optim = {"opt": opt.state_dict()}
            if disc is not None:
                optim.update(disc=disc.state_dict(), opt_d=opt_d.state_dict())
            save_checkpoint(run, step, model, ema, optim, state_json(level_idx))

    last_level, it, t_last, n_last, k_last = -1, None, time.perf_counter(), 0, 0
    history, trained = [], 0
    while step < total:
        li, s_in = plan.position(step)
        level = plan.levels[li]
        if li in skipped:                      # no samples: its steps count as done
            step = level_start(plan, li + 1)
            continue
        if li != last_level:
            subsets = [s for s in level.subsets if per_level[li].get(s, 0) > 0]
            it = _batches(level.shards or cur.shards, subsets, plan, size, batch_size, workers, opts.seed,
                          epoch, rank, world)
            last_level = li
            if rank == 0:
                empty = [s for s in level.subsets if s not in subsets]
                cap = (f"; this run stops at global step {total} (--max-steps)"
                       if total < level_start(plan, li) + level.steps else "")
                log.info("level %d/%d '%s' (subsets %s%s), at its step %d of %d%s", li + 1, len(plan.levels),
                         level.name, ",".join(subsets), f"; {','.join(empty)} empty" if empty else "",
                         s_in, level.steps, cap)
        lr = level.lr * min(1.0, (s_in + 1) / max(1, plan.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(it)
        app = batch["appearance"].to(device, non_blocking=True)
        mot = batch["motion"].to(device, non_blocking=True)
        if disc is not None:
            disc.requires_grad_(False)
        with amp:
            out = ddp(app, mot)
            losses = loss_fn(out, mot, discriminator=disc)
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(f"non-finite loss at step {step} (level '{level.name}'): "
                                f"{ {k: float(v.detach()) for k, v in losses.items()} }; batch keys: {batch['key']}")
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if disc is not None:
            disc.requires_grad_(True)
            with amp:
                d = loss_fn.discriminator_losses(ddp_disc, mot, out["recon"],
                                                 r1=step % loss_fn.cfg.r1_every == 0)
            opt_d.zero_grad(set_to_none=True)
            d["loss"].backward()
            opt_d.step()
        ema_update(ema, ddp, plan.ema)
        step += 1
        n_last += app.shape[0] * world
        k_last += 1
        if rank == 0:
            trained += 1
            log_first_step(log, trained, step, total, plan.log_every, time.perf_counter() - t_last)
        if rank == 0 and (step % plan.log_every == 0 or step == total):
            dt = time.perf_counter() - t_last
            vals = {k: float(v.detach()) for k, v in losses.items()}
            history.append({"step": step, **vals})
            for k, v in vals.items():
                writer.add_scalar(f"stage1/{k}", v, step)
            writer.add_scalar("stage1/lr", lr, step)
            writer.add_scalar("stage1/samples_per_s", n_last / dt, step)
            log.info("step %d/%d [%s] loss %.4f l1 %.4f | %.3f s/step, %.1f samples/s", step, total,
                     level.name, vals["loss"], vals.get("l1", float("nan")),
                     dt / max(1, k_last), n_last / dt)
            t_last, n_last, k_last = time.perf_counter(), 0, 0
        if rank == 0 and (step % plan.image_every == 0 or step == 1):
            img, masks = _grid(out, batch)
            writer.add_image("stage1/appearance_motion_recon", img, step)
            writer.add_image("stage1/local_flow_masks", masks, step)
        level_done = plan.position(step)[0] != li
        if step % plan.checkpoint_every == 0 or level_done or step == total:
            save(plan.position(step)[0])
            if level_done:
                epoch += 1
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return {"steps": step, "history": history, "run_dir": str(run), "skipped_levels": skipped_names,
            "modules": {"model": model, "ema": ema, "disc": disc}}
