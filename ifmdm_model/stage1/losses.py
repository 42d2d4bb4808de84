"""Stage-1 losses: L1 + VGG19 perceptual + local flow loss (+ optional non-saturating GAN, R1).

Paper (DESIGN.md, "Model"): "Losses: L1 + perceptual (VGG pyramid, weights from a local path;
off when absent) + local flow loss (+ optional non-saturating GAN)." `Stage1Loss` combines them
with the weights of `Stage1LossConfig` and returns named scalars, so a trainer can log each.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifmdm_data.errors import IfmdmError, MissingWeightsError

# torchvision's file name for the ImageNet VGG19 weights (its download cache keeps this name)
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG_LAYERS = (1, 6, 11, 20, 29)                        # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)  # deeper layers weigh more (pix2pixHD, LIA)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Stage1LossConfig:
    """Loss weights of stage 1 (a weight of 0 turns a term off)."""
    l1: float = 1.0
    perceptual: float = 10.0
    vgg_weights: Optional[str] = None    # VGG19 state dict file, or a folder holding VGG19_FILENAME
    vgg_pyramid: Tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)  # image scales of the perceptual loss
    local_flow: float = 0.1
    gan: float = 0.0                     # non-saturating GAN loss of the decoder (needs a Discriminator)
    r1_gamma: float = 10.0               # R1 penalty weight on real images (0: off)
    r1_every: int = 16                   # lazy R1: every k discriminator steps, scaled by k


#################################################################################
#                               Perceptual loss                                 #
#################################################################################

def resolve_vgg_weights(weights_path: Union[str, Path]) -> Path:
    """The VGG19 weight file: `weights_path` itself, or VGG19_FILENAME inside a folder."""
    p = Path(weights_path).expanduser()
    if p.is_dir() or (not p.suffix and not p.exists()):
        p = p / VGG19_FILENAME
    if not p.is_file():
        raise MissingWeightsError(
            p.name, str(p.parent), "the VGG19 perceptual loss",
            hint="torchvision's ImageNet vgg19 state dict, e.g. copied from "
                 f"~/.cache/torch/hub/checkpoints/{VGG19_FILENAME}; or give no path to train "
                 "without the perceptual loss")
    return p


class VGGPerceptual(nn.Module):
    """Perceptual loss on a VGG19 feature pyramid, over an optional image pyramid.

    torchvision's vgg19(weights=None) is built on the meta device (no random init, no
    classifier memory), cut after the deepest layer used, and filled from the local state
    dict at `weights_path` (a full vgg19 state dict, or its `features` part). Frozen.
    loss(x, y) = mean over image scales of sum_layer w_layer * L1(phi(x), phi(y)); images in
    [-1, 1] are mapped to [0, 1] and normalised with the ImageNet mean and std.
    """

    def __init__(self, weights_path: Union[str, Path], layers: Sequence[int] = VGG_LAYERS,
                 layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
                 pyramid: Sequence[float] = (1.0,)):
        super().__init__()
        from torchvision.models import vgg19

        if len(layers) != len(layer_weights):
            raise ValueError(f"{len(layers)} VGG layers but {len(layer_weights)} layer weights")
        path = resolve_vgg_weights(weights_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and any(k.startswith("features.") for k in state):
            state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        last = max(layers)
        state = {k: v for k, v in state.items() if k.split(".")[0].isdigit() and int(k.split(".")[0]) <= last}
        with torch.device("meta"):
            features = vgg19(weights=None).features[: last + 1]
        try:
            features.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise IfmdmError(f"{path} is not a torchvision vgg19 state dict ({str(e).splitlines()[0]})") from e
        self.features = features.eval().requires_grad_(False)
        self.layers, self.layer_weights = tuple(layers), tuple(layer_weights)
        self.pyramid = tuple(pyramid)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()                                       # frozen feature extractor
        return self

    def _features(self, x) -> List[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) each
        total = x.new_zeros((), dtype=torch.float32)
        x, y = x.float(), y.float()
        # VGG19 pools 4 times before relu5_1: a scale whose image is under 32 px is skipped
        scales = [s for s in self.pyramid if min(x.shape[-2:]) * s >= 32] or [1.0]
        for s in scales:
            xs, ys = (x, y) if s == 1 else (
                F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False, antialias=True),
                F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False, antialias=True))
            with torch.no_grad():
                fy = self._features(ys.detach())
            for w, a, b in zip(self.layer_weights, self._features(xs), fy):
                total = total + w * F.l1_loss(a.float(), b.float())
        return total / len(scales)


def build_perceptual(weights_path: Optional[Union[str, Path]],
                     pyramid: Sequence[float] = (1.0,)) -> Optional[VGGPerceptual]:
    """A VGGPerceptual from a local file/folder, or None (with a warning) when no path is given."""
    if weights_path is None or str(weights_path) == "":
        warnings.warn("perceptual loss is OFF: no VGG19 weights path given (set vgg_weights to "
                      f"a local {VGG19_FILENAME} to turn it on)", UserWarning, stacklevel=2)
        return None
    return VGGPerceptual(weights_path, pyramid=pyramid)


#################################################################################
#                               Local flow loss                                 #
#################################################################################

def local_flow_loss(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Spatial specificity of the local flow masks: the spatial variance of each group's mask
    around its centre of mass, averaged over groups, samples and scales.

    masks: list of (N, G, H, W) non-negative maps (the model's masks sum to 1 over H, W; each
    map is renormalised here). Coordinates are pixel centres in [-1, 1], so scales compare:
    a uniform mask scores 2/3 (1/3 per axis), a one-pixel mask 0.
    """
    if not masks:
        raise ValueError("local_flow_loss needs at least one mask")
    total = 0.0
    for m in masks:
        m = m.float()
        n, g, h, w = m.shape
        m = m / m.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)  # (N, G, H, W)
        ys = (torch.arange(h, device=m.device, dtype=m.dtype) * 2 + 1) / h - 1  # (H,)
        xs = (torch.arange(w, device=m.device, dtype=m.dtype) * 2 + 1) / w - 1  # (W,)
        py, px = m.sum(dim=3), m.sum(dim=2)                       # marginals (N, G, H), (N, G, W)
        mu_y, mu_x = (py * ys).sum(-1, keepdim=True), (px * xs).sum(-1, keepdim=True)  # (N, G, 1)
        var = (py * (ys - mu_y) ** 2).sum(-1) + (px * (xs - mu_x) ** 2).sum(-1)  # (N, G)
        total = total + var.mean()
    return total / len(masks)


