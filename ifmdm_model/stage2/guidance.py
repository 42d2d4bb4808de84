"""Stage 2's conditioning modules (paper Sec. 3.2): framewise temporal guidance, motion statistics guidance, the motion hint.

Each turns one condition into embeddings of the DiT's hidden size, with a learned null
embedding that replaces it where the condition is dropped (per sample; the drops make
classifier-free guidance possible, `ifmdm_model.stage2.diffusion.cfg_model_fn`):

- `FramewiseTemporalGuidance`: speech features s_f (N, T, S) -> the per-frame adaLN
  conditioning c (N, T, H) (or one vector per sequence, (N, 1, H), the paper's "global"
  ablation) and the per-frame speech projection (N, T, H) the blocks add into their residual;
- `MotionStatisticsGuidance`: the clip's motion mean m_mu and std m_sigma (N, D) -> (N, H), or
  two tokens (N, 2, H);
- `MotionHint`: the motion hint m' (N, D) -> (N, H).

The model that combines them is `ifmdm_model.stage2.model.MotionDiT`. Every tensor follows the
device of the module's parameters.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

MODULATIONS = ("framewise", "global")


def _select(drop: Optional[torch.Tensor], null: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """emb where not dropped, the learned null embedding where dropped (per sample)."""
    if drop is None:
        return emb
    shape = (-1,) + (1,) * (emb.ndim - 1)
    return torch.where(drop.view(shape), null.to(emb.dtype), emb)


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


#################################################################################
#                       The paper's conditioning modules                        #
#################################################################################

class FramewiseTemporalGuidance(nn.Module):
    """Framewise temporal guidance: "per-frame adaLN modulation from (t embedding + projected
    s_f) and the speech projection added into each self-attention's residual input" (DESIGN.md,
    stage 2).

    Projects the speech features s_f (N, T, S) to the hidden size (the learned null speech
    embedding replaces them where `drop` is set: classifier-free guidance) and builds the
    conditioning that drives every adaLN: c_f = t_emb + proj(s_f) + clip (N, T, H) with
    modulation="framewise". With modulation="global" (the paper's ablation, "one vector per
    sequence ... much worse") c = t_emb + mean_f proj(s_f) + clip, (N, 1, H), identical for every
    frame. The per-frame speech projection (N, T, H) is returned too: the blocks add it into
    their residual input when `speech_residual` is on.
    """

    def __init__(self, speech_dim: int, hidden: int, modulation: str = "framewise"):
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        self.modulation = modulation
        self.proj = _mlp(speech_dim, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))                  # null speech embedding

    def forward(self, t_emb, speech, drop=None, clip_emb=None) -> Tuple[torch.Tensor, torch.Tensor]:
        # t_emb (N, H); speech (N, T, S); drop (N,) bool or None; clip_emb (N, H) or None
        s = _select(drop, self.null, self.proj(speech))                # (N, T, H)
        base = t_emb if clip_emb is None else t_emb + clip_emb         # (N, H)
        if self.modulation == "framewise":
            c = base[:, None, :] + s                                   # (N, T, H)
        else:
            c = (base + s.mean(dim=1))[:, None, :]                     # (N, 1, H)
        return c, s


class MotionStatisticsGuidance(nn.Module):
    """Motion statistics guidance: the clip's "motion mean m_mu and std m_sigma (per clip)"
    (DESIGN.md, stage 2). At inference "m_mu defaults to m' (or the previous chunk's mean) and
    m_sigma to 0.1 (lower: calmer, better lip sync; higher: more expressive)". Dropped (learned
    null embedding) with probability p_drop_stats.

    tokens=False (conditioning="sum"): [m_mu, m_sigma] embedded jointly to (N, H), added as a
    residual connection to the conditioning vector of every adaLN and to every frame token.
    tokens=True (conditioning="tokens"): m_mu and m_sigma embedded separately to two tokens
    (N, 2, H), each with its own null embedding (both dropped together).
    """

    def __init__(self, motion_dim: int, hidden: int, tokens: bool = False):
        super().__init__()
        self.tokens = tokens
        if tokens:
            self.mu = _mlp(motion_dim, hidden)
            self.sigma = _mlp(motion_dim, hidden)
            self.null = nn.Parameter(torch.zeros(2, hidden))
        else:
            self.mlp = _mlp(2 * motion_dim, hidden)
            self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, m_mu, m_sigma, drop=None) -> torch.Tensor:       # (N, D), (N, D) -> (N, H) | (N, 2, H)
        if self.tokens:
            return _select(drop, self.null, torch.stack([self.mu(m_mu), self.sigma(m_sigma)], dim=1))
        return _select(drop, self.null, self.mlp(torch.cat([m_mu, m_sigma], dim=-1)))


class MotionHint(nn.Module):
    """Motion hint m': "motion hint m' (previous frame)" (DESIGN.md, stage 2); at inference "the
    first chunk's hint is m' (or a learned vector); each next chunk's hint is the last generated
    motion". Embedded to (N, H): added to the adaLN conditioning and to every frame token
    (conditioning="sum") or used as one extra token ("tokens"); the learned null embedding
    (probability p_drop_hint in training) is that "learned vector".
    """

    def __init__(self, motion_dim: int, hidden: int):
        super().__init__()
        self.mlp = _mlp(motion_dim, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, hint, drop=None) -> torch.Tensor:                # (N, D) -> (N, H)
        return _select(drop, self.null, self.mlp(hint))
