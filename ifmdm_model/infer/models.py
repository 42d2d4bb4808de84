"""The models one inference run needs: the device choice, the EMA stage-1 / stage-2 models of a
run folder (with `--lora` adapters merged in) and the speech feature extractor the stage-2
checkpoint was trained with. Every failure is an `InferenceError`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ifmdm_data.errors import IfmdmError
from ifmdm_model.checkpoint import (CheckpointError, latest_checkpoint, load_stage1_checkpoint, load_weights,
                                    read_state, read_weights, resolve_stage1_checkpoint)
from ifmdm_model.infer.media_io import InferenceError


@dataclass
class Models:
    stage1: torch.nn.Module            # MotionAutoencoder (EMA weights), eval
    stage2: Optional[torch.nn.Module]  # MotionDiT (EMA weights), eval; None for reenactment
    schedule: object                   # DDPMSchedule or None
    speech_feature: dict
    image_size: int
    motion_dim: int
    device: torch.device
    stage1_ckpt: Path
    stage2_ckpt: Optional[Path]
    adapters: dict = field(default_factory=dict)   # {stage: adapter folder} merged in (`--lora`)


def choose_device(device) -> torch.device:
    """--device: a torch.device, "auto"/None (CUDA when present), "cpu", "cuda", "cuda:N"."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InferenceError(f"invalid --device {device!r} ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _latest(folder: Path) -> Optional[Path]:
    try:
        return latest_checkpoint(folder) if folder.is_dir() else None
    except CheckpointError as e:
        raise InferenceError(str(e)) from None


def load_stage1(ck: Path, device: torch.device) -> torch.nn.Module:
    """The EMA MotionAutoencoder of stage-1 checkpoint folder `ck`, eval, on `device`."""
    return load_stage1_checkpoint(ck, device, error=InferenceError)[0]


def load_models(run_dir, device="auto", need_stage2: bool = True, lora=None) -> Models:
    """The EMA models of a run folder (runs/x with stage1/latest and stage2/latest).

    Stage 1 is the checkpoint stage 2 was trained on (its recorded `stage1_checkpoint`) when it
    still exists, else runs/x/stage1/latest. `lora`: an `ifmdm-tune` output folder whose
    adapters (stage 1: lora/, stage 2: lora-stage2/) are merged in; each must have been tuned
    on exactly these weights."""
    from ifmdm_model.stage2.diffusion import DDPMSchedule
    from ifmdm_model.stage2.model import MotionDiT, Stage2Config

    run = Path(run_dir)
    if not run.is_dir():
        raise InferenceError(f"checkpoint folder {run} does not exist (give the run folder of "
                             f"`ifmdm-train -o`, e.g. runs/x)")
    dev = choose_device(device)
    s2 = None
    state2: dict = {}
    if need_stage2:
        s2 = _latest(run / "stage2")
        if s2 is None:
            raise InferenceError(f"no stage-2 checkpoint in {run}: expected {run}/stage2/latest "
                                 f"(train stage 2: ifmdm-train --curriculum ... -o {run} --stage 2)")
        state2 = read_state(s2, error=InferenceError)
    s1 = None
    rec = state2.get("stage1_checkpoint")
    if rec and (Path(rec) / "ema.safetensors").is_file():
        s1 = Path(rec)
    if s1 is None:
        s1 = resolve_stage1_checkpoint(run, error=InferenceError)
    stage1 = load_stage1(s1, dev)
    adapters = {}
    if lora is not None:
        from ifmdm_model.lora import LoraError, apply_adapter, find_adapters
        try:
            adapters = find_adapters(lora)
            if 1 in adapters:
                apply_adapter(stage1, adapters[1], s1 / "ema.safetensors")
        except LoraError as e:
            raise InferenceError(str(e)) from None
        stage1.requires_grad_(False)
    stage2 = schedule = None
    if need_stage2:
        try:
            cfg = Stage2Config.from_dict(state2["model_config"], where=f"{s2}/state.json model_config")
            sch = state2.get("schedule") or {}
            schedule = DDPMSchedule(int(sch.get("num_timesteps", 1000)), sch.get("beta_schedule", "linear"))
        except KeyError as e:
            raise InferenceError(f"{s2}/state.json lacks {e}") from None
        except (IfmdmError, ValueError, TypeError) as e:
            raise InferenceError(f"{s2}/state.json: {e}") from None
        if cfg.motion_dim != stage1.cfg.motion_dim:
            raise InferenceError(f"stage 2 ({s2}) generates {cfg.motion_dim}-d motion but stage 1 "
                                 f"({s1}) has motion_dim {stage1.cfg.motion_dim}")
        stage2 = MotionDiT(cfg)
        load_weights(stage2, read_weights(s2, error=InferenceError), f"{s2}/ema.safetensors", error=InferenceError)
        if 2 in adapters:
            try:
                apply_adapter(stage2, adapters[2], s2 / "ema.safetensors", stage=2)
            except LoraError as e:
                raise InferenceError(str(e)) from None
        stage2 = stage2.to(dev).eval().requires_grad_(False)
    used = {st: str(f) for st, f in adapters.items() if st == 1 or stage2 is not None}
    return Models(stage1, stage2, schedule, state2.get("speech_feature") or {},
                  stage1.cfg.image_size, stage1.cfg.motion_dim, dev, s1, s2, used)


def speech_extractor(info: dict, speech_dim: int, wav2vec2: Optional[str] = None, device="auto"):
    """The speech feature extractor the stage-2 checkpoint was trained with."""
    from ifmdm_data.features.speech import build_features
    kind = (info or {}).get("type")
    if kind is None:
        kind = "wav2vec2" if wav2vec2 else "logmel"
    try:
        if kind == "logmel":
            if wav2vec2:
                raise InferenceError("--wav2vec2 given, but the stage-2 checkpoint was trained on log-mel features")
            feats = build_features(None)
        elif kind == "wav2vec2":
            folder = wav2vec2 or info.get("checkpoint")
            if not folder:
                raise InferenceError("the stage-2 checkpoint was trained on wav2vec2 features but records "
                                     "no model folder: pass --wav2vec2 DIR")
            layers = tuple(info.get("layers") or (-1,))
            feats = build_features(folder, layers=layers, device=device)
        else:
            raise InferenceError(f"unknown speech feature type {kind!r} in the stage-2 checkpoint")
    except IfmdmError as e:
        if isinstance(e, InferenceError):
            raise
        raise InferenceError(f"speech features: {e}") from None
    if int(feats.dim) != int(speech_dim):
        raise InferenceError(f"speech features have dim {feats.dim} ({kind}) but the stage-2 model "
                             f"expects {speech_dim}: use the extractor it was trained with (--wav2vec2 DIR)")
    return feats
