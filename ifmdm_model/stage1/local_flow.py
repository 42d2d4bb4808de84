"""The paper's local flow module (IF-MDM Sec. 3.1, Fig. 4): grouped warps of the appearance, combined by masks.

At every decoder scale l, `LocalFlowModule` predicts from the decoder feature F_l, for each of
G groups, a warping field W_l^g and a mask M_l^g (normalised over space by `log_spatial_masks`,
one of `MASK_NORMS`), warps the encoder's appearance tensor A_l by each field and combines the
warped copies by the masks. `normalise_masks` gives the masks themselves (what the local flow
loss, `ifmdm_model.stage1.losses.local_flow_loss`, keeps compact). The decoder that calls it
is `ifmdm_model.stage1.model.SynthesisBlock`.

Conventions: features (N, C, H, W); masks (N, G, H, W), each (n, g) map summing to 1 over
(H, W); flows (N, G, 2, H, W), offsets in grid_sample's normalised coordinates. The warps run
in float32 even under bf16/fp16 autocast.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ifmdm_model.stage1.layers import EqualConv2d

MASK_NORMS = ("spatial", "separable", "paper")


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
