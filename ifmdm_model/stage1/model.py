"""Stage 1 of IF-MDM: the motion autoencoder (visual encoder E_v + decoder D with local flow).

One file for the model family, DiT style: building blocks, the paper's modules, the model,
the discriminator, then a registry of named sizes (`STAGE1_CONFIGS`, `build_stage1`).

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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ifmdm_data.errors import ConfigError

MASK_NORMS = ("spatial", "separable", "paper")
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
#                         Building blocks (StyleGAN2-like)                      #
#################################################################################

def scaled_lrelu(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's leaky ReLU (slope 0.2) with gain sqrt(2), keeping unit variance."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: w ~ N(0, 1/lr_mul^2), scaled by lr_mul/sqrt(fan_in)."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim)) if bias else None
        self.bias_init, self.lr_mul, self.activation = bias_init, lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, std=1.0 / self.lr_mul)
        if self.bias is not None:
            nn.init.constant_(self.bias, self.bias_init / self.lr_mul)

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        out = F.linear(x, self.weight * self.scale, bias)
        return scaled_lrelu(out) if self.activation else out


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate (optionally grouped, optionally with activation)."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, groups=1, bias=True, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch // groups, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        self.stride, self.padding, self.groups, self.activation = stride, kernel // 2, groups, activation
        self.scale = 1.0 / math.sqrt(in_ch // groups * kernel * kernel)
        self.init_std = 1.0                                        # of the stored weights
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, std=self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        out = F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding,
                       groups=self.groups)
        return scaled_lrelu(out) if self.activation else out


class Downsample(nn.Module):
    """Anti-aliased 2x downsampling: the [1, 3, 3, 1] binomial blur with stride 2 (depthwise)."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)  # (1, 1, 4, 4)

    def forward(self, x):                                          # (N, C, H, W)
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), stride=2, groups=c)  # (N, C, H/2, W/2)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution with weight demodulation, conditioned on a style vector.

    Computed as modulate-input -> shared conv -> demodulate-output (StyleGAN2's non-fused form,
    equal to scaling the weights per sample): w'_ijk = s_i w_ijk, w'' = w' / sqrt(sum w'^2 + eps).
    The modulation and demodulation coefficients are computed in float32.
    """

    def __init__(self, in_ch, out_ch, kernel, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)   # style -> per-channel scales s
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.upsample, self.padding = demodulate, upsample, kernel // 2
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight)

    def forward(self, x, style):                                   # x (N, C_in, H, W), style (N, S)
        s = self.affine(style).float()                             # (N, C_in)
        weight = self.weight * self.scale                          # (C_out, C_in, k, k)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = x * s.to(x.dtype)[:, :, None, None]
        out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)  # (N, C_out, H', W')
        if self.demodulate:
            wsq = weight.float().pow(2).sum(dim=(2, 3))             # (C_out, C_in)
            d = torch.rsqrt(s.pow(2) @ wsq.t() + 1e-8)              # (N, C_out)
            out = out * d.to(out.dtype)[:, :, None, None]
        return out


class StyledConv(nn.Module):
    """Modulated 3x3 conv + bias + leaky ReLU (no noise inputs: the decoder reconstructs)."""

    def __init__(self, in_ch, out_ch, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def reset_parameters(self):
        nn.init.zeros_(self.bias)

    def forward(self, x, style):
        out = self.conv(x, style)
        return scaled_lrelu(out + self.bias[None, :, None, None].to(out.dtype))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation), summed with the upsampled previous RGB."""

    def __init__(self, in_ch, style_dim):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def reset_parameters(self):
        nn.init.zeros_(self.bias)

    def forward(self, x, style, skip=None):                        # x (N, C, H, W)
        rgb = self.conv(x, style)
        rgb = rgb + self.bias[None, :, None, None].to(rgb.dtype)  # (N, 3, H, W)
        if skip is not None:
            rgb = rgb + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return rgb


class ResBlockDown(nn.Module):
    """Residual downsampling block: conv3x3 -> blur-down -> conv3x3, skip: blur-down -> conv1x1."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3, activation=True)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3, activation=True)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)
        self.down = Downsample()

    def forward(self, x):                                          # (N, C_in, H, W)
        h = self.conv1(self.down(self.conv0(x)))
        return (h + self.skip(self.down(x))) / math.sqrt(2.0)     # (N, C_out, H/2, W/2)


class MinibatchStd(nn.Module):
    """StyleGAN's minibatch standard deviation feature (one extra channel)."""

    def __init__(self, group_size=4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):                                          # (N, C, H, W)
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0)
        y = x.float().reshape(g, n // g, c, h, w)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (N/g,)
        y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)                            # (N, C + 1, H, W)


