"""A local wav2vec2 checkpoint folder: what it must hold (`check_wav2vec2_dir`), reading its
JSON files, and the frozen-GroupNorm surgery applied to a loaded "group" model.

Nothing here downloads anything: a checkpoint is a local folder holding `config.json` and
`model.safetensors` (or `pytorch_model.bin`), e.g. written by
`Wav2Vec2Model.save_pretrained(DIR)` on a machine with internet.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ifmdm_data.errors import MissingWeightsError
from ifmdm_data.features.common import FeatureError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WHAT = "wav2vec2 speech features (--wav2vec2 DIR)"
_HINT = ("a local Wav2Vec2 checkpoint folder: save one with Wav2Vec2Model.save_pretrained(DIR), "
         "or copy config.json + model.safetensors of e.g. facebook/wav2vec2-base-960h "
         "downloaded elsewhere; nothing is downloaded at run time")


def check_wav2vec2_dir(checkpoint_dir) -> Path:
    """The wav2vec2 checkpoint folder as an absolute path, or MissingWeightsError / FeatureError."""
    folder = Path(os.path.expanduser(str(checkpoint_dir))).absolute()
    if not folder.exists():
        raise MissingWeightsError("config.json", str(folder), _WHAT,
                                  f"the folder does not exist; {_HINT}")
    if not folder.is_dir():
        raise FeatureError(f"--wav2vec2 {folder}: is a file, not a checkpoint folder ({_HINT})")
    if not (folder / "config.json").is_file():
        raise MissingWeightsError("config.json", str(folder), _WHAT, _HINT)
    if not any((folder / f).is_file() for f in WEIGHT_FILES + WEIGHT_INDEX_FILES):
        raise MissingWeightsError(WEIGHT_FILES[0], str(folder), _WHAT,
                                  f"or {WEIGHT_FILES[1]}; {_HINT}")
    return folder


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FeatureError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise FeatureError(f"{path}: expected a JSON object")
    return data


def freeze_groupnorm(model):
    """Replace the GroupNorm of the first conv layer of a "group" Wav2Vec2 feature encoder by
    a wrapper that applies per-sample statistics given from outside (computed on the whole,
    unpadded clip) instead of statistics over the padded / chunked input. Returns the
    wrapper, or None when the model does not have the expected structure (then only
    equal-length pieces are batched)."""
    import torch

    class _GroupNorm(torch.nn.Module):
        def __init__(self, gn, conv):
            super().__init__()
            self.gn = gn
            object.__setattr__(self, "conv", conv)  # a reference, not a second submodule
            self.stats = None

        def forward(self, x):
            if self.stats is None:
                return self.gn(x)
            mean, rstd = self.stats
            y = (x.float() - mean) * rstd
            y = y * self.gn.weight.float()[None, :, None] + self.gn.bias.float()[None, :, None]
            return y.to(x.dtype)

    try:
        layer = model.feature_extractor.conv_layers[0]
        gn, conv = layer.layer_norm, layer.conv
    except (AttributeError, IndexError, TypeError):
        return None
    if not isinstance(gn, torch.nn.GroupNorm) or not gn.affine \
            or not isinstance(conv, torch.nn.Conv1d) or conv.padding != (0,):
        return None
    wrapper = _GroupNorm(gn, conv)
    layer.layer_norm = wrapper
    return wrapper
