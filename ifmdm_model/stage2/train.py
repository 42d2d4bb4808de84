"""Stage-2 training: the motion diffusion transformer (implicit motion generator).

First the motion latents of every stage-2 clip are extracted with the frozen stage-1 EMA
encoder into sidecar shards (`ifmdm_model.stage2.extract`, resumable, keyed by the encoder
checkpoint; beside the shards, on disk or in object storage: `s3://.../shards/motion/...`);
then MotionDiT learns DDPM noise prediction on windows of n_f frames with the
aligned speech features, the clip's motion statistics and the motion hint, with conditions
dropped for classifier-free guidance. Same conventions as stage 1 (stage1/train.py): CUDA
bf16 / CPU, torchrun DDP, EMA, safetensors checkpoints with exact step / schedule resume,
TensorBoard, a clear error on a non-finite loss or a mismatched checkpoint.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch

from ifmdm_data.io import storage
from ifmdm_data.errors import IfmdmError

from ifmdm_model.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from ifmdm_model.curriculum import Curriculum
from ifmdm_model.training import (TrainingError, TrainOptions, autocast_for, ema_update, endless_epochs, restore,
                                  loader_workers, log_first_step, setup_distributed, tensorboard_writer,
                                  wrap_ddp)

log = logging.getLogger("ifmdm_model")


def _speech_feature(shards) -> dict:
    """The speech feature extractor the shards were written with (features.info()); `shards`
    is a local folder or an object-storage URL."""
    import json
    summ = storage.join(str(shards), "summary.json")
    try:
        return json.loads(storage.read_text(summ)).get("speech_feature") or {}
    except (OSError, ValueError, IfmdmError):
        return {}


def _speech_dim(shards) -> int:
    idx = storage.join(str(shards), "index.parquet")
    if not storage.isfile(idx):
        raise TrainingError(f"no shards at {shards} (index.parquet missing): run `ifmdm-data shard`")
    df = storage.read_parquet(idx, columns=["stage2_ok", "has_audio", "feature_dim"]).to_pandas()
    df = df[df["stage2_ok"] & df["has_audio"]]
    if df.empty:
        raise TrainingError(f"{shards} has no stage-2 samples (stage2_ok with audio): nothing to train on")
    dims = sorted(set(int(d) for d in df["feature_dim"]))
    if len(dims) != 1:
        raise TrainingError(f"{shards} mixes speech feature dimensions {dims}: shard with one extractor")
    return dims[0]


def _windows(shards, motion_root, plan, batch_size, workers, seed, first_epoch, rank, world,
             motion_stats: str = "clip") -> Iterator[dict]:
    from ifmdm_data.loaders import stage2_loader

    loader = stage2_loader(str(shards), str(motion_root), batch_size, workers, window=plan.window,
                           seed=seed, rank=rank, world_size=world, drop_last=True,
                           motion_stats=motion_stats)
    yield from endless_epochs(loader, first_epoch,
                              f"no stage-2 windows of {plan.window} frames (batch {batch_size}) in "
                              f"{shards}: clips too short or too few; lower window / batch size")


def train_stage2(cur: Curriculum, opts: TrainOptions) -> dict:
    from ifmdm_model.stage2.diffusion import DDPMSchedule, diffusion_loss
    from ifmdm_model.stage2.extract import extract_motion
    from ifmdm_model.stage2.model import Stage2Config, build_stage2

    plan = cur.stage2
    device, rank, world = setup_distributed(opts.device)
    run = Path(opts.run_dir)
    s1 = latest_checkpoint(run / "stage1")
    if s1 is None:
        raise TrainingError(f"stage 2 needs a stage-1 checkpoint in {run / 'stage1'}: train stage 1 first "
                            f"(ifmdm-train --curriculum ... -o {run} --stage 1)")
    # every rank extracts its share of the shards on its own device, then all see the result
    dev = str(device)
    ext = extract_motion(s1, cur.shards, batch_size=plan.extract_batch, device=dev, progress=False,
                         rank=rank, world_size=world)
    if world > 1:
        torch.distributed.barrier()
        ext = extract_motion(s1, cur.shards, batch_size=plan.extract_batch, device=dev, progress=False)
    motion_root, encoder = ext["out_root"], ext["encoder_id"]   # a folder or a URL (s3://...)
    motion_dim = int(load_checkpoint(s1)["state"]["model_config"]["motion_dim"])
    speech_dim = _speech_dim(cur.shards)
    speech_feature = _speech_feature(cur.shards)   # inference computes the same features

    torch.manual_seed(opts.seed + rank)
    # the curriculum's ablations (modulation, speech_residual, conditioning, motion_stats, drop
    # probabilities) on top of the named size; every key lands in the checkpoint's model_config
    model = build_stage2(plan.model, speech_dim=speech_dim, motion_dim=motion_dim,
                         n_frames=plan.window, **plan.model_overrides()).to(device)
    model_cfg = model.cfg.to_dict()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    schedule = DDPMSchedule(plan.num_timesteps, plan.beta_schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.0)
    out_dir = run / "stage2"
    step, epoch = 0, 0
    ck = latest_checkpoint(out_dir) if opts.resume else None
    if ck is not None:
        data = load_checkpoint(ck)
        st = data["state"]
        ck_cfg = None
        if isinstance(st.get("model_config"), dict):
            try:   # a checkpoint written before a config key existed has that key's default
                ck_cfg = Stage2Config.from_dict(st["model_config"]).to_dict()
            except (IfmdmError, TypeError, ValueError):
                pass
        if ck_cfg != model_cfg or st.get("encoder") != encoder:
            raise CheckpointError(f"{ck} was trained with another model or stage-1 encoder "
                                  f"({st.get('model')}, encoder {st.get('encoder')}); use another -o folder")
        step, epoch = restore(ck, data, model, ema, opt)
        if rank == 0:
            log.info("stage 2 resumed from %s at step %d", ck, step)
    ddp = wrap_ddp(model, device, world)
    writer = tensorboard_writer(rank, out_dir / "tb")
    amp = autocast_for(device)
    total = plan.steps if opts.max_steps is None else min(plan.steps, opts.max_steps)
    batch_size = opts.batch_size or plan.batch_size
    workers = loader_workers(plan.num_workers if opts.num_workers is None else opts.num_workers, world)
    gen = torch.Generator(device="cpu").manual_seed(opts.seed * 1000 + rank + step)

    def save():
        if rank == 0:
            save_checkpoint(out_dir, step, model, ema, {"opt": opt.state_dict()},
                            {"model": plan.model, "model_config": model_cfg, "global_step": step,
                             "epoch": epoch, "world_size": world, "encoder": encoder,
                             "stage1_checkpoint": str(s1), "speech_feature": speech_feature,
                             "schedule": {"num_timesteps": plan.num_timesteps,
                                                                        "beta_schedule": plan.beta_schedule},
                             "plan": asdict(plan), "curriculum": str(cur.path)})

    it = _windows(cur.shards, motion_root, plan, batch_size, workers, opts.seed, epoch, rank, world,
                  motion_stats=model.cfg.motion_stats)
    history, t_last, n_last, trained = [], time.perf_counter(), 0, 0
    model.train()
    while step < total:
        lr = plan.lr * min(1.0, (step + 1) / max(1, plan.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        b = next(it)
        x0 = b["motion"].to(device)                                          # (N, T, D)
        cond = {k: b[k].to(device) for k in ("speech", "hint")}
        cond["m_mu"], cond["m_sigma"] = b["motion_mean"].to(device), b["motion_std"].to(device)
        drops = model.sample_drops(x0.shape[0], gen, device=device)
        # windows at the start of a clip have no previous frame: they train the null hint
        # embedding, which inference can use for its first chunk (`--first-hint learned`;
        # the default, as in DESIGN.md, is the input image's motion m')
        drops["drop_hint"] = drops["drop_hint"] | b["hint_is_first"].to(device).bool()
        with amp:
            loss = diffusion_loss(ddp, schedule, x0, cond, generator=gen, drops=drops)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite stage-2 loss at step {step}; batch keys: {b['key']}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, ddp, plan.ema)
        step += 1
        n_last += x0.shape[0] * world
        if rank == 0:
            trained += 1
            log_first_step(log, trained, step, total, plan.log_every, time.perf_counter() - t_last)
        if rank == 0 and (step % plan.log_every == 0 or step == total):
            dt = time.perf_counter() - t_last
            history.append({"step": step, "loss": float(loss.detach())})
            writer.add_scalar("stage2/loss", float(loss.detach()), step)
            writer.add_scalar("stage2/lr", lr, step)
            writer.add_scalar("stage2/windows_per_s", n_last / dt, step)
            log.info("stage 2 step %d/%d loss %.4f | %.1f windows/s", step, total, float(loss.detach()), n_last / dt)
            t_last, n_last = time.perf_counter(), 0
        if step % plan.checkpoint_every == 0 or step == total:
            save()
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return {"steps": step, "history": history, "run_dir": str(out_dir), "encoder": encoder,
            "extraction": ext}