#################################################################################
#                      Visual encoder E_v and local flow module                 #
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


def log_spatial_masks(logits: torch.Tensor, mode: str = "spatial") -> torch.Tensor:
    """Log of the spatially normalised masks: (N, G, H, W) logits -> (N, G, H, W), each
    (n, g) map summing to 1 over (H, W) after exp.

    - "spatial" (default): a 2-D softmax over the H*W pixels; a group can put all its mass
      anywhere, as compact as the local flow loss asks.
    - "separable": softmax_W(M) * softmax_H(M) (the row softmax times the column softmax),
      renormalised over H*W: local as well (a peak must win its row and its column).
    - "paper": the paper's literal `softmax(softmax(M, dim=-1), dim=-2)` (width, then height),
      divided by W to be a distribution over the H*W pixels. Kept as an ablation: it cannot
      localise. The inner softmax maps each row into (0, 1), so the outer softmax over a column
      sees inputs that differ by less than 1: every column keeps the same mass 1/W and values
      within a column differ by at most a factor e (a group holds at most ~0.26 of a quadrant;
      measured in tests/test_learning.py).
    The choice of default is the learning benchmark's (README "Model").
    """
    n, g, h, w = logits.shape
    if mode == "spatial":
        return torch.log_softmax(logits.reshape(n, g, h * w), dim=-1).reshape(n, g, h, w)
    if mode == "separable":
        joint = torch.log_softmax(logits, dim=-1) + torch.log_softmax(logits, dim=-2)
        return torch.log_softmax(joint.reshape(n, g, h * w), dim=-1).reshape(n, g, h, w)
    if mode == "paper":
        return torch.log_softmax(torch.softmax(logits, dim=-1), dim=-2) - math.log(w)
    raise ValueError(f"mask normalisation must be one of {MASK_NORMS}, got {mode!r}")


def normalise_masks(logits: torch.Tensor, mode: str = "spatial") -> torch.Tensor:
    """The masks M_l^g: each group's map is a distribution over space (sums to 1 over H, W)."""
    return log_spatial_masks(logits, mode).exp()


