"""Checkpoints: a folder per save, written under a temporary name and renamed.

    runs/x/stage1/ckpt-00012000/
        model.safetensors       weights
        ema.safetensors         EMA weights (inference and stage-2 extraction use these)
        optim.pt                optimizer (+ discriminator) state, torch.save
        state.json              model config, curriculum, position (global step, level), rng seed
    runs/x/stage1/latest        name of the newest complete checkpoint folder

Reading one back for inference, evaluation or motion extraction: `read_state`, `read_weights`,
`load_weights`, and `load_stage1_checkpoint` (the one loader of a stage-1 model, or its encoder
alone, from a checkpoint folder). Each takes `error=`: the caller's own error type.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ifmdm_data.errors import IfmdmError


class CheckpointError(IfmdmError):
    """A checkpoint is missing, corrupt, or does not match the run's configuration."""


def _state_dict(module: torch.nn.Module) -> dict:
    m = module.module if hasattr(module, "module") else module
    return {k: v.detach().contiguous().cpu() for k, v in m.state_dict().items()}


def save_weights(tensors: dict, path: Path) -> None:
    """safetensors' save_file, then the permissions any new file gets here (0666 minus the
    umask): save_file creates its file 0600, unreadable for a run folder shared with others."""
    save_file(tensors, str(path))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_checkpoint(run_dir: Path, step: int, model, ema, optim_state: dict, state: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    final, tmp = run_dir / name, run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(_state_dict(model), tmp / "model.safetensors")
    save_weights(_state_dict(ema), tmp / "ema.safetensors")
    torch.save(optim_state, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = run_dir / ".latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, run_dir / "latest")
    return final


def weights_sha256(path: Path) -> str:
    """sha256 (hex) of a weights file's bytes: identifies the exact weights a derived artefact
    (extracted motion, a LoRA adapter) was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    p = run_dir / "latest"
    if not p.is_file():
        return None
    ck = run_dir / p.read_text().strip()
    if not ck.is_dir():
        raise CheckpointError(f"{p} names {ck.name}, which does not exist")
    return ck


def resolve_stage1_checkpoint(path, error=CheckpointError) -> Path:
    """The stage-1 checkpoint a user's path names: a ckpt-XXXXXXXX folder (holding state.json),
    a stage-1 folder (its `latest`) or a run folder (its stage1/latest). Failures are raised
    as `error` (a subclass of IfmdmError: each command's own error type)."""
    p = Path(path)
    if not p.exists():
        raise error(f"no checkpoint at {p}: the path does not exist (give the run folder runs/x, "
                    f"runs/x/stage1 or a ckpt-XXXXXXXX folder)")
    if (p / "state.json").is_file():
        return p
    for run in (p / "stage1", p):
        try:
            ck = latest_checkpoint(run) if run.is_dir() else None
        except CheckpointError as e:
            raise error(str(e)) from None
        if ck is not None:
            return ck
    raise error(f"no stage-1 checkpoint under {p}: expected {p}/stage1/latest, {p}/latest or a "
                f"ckpt-XXXXXXXX folder with state.json (train stage 1 with `ifmdm-train` first)")


def load_checkpoint(ckpt: Path, map_location="cpu") -> dict:
    """{'model', 'ema': state dicts, 'optim': dict, 'state': dict}; clear errors when broken."""
    for f in ("model.safetensors", "ema.safetensors", "optim.pt", "state.json"):
        if not (ckpt / f).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete: {f} is missing")
    try:
        state = json.loads((ckpt / "state.json").read_text())
        model = load_file(str(ckpt / "model.safetensors"))
        ema = load_file(str(ckpt / "ema.safetensors"))
        optim = torch.load(ckpt / "optim.pt", map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt checkpoint
        raise CheckpointError(f"checkpoint {ckpt} is corrupt ({type(e).__name__}: {e})") from None
    return {"model": model, "ema": ema, "optim": optim, "state": state}


def load_weights(module: torch.nn.Module, sd: dict, where: str, error=CheckpointError) -> None:
    """Strict load of state dict `sd` into `module`; a missing / unexpected key or a shape
    mismatch raises `error` naming `where` (the weights file)."""
    m = module.module if hasattr(module, "module") else module
    own = m.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or extra or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {shapes[0]}: {tuple(sd[shapes[0]].shape)} vs {tuple(own[shapes[0]].shape)}")
        raise error(f"{where} does not match the model configuration ({detail})")
    m.load_state_dict(sd)


def read_state(ck: Path, weights: str = "ema.safetensors", error=CheckpointError) -> dict:
    """A checkpoint's state.json (a dict), after checking that state.json and the `weights` file
    the caller will read are both there. Failures are raised as `error`."""
    ck = Path(ck)
    for f in ("state.json", weights):
        if not (ck / f).is_file():
            raise error(f"checkpoint {ck} is incomplete: {f} is missing")
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise error(f"{ck}/state.json is unreadable ({e})") from None
    if not isinstance(state, dict):
        raise error(f"{ck}/state.json is not a JSON object")
    return state


def read_weights(ck: Path, weights: str = "ema.safetensors", error=CheckpointError) -> dict:
    """The state dict (name -> CPU tensor) of a checkpoint's `weights` file; `error` when it
    cannot be parsed."""
    try:
        return load_file(str(Path(ck) / weights))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt checkpoint
        raise error(f"checkpoint {ck} is corrupt ({type(e).__name__}: {e})") from None


def stage1_config(state: dict, where: str, error=CheckpointError):
    """The `Stage1Config` a stage-1 state.json records: its `model_config`, else the registry
    entry its `model` names (a copy). `where`: the state.json, for messages."""
    from ifmdm_model.stage1.model import STAGE1_CONFIGS, Stage1Config

    if isinstance(state.get("model_config"), dict):
        try:
            return Stage1Config.from_dict(state["model_config"], where=f"{where} model_config")
        except IfmdmError as e:
            raise error(str(e)) from None
    if state.get("model") in STAGE1_CONFIGS:
        return replace(STAGE1_CONFIGS[state["model"]])
    raise error(f"{where} has neither 'model_config' nor a known 'model'")


def load_stage1_checkpoint(ck: Path, device="cpu", weights: str = "ema.safetensors",
                           encoder_only: bool = False, state: Optional[dict] = None,
                           error=CheckpointError) -> Tuple[torch.nn.Module, dict]:
    """The stage-1 model of checkpoint folder `ck` (model config from its state.json, strict
    load of `weights`: EMA by default, "model.safetensors" for the raw weights), in eval mode
    without gradients on `device`. Returns (model, state.json dict).

    encoder_only: build the visual encoder E_v alone (`VisualEncoder`, its `cfg` attached) from
    the `encoder.*` weights (motion extraction); default the whole `MotionAutoencoder`.
    state: the state.json already read (`read_state`). Failures are raised as `error`: the
    caller's own type (inference: InferenceError, extraction: NoCheckpointError)."""
    from ifmdm_model.stage1.model import MotionAutoencoder, VisualEncoder

    ck = Path(ck)
    if state is None:
        state = read_state(ck, weights, error)
    cfg = stage1_config(state, f"{ck}/state.json", error)
    sd = read_weights(ck, weights, error)
    if encoder_only:
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        model = VisualEncoder(cfg)
        load_weights(model, sd, f"{ck}/{weights} (encoder.*)", error)
        model.cfg = cfg
    else:
        model = MotionAutoencoder(cfg)
        load_weights(model, sd, f"{ck}/{weights}", error)
    return model.to(device).eval().requires_grad_(False), state
