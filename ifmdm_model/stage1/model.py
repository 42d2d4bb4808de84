"""Stage 1 of IF-MDM: the motion autoencoder (visual encoder E_v + decoder D with local flow), its registry.

One file for the model family, DiT style: config, the visual encoder, the latent axis, the
motion decoder, the model, the discriminator, then a registry of named sizes
(`STAGE1_CONFIGS`, `build_stage1`). The StyleGAN2-style layers live in
`ifmdm_model.stage1.layers`, the paper's local flow module in `ifmdm_model.stage1.local_flow`.

Paper (IF-MDM, as summarised in DESIGN.md, "Model"): "Encoder E_v: residual downsampling
blocks from the image to 4x4; outputs a list of appearance tensors A_l (one per decoder scale)
and a motion vector m: FC -> tanh, D = 20." "Decoder D: StyleGAN2-like synthesis from a 4x4
constant, modulated by m, upsampling to the output size, U-Net skips from A_l, ToRGB at each
scale (progressive)." The local flow module has no public code; `LocalFlowModule` follows the
text and says how each part maps to it.

Conventions: images are (N, 3, H, W) in [-1, 1]; the decoder's RGB output is linear (no tanh),
as in StyleGAN2. Layers use the equalised learning rate of StyleGAN2 (weights ~ N(0, 1),
scaled at run time), so train with Adam. Every tensor follows the device of the module's
parameters; meshgrids and blur kernels are non-persistent buffers built once. Pure PyTorch:
runs on CPU and CUDA, in float32 or under bf16/fp16 autocast (warping stays in float32).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ifmdm_data.errors import ConfigError
from ifmdm_model.stage1.layers import (EqualConv2d, EqualLinear, MinibatchStd, ModulatedConv2d, ResBlockDown,
                                       StyledConv, ToRGB)
from ifmdm_model.stage1.local_flow import MASK_NORMS, LocalFlowModule

MOTION_DECODERS = ("directions", "mapping")
# keys that older checkpoints' model_config lacks, with the value those checkpoints were built with
LEGACY_DEFAULTS = {"motion_decoder": "mapping"}


#################################################################################
#                                    Config                                     #
#################################################################################

@dataclass
class Stage1Config:
    """Sizes of the motion autoencoder. Channels at resolution r: min(channel_max, channel_base // r)."""
    image_size: int = 256          # output (and input) side, a power of two >= 8
    motion_dim: int = 20           # D: the paper's best trade-off (D=40: better same-id PSNR, worse stage 2)
    groups: int = 16               # G: groups of the local flow module (paper: G=16 best; 1, 4 did not converge)
    channel_base: int = 16384      # 256 px: 64 ch at 256, 128 at 128, 256 at 64, 512 from 32 down (LIA-like)
    channel_max: int = 512
    style_dim: int = 512           # width of the mapping MLP output that modulates the decoder
    n_mlp: int = 4                 # layers of the mapping MLP m -> style
    mapping_lr_mul: float = 0.01   # StyleGAN2's learning-rate multiplier of the mapping MLP
    mask_norm: str = "spatial"     # local flow masks: "spatial" softmax over H*W; "separable"
                                   # softmax_W * softmax_H; "paper" softmax(softmax(M, -1), -2) / W
    motion_decoder: str = "directions"  # "directions": LIA's latent axis, style = z_a + sum_i m_i q_i;
                                        # "mapping": style = MLP(m), identity only through the skips
    coarse_to_fine: bool = False   # True: each scale's flows = upsampled flows of the scale below + a residual
    flow_checkpoint: bool = False  # recompute the warps in backward (saves the (N, C, G, H, W) stacks)
    mbstd_group: int = 4           # discriminator minibatch-std group size (0: off)

    @property
    def resolutions(self) -> List[int]:
        """Decoder scales, coarse to fine: [4, 8, ..., image_size]."""
        return [2 ** i for i in range(2, int(math.log2(self.image_size)) + 1)]

    def channels(self, res: int) -> int:
        return min(self.channel_max, self.channel_base // res)

    def validate(self, where: str = "Stage1Config") -> "Stage1Config":
        def bad(key, why):
            raise ConfigError(f"{where}: '{key}' {why}")
        for key in ("image_size", "motion_dim", "groups", "n_mlp", "channel_base", "channel_max", "style_dim"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(key, f"must be an integer, got {v!r}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            bad("image_size", f"must be a power of two >= 8, got {self.image_size}")
        if self.motion_dim < 1:
            bad("motion_dim", f"must be >= 1, got {self.motion_dim}")
        if self.groups < 1:
            bad("groups", f"must be >= 1, got {self.groups}")
        if self.n_mlp < 1:
            bad("n_mlp", f"must be >= 1, got {self.n_mlp}")
        if not isinstance(self.coarse_to_fine, bool):
            bad("coarse_to_fine", f"must be true or false, got {self.coarse_to_fine!r}")
        if self.mask_norm not in MASK_NORMS:
            bad("mask_norm", f"must be one of {MASK_NORMS}, got {self.mask_norm!r}")
        if self.motion_decoder not in MOTION_DECODERS:
            bad("motion_decoder", f"must be one of {MOTION_DECODERS}, got {self.motion_decoder!r}")
        if self.motion_decoder == "directions" and self.motion_dim > self.style_dim:
            bad("motion_dim", f"={self.motion_dim} must be <= style_dim={self.style_dim} with "
                "motion_decoder 'directions' (orthonormal directions in the style space)")
        for r in self.resolutions:
            c = self.channels(r)
            if c < 1 or c % self.groups:
                bad("groups", f"={self.groups} must divide the channels at every scale; "
                    f"{c} channels at {r}x{r} (channel_base={self.channel_base}, "
                    f"channel_max={self.channel_max})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "Stage1Config") -> "Stage1Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        d = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in d}, **d}
        return cls(**d).validate(where)


#################################################################################
#                                Visual encoder E_v                             #
#################################################################################

class VisualEncoder(nn.Module):
    """E_v: "residual downsampling blocks from the image to 4x4; outputs a list of appearance
    tensors A_l (one per decoder scale) and a motion vector m: FC -> tanh".

    A_l is the encoder feature at each decoder resolution (the full-resolution one is the
    FromRGB feature). m comes from the 4x4 feature: conv3x3 -> FC -> FC(D) -> tanh. With
    `motion_decoder: directions` the encoder also gives the image's latent z (N, style_dim)
    (LIA's source latent: conv3x3 (shared) -> FC), appended as the last appearance entry.
    """

    def __init__(self, cfg: Stage1Config):
        super().__init__()
        res = cfg.resolutions
        self.from_rgb = EqualConv2d(3, cfg.channels(res[-1]), 1, activation=True)
        self.blocks = nn.ModuleList(ResBlockDown(cfg.channels(r), cfg.channels(r // 2))
                                    for r in reversed(res[1:]))
        c4 = cfg.channels(4)
        self.motion_conv = EqualConv2d(c4, c4, 3, activation=True)
        self.motion_fc = EqualLinear(c4 * 16, c4, activation=True)
        self.motion_out = EqualLinear(c4, cfg.motion_dim)
        self.latent_out = (EqualLinear(c4 * 16, cfg.style_dim) if cfg.motion_decoder == "directions"
                           else None)

    def forward(self, image) -> Tuple[List[torch.Tensor], torch.Tensor]:  # (N, 3, H, W)
        x = self.from_rgb(image)                                   # (N, C_H, H, W)
        feats = [x]
        for block in self.blocks:
            x = block(x)
            feats.append(x)                                        # ..., (N, C_4, 4, 4)
        h4 = self.motion_conv(x).flatten(1)                        # (N, C_4 * 16)
        m = torch.tanh(self.motion_out(self.motion_fc(h4)))        # (N, D)
        appearance = feats[::-1]                                   # A_l coarse to fine: 4x4 ... HxW
        if self.latent_out is not None:
            appearance.append(self.latent_out(h4))                 # z (N, style_dim)
        return appearance, m


#################################################################################
#                          Latent axis (LIA's directions)                       #
#################################################################################

def latent_axis_basis(directions: torch.Tensor) -> torch.Tensor:
    """The latent axis of LIA (Wang et al. 2022, "Latent Image Animator"; the paper's appendix):
    D orthonormal motion directions Q (style_dim, D), Q^T Q = I, from the learned (style_dim, D)
    matrix by QR (as LIA does), made unique by a positive diag(R). Float32."""
    q, r = torch.linalg.qr(directions.float())
    d = torch.diagonal(r)
    return q * torch.where(d < 0, -1.0, 1.0)[None]             # unique: positive diag(R)


def latent_axis_style(z: torch.Tensor, motion: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """A point on the latent axis: style = z_a + sum_i m_i q_i. z (N, S): the appearance image's
    latent; motion m (N, D); basis Q (S, D) from `latent_axis_basis` -> (N, S) in z's dtype."""
    return z + (motion.float() @ basis.t()).to(z.dtype)        # (N, S)


#################################################################################
#                                 Motion decoder D                              #
#################################################################################

class SynthesisBlock(nn.Module):
    """One decoder scale: (upsample +) modulated convs -> F_l; local flow warps A_l; the warped
    appearance is added to F_l (the U-Net skip); ToRGB adds this scale's RGB to the previous."""

    def __init__(self, cfg: Stage1Config, res: int):
        super().__init__()
        c = cfg.channels(res)
        if res == 4:
            self.convs = nn.ModuleList([StyledConv(c, c, cfg.style_dim)])
        else:
            self.convs = nn.ModuleList([StyledConv(cfg.channels(res // 2), c, cfg.style_dim, upsample=True),
                                        StyledConv(c, c, cfg.style_dim)])
        self.local_flow = LocalFlowModule(c, res, cfg.groups, cfg.mask_norm, cfg.flow_checkpoint)
        self.to_rgb = ToRGB(c, cfg.style_dim)

    def forward(self, x, style, appearance, rgb, coarse_flow=None):
        for conv in self.convs:
            x = conv(x, style)                                     # F_l (N, C_l, r, r)
        warped, masks, flow = self.local_flow(x, appearance, coarse_flow)
        x = x + warped.to(x.dtype)                                 # (N, C_l, r, r)
        return x, self.to_rgb(x, style, rgb), masks, flow


class MotionDecoder(nn.Module):
    """D: "StyleGAN2-like synthesis from a 4x4 constant, modulated by m, upsampling to the output
    size, U-Net skips from A_l, ToRGB at each scale (progressive)". One style modulates every
    layer; how m becomes the style is `motion_decoder`:

    - "directions" (the paper's appendix and LIA's latent axis, `latent_axis_basis` and
      `latent_axis_style`): a learned basis of D orthonormal directions q_i in the style space
      (QR of a learned (style_dim, D) matrix, as LIA does) and style = z_a + sum_i m_i q_i, where z_a is the appearance image's latent
      (the last appearance entry). Identity reaches the decoder through z_a and the skips.
    - "mapping": style = MLP(m) (n_mlp equalised layers, StyleGAN2's mapping network with its
      lr multiplier); identity enters only through the skips.
    """

    def __init__(self, cfg: Stage1Config):
        super().__init__()
        self.kind, self.coarse_to_fine = cfg.motion_decoder, cfg.coarse_to_fine
        if self.kind == "mapping":
            dims = [cfg.motion_dim] + [cfg.style_dim] * cfg.n_mlp
            self.mapping = nn.Sequential(*[EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, activation=True)
                                           for a, b in zip(dims[:-1], dims[1:])])
        else:
            self.directions = nn.Parameter(torch.empty(cfg.style_dim, cfg.motion_dim))
        self.const = nn.Parameter(torch.empty(1, cfg.channels(4), 4, 4))
        self.blocks = nn.ModuleList(SynthesisBlock(cfg, r) for r in cfg.resolutions)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.const)
        if self.kind == "directions":
            nn.init.normal_(self.directions)

    def basis(self) -> torch.Tensor:
        """The orthonormal motion directions Q (style_dim, D), Q^T Q = I ("directions" only)."""
        return latent_axis_basis(self.directions)

    def style(self, appearance: Sequence[torch.Tensor], motion: torch.Tensor) -> torch.Tensor:
        """(N, style_dim) style of each motion m (N, D)."""
        if self.kind == "mapping":
            return self.mapping(motion)
        if len(appearance) != len(self.blocks) + 1:
            raise ValueError("motion_decoder 'directions' needs the appearance latent z_a as the last "
                             "appearance entry (use the encoder's output as it is)")
        return latent_axis_style(appearance[-1], motion, self.basis())  # (N, S)

    def forward(self, appearance: Sequence[torch.Tensor], motion: torch.Tensor):
        n = motion.shape[0]                                        # motion m (N, D)
        if appearance[0].shape[0] != n:                            # one appearance, many motions
            if appearance[0].shape[0] != 1:
                raise ValueError(f"appearance batch {appearance[0].shape[0]} != motion batch {n}")
            appearance = [a.expand(n, *a.shape[1:]) for a in appearance]
        style = self.style(appearance, motion)                     # (N, S)
        x = self.const.expand(n, -1, -1, -1)                       # (N, C_4, 4, 4)
        rgb, masks, flows = None, [], []
        for block, a in zip(self.blocks, appearance):
            coarse = flows[-1] if flows and self.coarse_to_fine else None
            x, rgb, m, f = block(x, style, a, rgb, coarse)
            masks.append(m)                                        # (N, G, r, r)
            flows.append(f)                                        # (N, G, 2, r, r)
        return rgb, masks, flows                                   # rgb (N, 3, H, W)


#################################################################################
#                               Motion autoencoder                              #
#################################################################################

class MotionAutoencoder(nn.Module):
    """Stage 1: reconstruct the motion frame I_m from the appearance of I_a and the motion of I_m.

    forward(appearance, motion_image) -> {"recon": (N, 3, H, W), "motion": m (N, D),
    "masks": [(N, G, r, r) per scale, coarse to fine], "flows": [(N, G, 2, r, r) per scale]}.
    For inference: `encode(image)` once, then `decode(appearance, m)` for many motions (an
    appearance list of batch 1 is broadcast to the motion batch).
    """

    def __init__(self, cfg: Stage1Config):
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = VisualEncoder(cfg)
        self.decoder = MotionDecoder(cfg)
        self.initialize_weights()

    def initialize_weights(self):
        """Re-draw every weight (each layer also initialises itself when built)."""
        _init_stylegan(self)

    def encode(self, image: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """E_v: image (N, 3, H, W) -> (appearance [A_l (N, C_l, r, r), coarse to fine (+ z_a
        (N, style_dim) last with motion_decoder 'directions')], m (N, D))."""
        return self.encoder(image)

    def decode(self, appearance: Sequence[torch.Tensor], motion: torch.Tensor) -> torch.Tensor:
        """D: (appearance list, m (N, D)) -> image (N, 3, H, W)."""
        return self.decoder(appearance, motion)[0]

    def forward(self, appearance: torch.Tensor, motion_image: torch.Tensor) -> Dict[str, object]:
        n = appearance.shape[0]
        feats, m = self.encoder(torch.cat([appearance, motion_image]))  # one pass for both frames
        recon, masks, flows = self.decoder([f[:n] for f in feats], m[n:])
        return {"recon": recon, "motion": m[n:], "masks": masks, "flows": flows}


class Discriminator(nn.Module):
    """Small StyleGAN2-like discriminator: FromRGB -> residual down blocks to 4x4 ->
    (minibatch std) -> conv3x3 -> FC -> FC(1). Returns logits (N, 1)."""

    def __init__(self, cfg: Stage1Config):
        super().__init__()
        cfg.validate()
        res = cfg.resolutions
        self.from_rgb = EqualConv2d(3, cfg.channels(res[-1]), 1, activation=True)
        self.blocks = nn.Sequential(*[ResBlockDown(cfg.channels(r), cfg.channels(r // 2))
                                      for r in reversed(res[1:])])
        c4 = cfg.channels(4)
        self.mbstd = MinibatchStd(cfg.mbstd_group) if cfg.mbstd_group > 0 else nn.Identity()
        self.conv = EqualConv2d(c4 + (1 if cfg.mbstd_group > 0 else 0), c4, 3, activation=True)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)
        self.initialize_weights()

    def initialize_weights(self):
        _init_stylegan(self)

    def forward(self, image):                                      # (N, 3, H, W)
        x = self.blocks(self.from_rgb(image))                      # (N, C_4, 4, 4)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))                     # (N, 1)


def _init_stylegan(root: nn.Module):
    """Re-draw every weight below `root` with its layer's own `reset_parameters` (equalised-lr
    init: weights N(0, init_std^2 / lr_mul^2), biases at their init value: 1 for the modulation
    affines, so styles start as identity scales; 0 elsewhere)."""
    for mod in root.modules():
        if mod is not root and isinstance(mod, SELF_INITIALISING):
            mod.reset_parameters()


SELF_INITIALISING = (EqualLinear, EqualConv2d, ModulatedConv2d, StyledConv, ToRGB, MotionDecoder)


#################################################################################
#                                    Registry                                   #
#################################################################################

STAGE1_CONFIGS: Dict[str, Stage1Config] = {
    # tests: 64x64, 16-32 channels, the paper's G=16
    "S1-tiny": Stage1Config(image_size=64, channel_base=1024, channel_max=32, style_dim=64,
                            n_mlp=2, groups=16),
    "S1-256": Stage1Config(image_size=256),
    "S1-512": Stage1Config(image_size=512),
}


def _resolve(name_or_cfg: Union[str, Stage1Config]) -> Stage1Config:
    if isinstance(name_or_cfg, Stage1Config):
        return name_or_cfg
    if name_or_cfg not in STAGE1_CONFIGS:
        raise ConfigError(f"unknown stage-1 model {name_or_cfg!r}; known: {sorted(STAGE1_CONFIGS)}")
    return replace(STAGE1_CONFIGS[name_or_cfg])


def build_stage1(name_or_cfg: Union[str, Stage1Config]) -> MotionAutoencoder:
    """A motion autoencoder from a registry name ("S1-tiny", "S1-256", "S1-512") or a config."""
    return MotionAutoencoder(_resolve(name_or_cfg))


def build_discriminator(name_or_cfg: Union[str, Stage1Config]) -> Discriminator:
    return Discriminator(_resolve(name_or_cfg))