class LocalFlowModule(nn.Module):
    """Local flow module at one decoder scale l.

    Paper (DESIGN.md's summary): "grouped convolution with G_l groups on the decoder feature F_l; each group g
    predicts a warping field W_l^g and a mask M_l^g normalised by
    softmax(softmax(M, dim=-1), dim=-2); A_l is warped by each group's field and the results
    are combined by the masks."

    Mapping to code:
    - grouped convolution: two 3x3 convs with `groups=G` on F_l (C -> C -> 3G); group g sees
      only its C/G channels of F_l and outputs (dx, dy, mask logit) = channels 3g..3g+2.
    - W_l^g: tanh(dx, dy), an offset in grid_sample's normalised coordinates, added to the
      base meshgrid of pixel centres (a buffer); zero offset is the identity warp. With
      `coarse_flow` (the decoder passes the scale below's flows when `coarse_to_fine` is on;
      not in the paper, off by default) the offset is a residual on top of the upsampled
      coarser flow of the same group (a bilinear warp only gives a gradient for
      misalignments under about a pixel; measured: no gain at learning_bench's scale, and
      the random initial flows add up over the scales).
    - M_l^g: `log_spatial_masks` (the paper's width-then-height softmax, or a 2D softmax),
      a distribution over space for each group: this is what the local flow loss keeps compact.
    - combination: the paper's softmax is over space, so it does not say how groups share a
      pixel. We weight group g at pixel p by M^g(p) / sum_g' M^g'(p) (= softmax over groups of
      log M^g): M^g is "where group g acts", the weights are "which group acts at p" (Bayes
      with a uniform prior over groups). They sum to 1 over groups at every pixel, for any G
      (G = 1 gives weight 1: a single global flow).
    - output: sum_g weight_g(p) * A_l(p + W_l^g(p)), same shape as A_l.
    The warps run in float32 even under autocast (bf16 cannot address pixels of a 512 grid).
    """

    def __init__(self, channels: int, resolution: int, groups: int, mask_norm: str = "spatial",
                 use_checkpoint: bool = False):
        super().__init__()
        self.groups, self.resolution, self.mask_norm = groups, resolution, mask_norm
        self.use_checkpoint = use_checkpoint
        self.hidden = EqualConv2d(channels, channels, 3, groups=groups, activation=True)
        self.head = EqualConv2d(channels, 3 * groups, 3, groups=groups)
        # small flow/mask head: near-identity warps and near-uniform masks at the start, but not
        # zero, so every group's conv gets a gradient from the first step
        self.head.init_std = 0.1
        self.head.reset_parameters()
        # pixel centres in [-1, 1] (align_corners=False), last dim (x, y) as grid_sample wants
        c = (torch.arange(resolution, dtype=torch.float32) * 2 + 1) / resolution - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        self.register_buffer("base_grid", torch.stack([gx, gy], dim=-1)[None, None],
                             persistent=False)                     # (1, 1, H, W, 2)

    def forward(self, feature, appearance, coarse_flow=None):  # F_l, A_l (N, C, H, W)
        n, _, h, w = feature.shape
        g = self.groups
        out = self.head(self.hidden(feature)).float().reshape(n, g, 3, h, w)
        flow = torch.tanh(out[:, :, :2])                           # (N, G, 2, H, W) W_l^g
        if coarse_flow is not None:                                # (N, G, 2, H/2, W/2): refine it
            up = F.interpolate(coarse_flow.reshape(n, g * 2, h // 2, w // 2), size=(h, w),
                               mode="bilinear", align_corners=False)
            flow = flow + up.reshape(n, g, 2, h, w)
        log_masks = log_spatial_masks(out[:, :, 2], self.mask_norm)  # (N, G, H, W)
        weights = torch.softmax(log_masks, dim=1)                  # (N, G, H, W), sums to 1 over G
        if self.use_checkpoint and torch.is_grad_enabled():
            warped = checkpoint(self.warp_and_combine, appearance, flow, weights, use_reentrant=False)
        else:
            warped = self.warp_and_combine(appearance, flow, weights)
        return warped, log_masks.exp(), flow                       # (N, C, H, W), (N, G, H, W), (N, G, 2, H, W)

    def warp_and_combine(self, appearance, flow, weights):
        n, c, h, w = appearance.shape
        g = self.groups
        dev = appearance.device.type
        ctx = torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else nullcontext()
        with ctx:
            grid = self.base_grid.float() + flow.float().permute(0, 1, 3, 4, 2)  # (N, G, H, W, 2)
            # the G grids stacked along the output height: one grid_sample, no copy of A_l
            warped = F.grid_sample(appearance.float(), grid.reshape(n, g * h, w, 2),
                                   mode="bilinear", padding_mode="zeros",
                                   align_corners=False)    # (N, C, G*H, W)
            warped = warped.reshape(n, c, g, h, w)                 # (N, C, G, H, W)
            return (warped * weights.float()[:, None]).sum(dim=2)  # (N, C, H, W)


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

    - "directions" (the paper's appendix and LIA's latent axis): a learned basis of D
      orthonormal directions q_i in the style space (QR of a learned (style_dim, D) matrix, as
      LIA does) and style = z_a + sum_i m_i q_i, where z_a is the appearance image's latent
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
        q, r = torch.linalg.qr(self.directions.float())
        d = torch.diagonal(r)
        return q * torch.where(d < 0, -1.0, 1.0)[None]             # unique: positive diag(R)

    def style(self, appearance: Sequence[torch.Tensor], motion: torch.Tensor) -> torch.Tensor:
        """(N, style_dim) style of each motion m (N, D)."""
        if self.kind == "mapping":
            return self.mapping(motion)
        if len(appearance) != len(self.blocks) + 1:
            raise ValueError("motion_decoder 'directions' needs the appearance latent z_a as the last "
                             "appearance entry (use the encoder's output as it is)")
        z = appearance[-1]                                         # (N, S)
        return z + (motion.float() @ self.basis().t()).to(z.dtype)  # (N, S)

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
