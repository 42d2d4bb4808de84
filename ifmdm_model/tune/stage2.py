"""`ifmdm-tune --stage 2`: LoRA adapters on the stage-2 motion DiT from the subject's videos with
speech, so generated motion takes on the subject's own motion habits (paper Fig. 6).

Per video with an audio track: frames resampled to the stage-2 frame rate (25 fps, as
`ifmdm-data shard` writes them), motion m per frame from the stage-1 encoder (the base's, or
the stage-1 adapter's when one was tuned on the encoder), speech features of the run's own
kind (`infer.speech_extractor`) aligned to the frames (`align_to_frames`), unnormalised as in
the shards the model was trained on. Windows of the model's n_f frames
(`motion_windows.cut_windows`; statistics per clip part or per window, as the model was
trained): the first 75% of each video trains (stride 4), the rest is held out
(non-overlapping). Training: DDPM's loss with the model's own condition-drop probabilities.
Reported: the held-out denoising loss (fixed timesteps and noise) with the adapter off and
after tuning.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ifmdm_model.tune.stage1 import (VIDEO_EXTS, TuneError, check_finite, check_local_runs, data_location,
                                     file_ext, subject_files)

log = logging.getLogger("ifmdm_model")

STAGE2_FPS = 25.0


def subject_windows(models, paths: Sequence[str], wav2vec2=None, train_fraction: float = 0.75,
                    stride: int = 4, max_frames: int = 2000) -> tuple:
    """(train, held-out) window sets (numpy) of the subject's videos with audio, and the names
    of the videos used. TuneError when no video has both frames and audio."""
    from ifmdm_data.io import storage
    from ifmdm_data.media.audio import load_audio
    from ifmdm_data.errors import ClipError
    from ifmdm_data.features import align_to_frames

    from ifmdm_model.infer import speech_extractor
    from ifmdm_model.infer.media_io import InferenceError, video_fps, video_frames
    from ifmdm_model.stage2.motion_windows import concat_windows, cut_windows

    cfg2 = models.stage2.cfg
    n_f = cfg2.n_frames
    feats = speech_extractor(models.speech_feature, cfg2.speech_dim, wav2vec2, models.device)
    train, held, used, skipped = [], [], [], []
    for f in subject_files(paths):
        name = storage.name(f)
        if file_ext(f) not in VIDEO_EXTS:
            skipped.append(f"{name} (not a video)")
            continue
        try:
            with storage.spool(str(f)) as lf:      # an object on object storage: a local copy while decoded
                frames = np.concatenate(list(video_frames(lf, models.image_size, 64)))
                fps = video_fps(lf)
                wav = load_audio(lf, sample_rate=16000)
        except (InferenceError, ClipError, ValueError, FileNotFoundError, storage.SpoolLimitError) as e:
            skipped.append(f"{name} ({e})")
            continue
        n = min(int(len(frames) * STAGE2_FPS / fps), max_frames, int(len(wav) / 16000 * STAGE2_FPS))
        if n < 2 * n_f:
            skipped.append(f"{name} ({n} frames at 25 fps with audio; needs >= {2 * n_f})")
            continue
        idx = np.minimum(np.round(np.arange(n) * fps / STAGE2_FPS).astype(int), len(frames) - 1)
        with torch.no_grad():
            motion = torch.cat([models.stage1.encode(
                torch.from_numpy(frames[idx[i:i + 64]]).to(models.device).permute(0, 3, 1, 2).float() / 127.5 - 1)[1]
                .float().cpu() for i in range(0, n, 64)]).numpy()
        speech = align_to_frames(feats(wav), feats.rate_hz, n, STAGE2_FPS,
                                 offset_s=getattr(feats, "offset_s", None)).astype(np.float32)
        cut = int(n * train_fraction)
        train.append(cut_windows(motion[:cut], speech[:cut], n_f, stride, cfg2.motion_stats))
        held.append(cut_windows(motion[cut:], speech[cut:], n_f, n_f, cfg2.motion_stats))
        used.append(name)
    if not used:
        raise TuneError("stage 2 needs videos of the subject with speech (>= "
                        f"{2 * n_f / STAGE2_FPS:.1f} s each); none usable: " + "; ".join(skipped))
    if skipped:
        log.warning("stage 2 skips %s", "; ".join(skipped))
    train, held = concat_windows(train), concat_windows(held)
    if len(held["motion"]) == 0:
        raise TuneError("the videos are too short to hold out a window: give longer clips")
    return train, held, used


def fit_stage2_adapter(models, train: dict, held: dict, cfg, steps: int = 500, batch_size: int = 16,
                       lr: float = 1e-3, seed: int = 0, log_every: int = 50) -> dict:
    """Attach LoRA updates (`cfg`, targets "dit") to the frozen `models.stage2` and train them
    on the `train` windows; returns {"updates", "base", "tuned", "seconds", ...} with the
    held-out denoising loss before (adapter off) and after."""
    from ifmdm_model.stage2.diffusion import diffusion_loss
    from ifmdm_model.lora import add_lora, set_lora_enabled
    from ifmdm_model.stage2.motion_windows import heldout_loss, window_conditions

    dev = models.device
    model = models.stage2
    tr = {k: torch.from_numpy(v).to(dev) for k, v in train.items()}
    he = {k: torch.from_numpy(v).to(dev) for k, v in held.items()}
    torch.manual_seed(seed)
    updates = add_lora(model, cfg)
    model.eval()
    set_lora_enabled(updates, False)
    base = heldout_loss(model, he, models.schedule, seed)
    set_lora_enabled(updates, True)
    params = [p for u in updates.values() for p in u.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    n = len(tr["motion"])
    t0, recent = time.perf_counter(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(dev)
        x0 = tr["motion"][idx]
        cond = {k: v[idx] for k, v in window_conditions(tr).items()}
        drops = model.sample_drops(batch_size, gen, device=dev)
        loss = diffusion_loss(model, models.schedule, x0, cond, generator=gen, drops=drops)
        if not torch.isfinite(loss):
            raise TuneError(f"stage-2 loss is not finite at step {step}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            log.info("tune stage 2 step %d/%d loss %.4f", step, steps, np.mean(recent[-log_every:]))
    tuned = heldout_loss(model, he, models.schedule, seed)
    return {"updates": updates, "base": {"heldout_loss": base}, "tuned": {"heldout_loss": tuned},
            "seconds": time.perf_counter() - t0, "train_windows": int(n), "heldout_windows": int(len(he["motion"])),
            "adapter_parameters": int(sum(p.numel() for p in params))}


def tune_stage2(base_run, data_paths: Sequence[str], out, rank: int = 8, alpha=None, steps: int = 500,
                batch_size: int = 16, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                overwrite: bool = False, wav2vec2=None, stage1_lora=None) -> dict:
    """Train a stage-2 LoRA adapter for one subject (module docstring) on the base run's EMA
    stage 2 (never written); `stage1_lora`: a stage-1 adapter to apply first (its encoder
    gives the motion codes). Saves OUT/lora-stage2/ and returns its record."""
    from ifmdm_model.infer import load_models
    from ifmdm_model.lora import LoraConfig, apply_adapter, save_adapter
    from ifmdm_model.checkpoint import weights_sha256

    check_local_runs(base_run, out)
    out = Path(out)
    if (out / "lora-stage2").exists() and not overwrite:
        raise TuneError(f"{out}/lora-stage2 exists: pass --overwrite to replace it")
    models = load_models(base_run, device, need_stage2=True)
    from ifmdm_model.tune.stage1 import check_out_not_in_base, run_root
    check_out_not_in_base(out, run_root(models.stage1_ckpt))
    check_out_not_in_base(out, Path(models.stage2_ckpt).resolve().parent.parent)
    if stage1_lora is not None:                    # stage 1 only: never the stage-2 adapter being replaced
        apply_adapter(models.stage1, stage1_lora, Path(models.stage1_ckpt) / "ema.safetensors")
        models.stage1.requires_grad_(False)
    cfg = LoraConfig(rank=rank, alpha=float(alpha if alpha is not None else rank), targets="dit").validate()
    train, held, used = subject_windows(models, data_paths, wav2vec2)
    fit = fit_stage2_adapter(models, train, held, cfg, steps, batch_size, lr, seed)
    record = {
        "stage": 2,
        "base_checkpoint": str(Path(models.stage2_ckpt).resolve()),
        "base_sha256": weights_sha256(Path(models.stage2_ckpt) / "ema.safetensors"),
        "stage1_checkpoint": str(Path(models.stage1_ckpt).resolve()),
        "stage1_lora": str(Path(stage1_lora).resolve()) if stage1_lora else None,
        "model_config": models.stage2.cfg.to_dict(),
        "data": [data_location(p) for p in data_paths], "videos": used,
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "train_windows": fit["train_windows"], "heldout_windows": fit["heldout_windows"],
        "adapter_parameters": fit["adapter_parameters"],
        "base_parameters": int(sum(p.numel() for n_, p in models.stage2.named_parameters() if "lora_" not in n_)),
        "base": fit["base"], "tuned": fit["tuned"], "seconds": fit["seconds"],
    }
    check_finite(fit)
    save_adapter(out / "lora-stage2", fit["updates"], cfg, record)
    return record