#################################################################################
#                                   GAN losses                                  #
#################################################################################

def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss: softplus(-D(x)) + softplus(D(G(z)))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: softplus(-D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1: E ||grad_x D(x)||^2 on real images (the caller scales it by gamma / 2)."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).sum(dim=(1, 2, 3)).mean()


#################################################################################
#                                 Stage-1 loss                                  #
#################################################################################

class Stage1Loss(nn.Module):
    """L1 + perceptual + local flow (+ GAN) with the weights of a Stage1LossConfig.

    forward(outputs, target, discriminator=None) -> {"loss": total (with grad), "l1",
    "perceptual", "local_flow", "gan_g": detached scalars of the terms that are on}.
    `discriminator_losses(discriminator, real, fake, r1=False)` -> {"loss", "d_loss", "r1"}.
    """

    def __init__(self, cfg: Optional[Stage1LossConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or Stage1LossConfig()
        self.perceptual = (build_perceptual(cfg.vgg_weights, cfg.vgg_pyramid)
                           if cfg.perceptual > 0 else None)

    def forward(self, outputs: Dict[str, object], target: torch.Tensor,
                discriminator: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        recon = outputs["recon"]                                   # (N, 3, H, W)
        terms: Dict[str, torch.Tensor] = {}
        total = recon.new_zeros((), dtype=torch.float32)
        if cfg.l1 > 0:
            terms["l1"] = F.l1_loss(recon.float(), target.float())
            total = total + cfg.l1 * terms["l1"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon, target)
            total = total + cfg.perceptual * terms["perceptual"]
        if cfg.local_flow > 0:
            terms["local_flow"] = local_flow_loss(outputs["masks"])
            total = total + cfg.local_flow * terms["local_flow"]
        if cfg.gan > 0:
            if discriminator is None:
                raise ValueError("Stage1LossConfig.gan > 0 needs the discriminator")
            terms["gan_g"] = g_loss(discriminator(recon))
            total = total + cfg.gan * terms["gan_g"]
        out = {"loss": total}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def discriminator_losses(self, discriminator: nn.Module, real: torch.Tensor,
                             fake: torch.Tensor, r1: bool = False) -> Dict[str, torch.Tensor]:
        """One discriminator step's loss; with r1=True adds the lazy R1 term
        (gamma / 2 * r1_every * R1, as StyleGAN2 does every r1_every steps)."""
        loss = d_loss(discriminator(real), discriminator(fake.detach()))
        out = {"d_loss": loss.detach()}
        if r1 and self.cfg.r1_gamma > 0:
            pen = r1_penalty(discriminator, real)
            loss = loss + self.cfg.r1_gamma / 2 * self.cfg.r1_every * pen
            out["r1"] = pen.detach()
        out["loss"] = loss
        return out
