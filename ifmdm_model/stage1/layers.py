"""Stage-1 building blocks in the StyleGAN2 style: equalised-learning-rate layers, modulated convolutions.

The layers the motion autoencoder (`ifmdm_model.stage1.model`), its local flow module
(`ifmdm_model.stage1.local_flow`) and the discriminator are made of, as in StyleGAN2 (Karras et
al. 2020): equalised learning rate (weights ~ N(0, 1), scaled at run time by 1/sqrt(fan_in), so
train with Adam), the modulated convolution with weight demodulation, ToRGB, the [1, 3, 3, 1]
blur downsampling, residual down blocks and the minibatch-std feature. Layers that initialise
themselves have a `reset_parameters` (the model re-draws every weight through it).

Conventions: images and features are (N, C, H, W); styles (N, style_dim); every tensor follows
the device of the module's parameters; blur kernels are non-persistent buffers. Pure PyTorch:
CPU and CUDA, float32 or under bf16/fp16 autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
