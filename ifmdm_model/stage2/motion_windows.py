"""Windows of per-frame motion latents and speech features held in memory, for small stage-2
runs (`ifmdm-tune --stage 2`, `benchmarks/learning_stage2.py`), and the held-out denoising loss
that compares two stage-2 models on them. (Training at scale reads windows from shards:
`ifmdm_data.loaders.stage2_loader`.)

A window set is a dict of float32 arrays: motion (N, T, D), speech (N, T, S), m_mu (N, D),
m_sigma (N, D), hint (N, D).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

KEYS = ("motion", "speech", "m_mu", "m_sigma", "hint")
EVAL_T = tuple(range(50, 1000, 100))           # fixed timesteps of the held-out loss


def cut_windows(motion: np.ndarray, speech: np.ndarray, window: int, stride: int,
                stats: str = "clip") -> Dict[str, np.ndarray]:
    """Windows of one clip (part): motion (n, D), speech (n, S) -> dict of (N, window, .) arrays;
    hint = the frame before the window (the first frame itself for the first window); m_mu /
    m_sigma over the clip part ("clip") or over each window ("window"), population std."""
    from ifmdm_data.loaders import window_stats        # the loader's own statistics

    n = len(motion)
    starts = list(range(0, n - window + 1, stride))
    out: Dict[str, list] = {k: [] for k in KEYS}
    part = window_stats(motion) if len(motion) else None
    for s in starts:
        mu, sigma = window_stats(motion[s:s + window]) if stats == "window" else part
        out["motion"].append(motion[s:s + window])
        out["speech"].append(speech[s:s + window])
        out["m_mu"].append(mu)
        out["m_sigma"].append(sigma)
        out["hint"].append(motion[s - 1] if s > 0 else motion[0])
    d, sd = motion.shape[1], speech.shape[1]
    shapes = {"motion": (0, window, d), "speech": (0, window, sd), "m_mu": (0, d), "m_sigma": (0, d), "hint": (0, d)}
    return {k: (np.asarray(v, np.float32) if v else np.zeros(shapes[k], np.float32)) for k, v in out.items()}


def concat_windows(parts: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in KEYS}


def window_conditions(w: Dict[str, torch.Tensor]) -> dict:
    """The stage-2 model's condition keywords of a window set."""
    return {"speech": w["speech"], "m_mu": w["m_mu"], "m_sigma": w["m_sigma"], "hint": w["hint"]}


@torch.no_grad()
def heldout_loss(model, held: Dict[str, torch.Tensor], schedule, seed: int, chunk: int = 256) -> float:
    """The eps MSE averaged over the timesteps EVAL_T with fixed noise (drawn on the CPU from
    `seed`, so every model sees the same), no condition dropped."""
    x0 = held["motion"]
    g = torch.Generator().manual_seed(seed + 7919)
    noise = torch.randn((len(EVAL_T),) + tuple(x0.shape), generator=g).to(x0.device)
    total, count = 0.0, 0
    for k, tk in enumerate(EVAL_T):
        for i in range(0, len(x0), chunk):
            sl = slice(i, i + chunk)
            cond = {key: v[sl] for key, v in window_conditions(held).items()}
            t = torch.full((x0[sl].shape[0],), tk, dtype=torch.long, device=x0.device)
            eps = model(schedule.q_sample(x0[sl], t, noise[k, sl]), t, **cond,
                        drop_speech=False, drop_stats=False, drop_hint=False)
            total += F.mse_loss(eps.float(), noise[k, sl].float(), reduction="sum").item()
            count += eps.numel()
    return total / count
