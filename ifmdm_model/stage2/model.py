"""Stage 2 of IF-MDM: the implicit motion generator M, a DiT over motion frames.

One file for the model family, DiT style: config, embedders, the transformer block, the model
(with its weight initialisation in one method), then a registry of named sizes
(`STAGE2_CONFIGS`, `build_stage2`). The paper's conditioning modules (framewise temporal
guidance, motion statistics guidance, the motion hint) live in `ifmdm_model.stage2.guidance`;
the diffusion process (schedule, loss, samplers, classifier-free guidance) lives apart, in
`ifmdm_model.stage2.diffusion`.

Paper (IF-MDM, as summarised in DESIGN.md, "Model", stage 2): "Input: noised motion sequence
{m_f^t}, n_f = 32 frames, D = 20; conditions: speech features s_f per frame, motion mean m_mu
and std m_sigma (per clip), motion hint m' (previous frame)." "Framewise temporal guidance:
per-frame adaLN modulation from (t embedding + projected s_f) and the speech projection added
into each self-attention's residual input. Global modulation (one vector per sequence) is the
ablation baseline; it was much worse." "Training: DDPM noise prediction (1000 steps); speech
dropped (null embedding) with some probability so classifier-free guidance works."

Tokens: one per frame, the noised motion projected to `hidden` plus a 1-D sinusoidal position
code (cached up to `max_frames`, computed on the fly beyond). The clip-level conditions (motion
mean m_mu, std m_sigma, hint m') enter in one of two ways (`conditioning`):

- "sum" (default): their embeddings are summed into every frame token and into the adaLN
  conditioning vector c (a residual path from the clip-level conditions everywhere);
- "tokens" (the paper's concatenation): hint, m_mu and m_sigma each become one extra token
  (own MLP, own learned null embedding) prepended to the frame tokens; attention reads them,
  c does not contain them, and the output keeps only the frame tokens.

The conditioning vector c that drives every adaLN is t + speech (+ statistics + hint with
"sum"): per frame (N, T, H) with modulation="framewise", or one vector per sequence (N, 1, H)
with modulation="global" (speech averaged over frames), the paper's ablation:

    build_stage2("M2-A0", modulation="global", speech_residual=False)

`motion_stats` records what m_mu / m_sigma were computed over in training: "clip" (the whole
clip, from the motion sidecar) or "window" (the training window itself, as the authors' code
does); the loader computes them (`ifmdm_data.loaders.stage2_loader(motion_stats=...)`), the
model only stores the choice so that a checkpoint says how its statistics are meant.

Conventions: motion is (N, T, D), speech (N, T, S), per-clip conditions (N, D); every tensor
follows the device of the module's parameters; runs in float32 on CPU and under bf16/fp16
autocast on CUDA (attention is F.scaled_dot_product_attention).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ifmdm_data.errors import ConfigError
from ifmdm_model.stage2.guidance import (MODULATIONS, FramewiseTemporalGuidance, MotionHint,
                                         MotionStatisticsGuidance)

CONDITIONINGS = ("sum", "tokens")
MOTION_STATS = ("clip", "window")
DropFlag = Union[None, bool, torch.Tensor]


#################################################################################
#                                    Config                                     #
#################################################################################

@dataclass
class Stage2Config:
    """Sizes and switches of the motion DiT. Defaults are the paper's data sizes and "M2-A0"."""
    motion_dim: int = 20            # D: stage-1 motion vector size
    speech_dim: int = 80            # S: 80 for log-mel, 768 for wav2vec2 (read it from the shard metadata)
    n_frames: int = 32              # n_f: frames per training window / inference chunk (any T works)
    hidden: int = 512
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0
    modulation: str = "framewise"   # "framewise": adaLN per frame; "global": one per sequence (ablation)
    speech_residual: bool = True    # add the projected speech into each block's residual input
    conditioning: str = "sum"       # "sum": hint/stats embeddings added to every token and to c;
                                    # "tokens": one extra token each (the paper's concatenation)
    motion_stats: str = "clip"      # m_mu / m_sigma of the training data: per clip, or per "window"
    p_drop_speech: float = 0.1      # per-sample training drop probabilities (null embeddings), for CFG
    p_drop_stats: float = 0.1
    p_drop_hint: float = 0.1
    freq_dim: int = 256             # width of the sinusoidal timestep code fed to the t MLP
    max_frames: int = 256           # position codes cached up to this length (longer: computed on the fly)

    def validate(self, where: str = "Stage2Config") -> "Stage2Config":
        def bad(key, why):
            raise ConfigError(f"{where}: '{key}' {why}")
        for key in ("motion_dim", "speech_dim", "n_frames", "hidden", "depth", "heads", "max_frames"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(key, f"must be an integer >= 1, got {v!r}")
        if self.hidden % self.heads:
            bad("heads", f"={self.heads} must divide hidden={self.hidden}")
        if self.freq_dim < 2 or self.freq_dim % 2:
            bad("freq_dim", f"must be an even integer >= 2, got {self.freq_dim!r}")
        if not self.mlp_ratio > 0:
            bad("mlp_ratio", f"must be > 0, got {self.mlp_ratio!r}")
        if self.modulation not in MODULATIONS:
            bad("modulation", f"must be one of {MODULATIONS}, got {self.modulation!r}")
        if not isinstance(self.speech_residual, bool):
            bad("speech_residual", f"must be true or false, got {self.speech_residual!r}")
        if self.conditioning not in CONDITIONINGS:
            bad("conditioning", f"must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.motion_stats not in MOTION_STATS:
            bad("motion_stats", f"must be one of {MOTION_STATS}, got {self.motion_stats!r}")
        for key in ("p_drop_speech", "p_drop_stats", "p_drop_hint"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                bad(key, f"must be a probability in [0, 1], got {v!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "Stage2Config") -> "Stage2Config":
        """The config a checkpoint's `model_config` records. Keys it lacks (checkpoints written
        before the key existed, e.g. `conditioning`, `motion_stats`) take the dataclass
        default, which is the behaviour those checkpoints were trained with."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d).validate(where)


#################################################################################
#                               Embedding layers                                #
#################################################################################

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift; shift/scale are (N, T, H) or (N, 1, H), broadcast over T."""
    return x * (1 + scale) + shift


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """1-D sine/cosine position codes (Vaswani et al. 2017): (length, dim), float32."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    out = torch.zeros(length, dim, device=device)
    out[:, 0:2 * half:2] = torch.sin(pos * freqs)
    out[:, 1:2 * half:2] = torch.cos(pos * freqs)
    return out                                                          # (T, H)


class TimestepEmbedder(nn.Module):
    """Diffusion time t -> (N, H): a sinusoidal code of t, then Linear-SiLU-Linear (as in DiT)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def timestep_code(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        args = t.float()[:, None] * torch.exp(-math.log(max_period) * k / half)[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)    # (N, freq_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_code(t, self.freq_dim))          # (N, H)


#################################################################################
#                                 Core DiT model                                #
#################################################################################

class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention over frames (F.scaled_dot_product_attention)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):                                              # (N, T, H)
        n, t, h = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])    # (N, heads, T, H/heads)
        return self.proj(out.transpose(1, 2).reshape(n, t, h))          # (N, T, H)


class MotionDiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning; c is (N, T, H) framewise or (N, 1, H) global.
    With `speech_residual`, the per-frame speech projection (through a per-block linear layer) is
    added into the residual stream before the self-attention."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, speech_residual: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"),
                                 nn.Linear(inner, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.speech_in = nn.Linear(hidden, hidden) if speech_residual else None

    def modulation(self, c) -> Tuple[torch.Tensor, ...]:
        """shift/scale/gate for attention and MLP: six tensors shaped like c ((N, T|1, H))."""
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def forward(self, x, c, s=None):                                   # x (N, T, H), s (N, T, H)
        if self.speech_in is not None:
            x = x + self.speech_in(s)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x                                                       # (N, T, H)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map to the motion dimension: eps (N, T, D)."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class MotionDiT(nn.Module):
    """The implicit motion generator M: predicts the noise eps of a noised motion sequence.

    forward(x_t (N, T, D), t (N,), speech (N, T, S), m_mu (N, D), m_sigma (N, D), hint (N, D),
    drop_speech=None, drop_stats=None, drop_hint=None) -> eps (N, T, D).

    A drop flag is a bool tensor (N,) (True: use that condition's learned null embedding for
    that sample), a Python bool for the whole batch, or None: in train mode None draws the drops
    with the config's probabilities (global RNG; pass flags from `sample_drops(n, generator)`
    for a seeded run); in eval mode None keeps every condition. `speech`, the statistics pair
    or `hint` may be None: that condition is dropped for every sample.

    With conditioning="tokens" the sequence the blocks see is [hint, m_mu, m_sigma, frame_1..T]
    (N, 3 + T, H); the condition tokens get adaLN from t alone (framewise) or the shared
    vector (global) and no speech residual; the final layer reads the frame tokens only.
    """

    def __init__(self, cfg: Stage2Config):
        super().__init__()
        self.cfg = cfg.validate()
        h = cfg.hidden
        self.x_embed = nn.Linear(cfg.motion_dim, h)
        self.t_embed = TimestepEmbedder(h, cfg.freq_dim)
        self.temporal_guidance = FramewiseTemporalGuidance(cfg.speech_dim, h, cfg.modulation)
        self.stats_guidance = MotionStatisticsGuidance(cfg.motion_dim, h, tokens=cfg.conditioning == "tokens")
        self.motion_hint = MotionHint(cfg.motion_dim, h)
        self.blocks = nn.ModuleList(MotionDiTBlock(h, cfg.heads, cfg.mlp_ratio, cfg.speech_residual)
                                    for _ in range(cfg.depth))
        self.final = FinalLayer(h, cfg.motion_dim)
        self.register_buffer("pos", sinusoidal_positions(cfg.max_frames, h), persistent=False)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's init: Xavier-uniform linears with zero bias, N(0, 0.02) for the t MLP and the null
        embeddings; adaLN-Zero: every adaLN modulation layer, every per-block speech input and
        the final linear start at zero, so each block starts as the identity and eps = 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for null in (self.temporal_guidance.null, self.stats_guidance.null, self.motion_hint.null):
            nn.init.normal_(null, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if block.speech_in is not None:
                nn.init.zeros_(block.speech_in.weight)
                nn.init.zeros_(block.speech_in.bias)
        for layer in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def positions(self, length: int) -> torch.Tensor:
        if length <= self.pos.shape[0]:
            return self.pos[:length]                                   # (T, H)
        return sinusoidal_positions(length, self.cfg.hidden, device=self.pos.device)

    def sample_drops(self, n: int, generator: Optional[torch.Generator] = None,
                     device=None) -> Dict[str, torch.Tensor]:
        """Training drops: {"drop_speech", "drop_stats", "drop_hint"}, bool (n,), each drawn with
        the config's probability (from `generator` when given, on its device, then moved)."""
        dev = generator.device if generator is not None else (device or self.pos.device)
        u = torch.rand(3, n, generator=generator, device=dev).to(device or self.pos.device)
        p = (self.cfg.p_drop_speech, self.cfg.p_drop_stats, self.cfg.p_drop_hint)
        return {k: u[i] < p[i] for i, k in enumerate(("drop_speech", "drop_stats", "drop_hint"))}

    def _flag(self, name: str, flag: DropFlag, n: int, p: float, device) -> Optional[torch.Tensor]:
        if flag is None:
            return torch.rand(n, device=device) < p if self.training and p > 0 else None
        if isinstance(flag, bool):
            return torch.full((n,), flag, dtype=torch.bool, device=device)
        if not isinstance(flag, torch.Tensor) or flag.shape != (n,):
            raise ValueError(f"{name} must be None, a bool or a bool tensor of shape ({n},), "
                             f"got {getattr(flag, 'shape', flag)!r}")
        return flag.to(device=device, dtype=torch.bool)

    def _check(self, name, v, shape):
        if v.ndim != len(shape) or any(s is not None and a != s for a, s in zip(v.shape, shape)):
            want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(v.shape)}")

    def conditioning(self, x_t, t, speech, m_mu, m_sigma, hint, drop_speech=None, drop_stats=None,
                     drop_hint=None) -> Dict[str, torch.Tensor]:
        """The conditioning of a forward pass: {"c": adaLN input (N, T, H) framewise or (N, 1, H)
        global, "speech": per-frame speech projection (N, T, H), "t": timestep embedding (N, H),
        and "clip": statistics + hint embedding (N, H) with conditioning="sum", or "tokens":
        [hint, m_mu, m_sigma] tokens (N, 3, H) with "tokens"}. Checks shapes; resolves the drop
        flags (see the class docstring)."""
        cfg = self.cfg
        if x_t.ndim != 3 or x_t.shape[-1] != cfg.motion_dim:
            raise ValueError(f"x_t must be (N, T, {cfg.motion_dim}), got {tuple(x_t.shape)}")
        n, length, dev = x_t.shape[0], x_t.shape[1], x_t.device
        self._check("t", t, (n,))
        if speech is None:
            speech, drop_speech = x_t.new_zeros(n, length, cfg.speech_dim), True
        self._check("speech", speech, (n, length, cfg.speech_dim))
        if (m_mu is None) != (m_sigma is None):
            raise ValueError("m_mu and m_sigma must be given together (or both None: dropped)")
        if m_mu is None:
            m_mu = m_sigma = x_t.new_zeros(n, cfg.motion_dim)
            drop_stats = True
        self._check("m_mu", m_mu, (n, cfg.motion_dim))
        self._check("m_sigma", m_sigma, (n, cfg.motion_dim))
        if hint is None:
            hint, drop_hint = x_t.new_zeros(n, cfg.motion_dim), True
        self._check("hint", hint, (n, cfg.motion_dim))
        drop_speech = self._flag("drop_speech", drop_speech, n, cfg.p_drop_speech, dev)
        drop_stats = self._flag("drop_stats", drop_stats, n, cfg.p_drop_stats, dev)
        drop_hint = self._flag("drop_hint", drop_hint, n, cfg.p_drop_hint, dev)

        t_emb = self.t_embed(t)                                        # (N, H)
        stats = self.stats_guidance(m_mu, m_sigma, drop_stats)         # (N, H) | (N, 2, H)
        hint_emb = self.motion_hint(hint, drop_hint)                   # (N, H)
        if cfg.conditioning == "tokens":
            c, s = self.temporal_guidance(t_emb, speech, drop_speech)
            return {"c": c, "speech": s, "t": t_emb,
                    "tokens": torch.cat([hint_emb[:, None, :], stats], dim=1)}  # (N, 3, H)
        clip = stats + hint_emb                                        # (N, H)
        c, s = self.temporal_guidance(t_emb, speech, drop_speech, clip)
        return {"c": c, "speech": s, "t": t_emb, "clip": clip}

    def forward(self, x_t, t, speech, m_mu, m_sigma, hint, drop_speech: DropFlag = None,
                drop_stats: DropFlag = None, drop_hint: DropFlag = None) -> torch.Tensor:
        cond = self.conditioning(x_t, t, speech, m_mu, m_sigma, hint, drop_speech, drop_stats, drop_hint)
        c, s = cond["c"], cond["speech"]                               # (N, T|1, H), (N, T, H)
        x = self.x_embed(x_t) + self.positions(x_t.shape[1])           # (N, T, H)
        if "tokens" not in cond:                                       # conditioning="sum"
            x = x + cond["clip"][:, None, :]
            for block in self.blocks:
                x = block(x, c, s)
            return self.final(x, c)                                    # (N, T, D)
        k = cond["tokens"].shape[1]                                    # conditioning="tokens"
        x = torch.cat([cond["tokens"].to(x.dtype), x], dim=1)          # (N, 3 + T, H)
        s_all = torch.cat([s.new_zeros(s.shape[0], k, s.shape[2]), s], dim=1)
        c_all = c
        if self.cfg.modulation == "framewise":                         # condition tokens: t alone
            c_all = torch.cat([cond["t"][:, None, :].expand(-1, k, -1).to(c.dtype), c], dim=1)
        for block in self.blocks:
            x = block(x, c_all, s_all)
        return self.final(x[:, k:], c)                                 # (N, T, D): frame tokens only


#################################################################################
#                              Registry of sizes                                #
#################################################################################

STAGE2_CONFIGS: Dict[str, Stage2Config] = {
    "M2-tiny": Stage2Config(hidden=64, depth=2, heads=4),             # tests
    "M2-A0": Stage2Config(hidden=512, depth=6, heads=8),
}


def build_stage2(name_or_cfg: Union[str, Stage2Config], **overrides) -> MotionDiT:
    """A motion DiT from a registry name ("M2-tiny", "M2-A0") or a config, with field overrides
    (e.g. `speech_dim=768` read from the shard metadata, `modulation="global"`)."""
    if isinstance(name_or_cfg, Stage2Config):
        cfg = name_or_cfg
    elif name_or_cfg in STAGE2_CONFIGS:
        cfg = STAGE2_CONFIGS[name_or_cfg]
    else:
        raise ConfigError(f"unknown stage-2 model {name_or_cfg!r}; known: {sorted(STAGE2_CONFIGS)}")
    known = {f.name for f in fields(Stage2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"build_stage2: unknown override(s) {unknown}; known: {sorted(known)}")
    return MotionDiT(replace(cfg, **overrides).validate(f"stage-2 model {name_or_cfg!r}"
                                                        if isinstance(name_or_cfg, str) else "Stage2Config"))
