"""LoRA adapters for the stage-1 motion autoencoder and the stage-2 motion DiT: add, merge, save, find, apply.

Personalisation (paper Fig. 6): trained by `ifmdm_model.tune`, applied by inference and
evaluation (`ifmdm-infer --lora`, `ifmdm-eval --lora`), so it sits beside `checkpoint` and
depends on neither.

LoRA (Hu et al. 2021): a frozen weight W (out, in, ...) gets a trainable low-rank update
W + (alpha / r) * B A, with A (r, fan_in) and B (out, r), B initialised to zero so that the
adapted model starts equal to the base. Stage 1 is built from equalised-learning-rate layers
(`EqualConv2d`, `EqualLinear`, StyleGAN2's `ModulatedConv2d`) that read their stored `weight`
and scale it at run time; `peft` wraps only the standard `nn.Linear` / `nn.Conv2d` family, so
the update is attached with PyTorch's own `torch.nn.utils.parametrize`: each adapted layer's
`weight` becomes W + (alpha / r) * (B A).view_as(W) wherever the layer reads it (the
per-sample modulation and demodulation of `ModulatedConv2d` then apply to the adapted weight,
as they would to a fine-tuned one). Merging bakes the update into W (`merge_lora`), so an
adapted model runs at the base model's speed. Stage 2's `nn.Linear` layers get the same
mechanism (one adapter format for both stages; peft's extra LoRA variants are not used).

Adapter files (a folder, e.g. runs/x-subject/lora/):
    adapter.safetensors   lora_A / lora_B per adapted weight ("<module>.lora_A", "<module>.lora_B")
    adapter.json          rank, alpha, targets, the base checkpoint and its weights' sha256,
                          what it was tuned on and the reconstruction errors before and after
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ifmdm_data.errors import IfmdmError

from ifmdm_model.checkpoint import weights_sha256

TARGETS = ("decoder", "encoder", "all", "dit")
ADAPTER_FILE, CONFIG_FILE = "adapter.safetensors", "adapter.json"


class LoraError(IfmdmError):
    """An adapter is missing, corrupt, or does not belong to the base model it is applied to."""


@dataclass
class LoraConfig:
    """rank r, scale alpha (the update is alpha / r * B A) and which part is adapted: of stage 1
    "decoder" (default: the motion space that stage 2 was trained on stays the base's),
    "encoder" or "all"; of stage 2 "dit" (every linear layer of the transformer blocks and the
    final layer; the condition embedders stay the base's)."""
    rank: int = 8
    alpha: float = 8.0
    targets: str = "decoder"

    def validate(self) -> "LoraConfig":
        if not isinstance(self.rank, int) or self.rank < 1:
            raise LoraError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise LoraError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if self.targets not in TARGETS:
            raise LoraError(f"LoRA targets must be one of {TARGETS}, got {self.targets!r}")
        return self


class LowRankUpdate(nn.Module):
    """The parametrization W -> W + scaling * (B A).view_as(W); A (r, fan_in), B (out, r).
    A starts like a Kaiming-uniform layer, B at zero (the adapted layer equals the base)."""

    def __init__(self, weight_shape: torch.Size, rank: int, alpha: float):
        super().__init__()
        out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.enabled = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        return w + (self.scaling * (self.lora_B @ self.lora_A)).view_as(w).to(w.dtype)


def _adaptable(model: nn.Module, targets: str) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every layer with a >= 2-D `weight` in the targeted part of the model."""
    from ifmdm_model.stage1.layers import EqualConv2d, EqualLinear, ModulatedConv2d
    kinds = (nn.Linear,) if targets == "dit" else (EqualConv2d, EqualLinear, ModulatedConv2d)
    prefixes = {"decoder": ("decoder.",), "encoder": ("encoder.",), "all": ("decoder.", "encoder."),
                "dit": ("blocks.", "final.")}[targets]
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, kinds) and name.startswith(prefixes) and mod.weight.dim() >= 2:
            out.append((name, mod))
    if not out:
        raise LoraError(f"no layer to adapt under {prefixes} (targets {targets!r} fit "
                        f"{'a stage-2 MotionDiT' if targets == 'dit' else 'a stage-1 MotionAutoencoder'})")
    return out


def add_lora(model: nn.Module, cfg: LoraConfig) -> Dict[str, LowRankUpdate]:
    """Freeze `model` and attach a LowRankUpdate to every targeted layer's weight. Returns them
    by module name (their parameters are the only trainable ones)."""
    cfg.validate()
    layers = _adaptable(model, cfg.targets)
    limit = max(min(m.weight.shape[0], math.prod(m.weight.shape[1:])) for _, m in layers)
    if cfg.rank > limit:
        raise LoraError(f"LoRA rank {cfg.rank} is larger than every adapted layer allows (at most {limit}: "
                        "the smaller side of the largest weight); use a smaller --rank")
    model.requires_grad_(False)
    updates = {}
    for name, mod in layers:
        upd = LowRankUpdate(mod.weight.shape, cfg.rank, cfg.alpha).to(mod.weight.device)
        parametrize.register_parametrization(mod, "weight", upd)
        updates[name] = upd
    return updates


def set_lora_enabled(updates: Dict[str, LowRankUpdate], enabled: bool) -> None:
    """Switch every update on or off (off: the model computes exactly the base)."""
    for u in updates.values():
        u.enabled = enabled


def lora_state_dict(updates: Dict[str, LowRankUpdate]) -> Dict[str, torch.Tensor]:
    sd = {}
    for name, u in updates.items():
        sd[f"{name}.lora_A"] = u.lora_A.detach().float().contiguous().cpu()
        sd[f"{name}.lora_B"] = u.lora_B.detach().float().contiguous().cpu()
    return sd


def merge_lora(model: nn.Module) -> None:
    """Bake every attached update into its weight and remove the parametrizations (the model is
    then a plain stage-1 model with the adapted weights)."""
    for mod in model.modules():
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)


def save_adapter(folder: Path, updates: Dict[str, LowRankUpdate], cfg: LoraConfig, record: dict) -> Path:
    """Write adapter.safetensors + adapter.json into `folder` atomically (a hidden temp folder,
    then renamed); `record` (base checkpoint, its sha256, data, metrics) goes into the JSON."""
    import shutil

    from ifmdm_model.checkpoint import save_weights
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    save_weights(lora_state_dict(updates), tmp / ADAPTER_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps({"lora": asdict(cfg), **record}, indent=2, default=str))
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        shutil.rmtree(tmp, ignore_errors=True)
        raise LoraError(f"{folder} exists and is not a folder: remove it or choose another -o")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


STAGE_FOLDERS = {1: "lora", 2: "lora-stage2"}


def find_adapters(path) -> Dict[int, Path]:
    """The adapters a user's path names, by stage: an `ifmdm-tune -o` folder (its lora/ for
    stage 1, lora-stage2/ for stage 2) or one adapter folder itself (its record says the
    stage). LoraError when there is none."""
    p = Path(path)
    if not p.exists():
        raise LoraError(f"LoRA adapter {p} does not exist (give the -o folder of `ifmdm-tune`)")
    if (p / CONFIG_FILE).is_file():
        try:
            stage = int(json.loads((p / CONFIG_FILE).read_text()).get("stage", 1))
        except (ValueError, AttributeError, TypeError) as e:
            raise LoraError(f"{p}/{CONFIG_FILE} is corrupt ({e})") from None
        return {stage: p}
    found = {st: p / sub for st, sub in STAGE_FOLDERS.items() if (p / sub / CONFIG_FILE).is_file()}
    if not found:
        raise LoraError(f"no LoRA adapter in {p}: expected {p}/lora/{CONFIG_FILE} (stage 1) or "
                        f"{p}/lora-stage2/{CONFIG_FILE} (stage 2), written by `ifmdm-tune -o`")
    return found


def adapter_folder(path, stage: int = 1) -> Path:
    """The stage's adapter folder a user's path names (`find_adapters`)."""
    found = find_adapters(path)
    if stage not in found:
        raise LoraError(f"{path} holds no stage-{stage} adapter (it has stage {sorted(found)})")
    return found[stage]


def read_adapter(path, stage: int = 1) -> Tuple[dict, Dict[str, torch.Tensor], Path]:
    """(config record, tensors, folder) of a stage's adapter; LoraError when unreadable."""
    from safetensors.torch import load_file
    folder = adapter_folder(path, stage)
    try:
        rec = json.loads((folder / CONFIG_FILE).read_text())
        tensors = load_file(str(folder / ADAPTER_FILE))
    except FileNotFoundError:
        raise LoraError(f"LoRA adapter {folder} lacks {ADAPTER_FILE}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt adapter
        raise LoraError(f"LoRA adapter {folder} is corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("lora"), dict) or not isinstance(rec.get("base_sha256"), str):
        raise LoraError(f"{folder}/{CONFIG_FILE} is not an ifmdm-tune adapter record (needs 'lora' and 'base_sha256')")
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise LoraError(f"LoRA adapter {folder} holds non-finite values (e.g. {bad[0]}): tune it again")
    return rec, tensors, folder


def apply_adapter(model: nn.Module, path, base_weights: Path, merge: bool = True, stage: int = 1) -> dict:
    """Load the stage's adapter at `path` onto `model` (built from `base_weights`, its
    ema.safetensors) and, by default, merge it. The adapter must have been tuned on exactly
    these base weights (sha256), else LoraError names both. Returns the adapter's record."""
    rec, tensors, folder = read_adapter(path, stage)
    sha = weights_sha256(Path(base_weights))
    if rec["base_sha256"] != sha:
        raise LoraError(f"LoRA adapter {folder} was tuned on {rec.get('base_checkpoint')} (weights sha256 "
                        f"{rec['base_sha256'][:12]}...), not on {base_weights} ({sha[:12]}...): give the "
                        "run it was tuned from")
    try:
        cfg = LoraConfig(**rec["lora"]).validate()
    except TypeError as e:
        raise LoraError(f"{folder}/{CONFIG_FILE}: bad 'lora' entry ({e})") from None
    updates = add_lora(model, cfg)
    expected = set(lora_state_dict(updates))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise LoraError(f"LoRA adapter {folder} does not fit this model: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}")
    with torch.no_grad():
        for name, u in updates.items():
            for part in ("lora_A", "lora_B"):
                t = tensors[f"{name}.{part}"]
                p = getattr(u, part)
                if t.shape != p.shape:
                    raise LoraError(f"LoRA adapter {folder}: {name}.{part} has shape {tuple(t.shape)}, "
                                    f"the model needs {tuple(p.shape)}")
                p.copy_(t)
    if merge:
        merge_lora(model)
    return rec
