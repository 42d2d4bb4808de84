"""Stage-2 learning checks: the paper's Table 2 ablation (framewise vs global modulation, with and
without the speech residual) and the motion-std control under the default guidance, at a scale
a CPU can run.

    python benchmarks/learning_stage2.py [--quick] [--seed 0] [--threads 1]

run alone: on a synthetic speech -> motion toy (`synthetic_windows`). `benchmarks/learning_bench.py`
calls `stage2_checks` on motion latents extracted by its real-clip stage-1 model
(`windows_from_clips`), with the shards' own speech features.

`stage2_checks(train, heldout, quick, seed)` trains one M2-tiny-sized MotionDiT per variant

    framewise + residual   (the paper's model; our default)
    framewise, no residual
    global + residual
    global, no residual    (the paper's weakest)

with the same initial seed, batches, timesteps, noise, drops and budget, and measures on the
held-out windows (EMA weights, eval mode, no condition dropped):

- held-out loss: the DDPM loss (MSE of eps) averaged over the fixed timesteps 50, 150, ..., 950
  with fixed noise (the same noise for every variant);
- sync r (the speech-motion correlation): motion generated from the held-out speech,
  statistics and hint (DDIM 25 steps, CFG w = 2.5 with guidance rescale: inference's
  defaults), then per window the Pearson correlation over frames between the generated
  motion's speed ||m_f - m_{f-1}|| and the true held-out motion's speed, averaged over windows.
  The model never sees the true motion of the window, only its speech: motion that moves when
  the real motion moves is motion timed by the speech (statistics and hint carry no timing);
- motion r: per window and motion dimension, the Pearson correlation over frames between the
  generated and the true motion, averaged (how much of the trajectory itself speech predicts);
- std / m_sigma: generated std over frames (mean over windows and dims) divided by the
  requested m_sigma, for m_sigma at the 25th / 50th / 75th percentile of the training
  windows' m_sigma (the same value for every dim, as `ifmdm-infer --motion-std` does; m_mu =
  the hint, as for inference's first chunk), at w = 2.5 with the guidance rescale
  (inference's default), without it ("plain CFG") and at w = 1 (the conditional prediction).
  The reference is the data's own ratio, rho = mean window std / mean m_sigma over the
  held-out windows: 1 when the statistics are the window's own (`motion_stats: window`),
  below 1 with per-clip statistics (a window moves less than its whole clip).

checks (name, met, detail):
- "framewise+residual best": lowest held-out loss and highest sync r of the four;
- "global without residual worst": highest held-out loss and lowest sync r of the four;
- "m_sigma within 25%": for framewise + residual, every std / m_sigma within 25% of rho;
- "guidance keeps the conditional std": for framewise + residual, every std / m_sigma at
  w = 2.5 (rescaled) within 25% of the same at w = 1 (what CFG itself does to the std, apart
  from how well the model learned it; plain CFG inflates it by the speech-explained part).

Speech features are standardised per channel with the training windows' mean / std (the same
for every variant). Budget: `quick` <= ~4 CPU-minutes in all on the toy's or the real clips'
window counts.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ifmdm_model.stage2.diffusion import DDPMSchedule, cfg_model_fn, ddim_sample, diffusion_loss  # noqa: E402
from ifmdm_model.stage2.motion_windows import (EVAL_T, KEYS, concat_windows, cut_windows,  # noqa: E402,F401
                                        heldout_loss, window_conditions as _cond)
from ifmdm_model.stage2.model import build_stage2  # noqa: E402

VARIANTS = (("framewise+residual", "framewise", True),
            ("framewise, no residual", "framewise", False),
            ("global+residual", "global", True),
            ("global, no residual", "global", False))
W, SAMPLE_STEPS, RESCALE = 2.5, 25, 1.0        # inference's defaults (ifmdm-infer)
BUDGET = {True: {"steps": 1200, "batch": 32}, False: {"steps": 5000, "batch": 32}}


#################################################################################
#                                    Windows                                    #
#################################################################################

def _check_windows(w: dict, name: str) -> Tuple[int, int, int, int]:
    missing = [k for k in KEYS if k not in w]
    if missing:
        raise ValueError(f"{name} windows lack {missing} (need {list(KEYS)})")
    n, t, d = np.shape(w["motion"])
    if np.shape(w["speech"])[:2] != (n, t):
        raise ValueError(f"{name}: speech {np.shape(w['speech'])} does not match motion {(n, t, d)}")
    for k in ("m_mu", "m_sigma", "hint"):
        if np.shape(w[k]) != (n, d):
            raise ValueError(f"{name}: {k} must be ({n}, {d}), got {np.shape(w[k])}")
    return n, t, d, np.shape(w["speech"])[2]


def _tensors(w: dict, s_mean: np.ndarray, s_std: np.ndarray) -> Dict[str, torch.Tensor]:
    out = {k: torch.as_tensor(np.asarray(w[k], np.float32)) for k in KEYS}
    out["speech"] = (out["speech"] - torch.from_numpy(s_mean)) / torch.from_numpy(s_std)
    return out


def synthetic_windows(seed: int = 0, n_train_clips: int = 24, n_heldout_clips: int = 12, clip_frames: int = 160,
                      window: int = 16, motion_dim: int = 8, speech_dim: int = 16, head_dims: int = 4,
                      stats: str = "clip", sigma_range: Tuple[float, float] = (0.05, 0.4), env_width: int = 9):
    """A synthetic speech -> motion toy (train and held-out windows from different clips).

    Per clip: a speech envelope e_f (noise smoothed by a Hann window of `env_width` frames),
    speech features = e_f times a fixed spectral profile + noise; motion = a per-clip offset +
    a per-clip scale sigma (log-uniform in `sigma_range`) times [mouth dims: a fixed map of
    e_f, one frame behind the speech; `head_dims` head dims: a slow random walk independent of
    speech], each dim standardised over the clip. So the speech times the mouth exactly and
    the head not at all, and the std is a clip property; statistics per clip ("clip", the
    project's default) or per window ("window"). (A rougher envelope, env_width 5, is much
    harder for M2-tiny at this budget: its samples stay jittery, sync r ~0.1.)"""
    rng = np.random.default_rng(seed)
    profile = rng.normal(size=speech_dim)
    mouth_dims = motion_dim - head_dims
    mouth_map = rng.normal(size=(1, mouth_dims))

    def smooth(n, width, ch=1):
        k = np.hanning(width)
        k /= k.sum()
        z = rng.normal(size=(n + width - 1, ch))
        return np.stack([np.convolve(z[:, c], k, mode="valid") for c in range(ch)], 1)   # (n, ch)

    def clip():
        n = clip_frames + 1
        env = smooth(n, env_width)[:, 0] * 3.0                                        # (n,)
        speech = env[:, None] * profile + 0.2 * rng.normal(size=(n, speech_dim))
        parts = [env[:-1, None] @ mouth_map]                                          # one frame behind
        if head_dims:
            parts.append(np.cumsum(smooth(n - 1, 9, head_dims), axis=0))
        raw = np.concatenate(parts, 1)
        raw = (raw - raw.mean(0)) / (raw.std(0) + 1e-6)
        sigma = math.exp(rng.uniform(math.log(sigma_range[0]), math.log(sigma_range[1])))
        motion = 0.3 * rng.normal(size=motion_dim) + sigma * raw
        return motion.astype(np.float32), speech[1:].astype(np.float32)

    train = concat_windows([cut_windows(*clip(), window, 4, stats) for _ in range(n_train_clips)])
    held = concat_windows([cut_windows(*clip(), window, window, stats) for _ in range(n_heldout_clips)])
    return train, held


@torch.no_grad()
def windows_from_clips(stage1_model, shards_root, size: int, window: int = 16, train_fraction: float = 0.75,
                       stride: int = 4, stats: str = "clip", max_frames: Optional[int] = None,
                       batch: int = 32) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Train / held-out windows of real clips: every stage-2 clip (stage2_ok with audio) of the
    project's shards under `shards_root`, its frames decoded at `size` px and encoded by
    `stage1_model` (a MotionAutoencoder: E_v's motion m per frame), with the shard's speech
    features (one row per frame). The first `train_fraction` of each clip's frames train
    (windows every `stride` frames), the rest are held out (non-overlapping windows);
    statistics per clip part ("clip") or per window ("window")."""
    from ifmdm_data.loaders import STAGE2_READ, list_shards, load_checked
    from ifmdm_data.shard.reader import TarShard, decode_frames, read_meta

    model = stage1_model.eval()
    device = next(model.parameters()).device
    train, held = [], []
    for path in list_shards(str(shards_root), stage2=True):
        with TarShard(path) as tar:
            for key in tar.keys():
                meta = read_meta(tar, key)
                if not (meta.get("stage2_ok") and meta.get("has_audio")):
                    continue
                n = int(meta["n_frames"])
                if max_frames:
                    n = min(n, max_frames)
                speech = load_checked(tar, key, meta, STAGE2_READ)["speech.npy"][:n].astype(np.float32)
                got = decode_frames(tar.read(key, "mp4"), range(n), size, f"{path}:{key}")
                frames = np.stack([got[i] for i in range(n)])
                motion = []
                for i in range(0, n, batch):
                    x = torch.from_numpy(frames[i:i + batch]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
                    motion.append(model.encode(x)[1].float().cpu())
                motion = torch.cat(motion).numpy()
                cut = int(n * train_fraction)
                train.append(cut_windows(motion[:cut], speech[:cut], window, stride, stats))
                held.append(cut_windows(motion[cut:], speech[cut:], window, window, stats))
    if not train:
        raise ValueError(f"{shards_root}: no stage-2 clip (stage2_ok with audio)")
    return concat_windows(train), concat_windows(held)


#################################################################################
#                                Train, evaluate                                #
#################################################################################

def train_variant(train: Dict[str, torch.Tensor], modulation: str, residual: bool, steps: int, batch: int,
                  seed: int, schedule: DDPMSchedule, lr: float = 2e-3, ema_decay: float = 0.995):
    """An M2-tiny MotionDiT trained on the windows; returns its EMA copy (eval mode). The batch
    order, timesteps, noise and condition drops come from `seed` alone: the same for every
    variant."""
    n, t, d = train["motion"].shape
    torch.manual_seed(seed)
    model = build_stage2("M2-tiny", motion_dim=d, speech_dim=train["speech"].shape[2], n_frames=t,
                         modulation=modulation, speech_residual=residual).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed)
    warmup = max(1, steps // 20)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        idx = torch.from_numpy(order.integers(0, n, batch))
        x0 = train["motion"][idx]
        cond = {"speech": train["speech"][idx], "m_mu": train["m_mu"][idx], "m_sigma": train["m_sigma"][idx],
                "hint": train["hint"][idx]}
        loss = diffusion_loss(model, schedule, x0, cond, generator=g, drops=model.sample_drops(batch, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
    return ema, float(loss.detach())


@torch.no_grad()
def generate(model, cond: dict, shape, schedule: DDPMSchedule, seed: int, w: float = W,
             rescale: float = RESCALE) -> torch.Tensor:
    eps_fn = cfg_model_fn(model, cond, w, rescale=rescale, schedule=schedule)
    return ddim_sample(eps_fn, shape, SAMPLE_STEPS, schedule, generator=torch.Generator().manual_seed(seed + 104729))


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    den = a.norm(dim=dim) * b.norm(dim=dim)
    return torch.where(den > 1e-12, (a * b).sum(dim) / den.clamp_min(1e-12), torch.zeros_like(den))


def sync_r(generated: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over windows of the Pearson r over frames of ||m_f - m_{f-1}|| (generated vs true)."""
    speed_g = (generated[:, 1:] - generated[:, :-1]).norm(dim=-1)
    speed_t = (true[:, 1:] - true[:, :-1]).norm(dim=-1)
    return _pearson(speed_g, speed_t, 1).mean().item()


def motion_r(generated: torch.Tensor, true: torch.Tensor) -> float:
    """Mean over windows and dims of the Pearson r over frames of the motion itself."""
    return _pearson(generated, true, 1).mean().item()


def std_ratios(model, held: Dict[str, torch.Tensor], sigmas: Sequence[float], schedule, seed: int,
               rescale: float, w: float = W) -> List[float]:
    """Generated std over frames (mean over windows, dims) / m_sigma, m_sigma the same for all dims."""
    out = []
    for s in sigmas:
        cond = {**_cond(held), "m_mu": held["hint"], "m_sigma": torch.full_like(held["m_sigma"], float(s))}
        x = generate(model, cond, held["motion"].shape, schedule, seed, w=w, rescale=rescale)
        out.append(x.std(1, unbiased=False).mean().item() / float(s))
    return out


def stage2_checks(train_windows: dict, heldout_windows: dict, quick: bool, seed: int = 0,
                  log=print, steps: Optional[int] = None) -> Tuple[List[dict], List[Tuple[str, bool, str]]]:
    """Table 2 variants trained on `train_windows`, measured on `heldout_windows` (dicts of numpy
    arrays: motion (N, T, D), speech (N, T, S), m_mu, m_sigma, hint (N, D)). Returns (rows,
    checks): one row per variant {variant, held-out loss, sync r, motion r, std/m_sigma,
    std/m_sigma plain CFG, std/m_sigma w=1, train loss, s}; checks [(name, met, detail)] (module
    docstring). `steps`: override the budget's training steps per variant (smoke tests)."""
    _, t_tr, d_tr, s_tr = _check_windows(train_windows, "train")
    n_he, t_he, d_he, s_he = _check_windows(heldout_windows, "held-out")
    if (d_tr, s_tr) != (d_he, s_he):
        raise ValueError(f"train (D={d_tr}, S={s_tr}) and held-out (D={d_he}, S={s_he}) windows differ")
    if n_he == 0:
        raise ValueError("no held-out windows")
    sp = np.asarray(train_windows["speech"], np.float64).reshape(-1, s_tr)
    s_mean, s_std = sp.mean(0).astype(np.float32), (sp.std(0) + 1e-6).astype(np.float32)
    train, held = _tensors(train_windows, s_mean, s_std), _tensors(heldout_windows, s_mean, s_std)
    sigmas = [float(v) for v in np.percentile(np.asarray(train_windows["m_sigma"]).ravel(), (25, 50, 75))]
    rho = (held["motion"].std(1, unbiased=False).mean() / held["m_sigma"].mean().clamp_min(1e-12)).item()
    budget = BUDGET[bool(quick)]
    schedule = DDPMSchedule()
    rows, res = [], {}
    for name, modulation, residual in VARIANTS:
        t0 = time.perf_counter()
        model, train_loss = train_variant(train, modulation, residual, steps or budget["steps"], budget["batch"],
                                          seed, schedule)
        gen = generate(model, _cond(held), held["motion"].shape, schedule, seed)
        r = {"variant": name, "held-out loss": heldout_loss(model, held, schedule, seed),
             "sync r": sync_r(gen, held["motion"]), "motion r": motion_r(gen, held["motion"])}
        ratios = std_ratios(model, held, sigmas, schedule, seed, RESCALE)
        plain = std_ratios(model, held, sigmas, schedule, seed, 0.0)
        cond_only = std_ratios(model, held, sigmas, schedule, seed, 0.0, w=1.0)
        r["std/m_sigma"] = " ".join(f"{v:.2f}" for v in ratios)
        r["std/m_sigma plain CFG"] = " ".join(f"{v:.2f}" for v in plain)
        r["std/m_sigma w=1"] = " ".join(f"{v:.2f}" for v in cond_only)
        r["train loss"] = train_loss
        r["s"] = time.perf_counter() - t0
        res[name] = {**r, "ratios": ratios, "cond_ratios": cond_only}
        rows.append(r)
        if log:
            log(f"  stage 2 {name}: held-out loss {r['held-out loss']:.4f}, sync r {r['sync r']:.3f}, "
                f"motion r {r['motion r']:.3f}, std/m_sigma {r['std/m_sigma']} (plain CFG "
                f"{r['std/m_sigma plain CFG']}, w=1 {r['std/m_sigma w=1']}), {r['s']:.0f} s")
    names = [v[0] for v in VARIANTS]
    loss = {k: res[k]["held-out loss"] for k in names}
    sync = {k: res[k]["sync r"] for k in names}

    def detail():
        return "; ".join(f"{k}: loss {loss[k]:.4f}, sync r {sync[k]:.3f}" for k in names)
    best, worst = names[0], names[-1]
    checks = [
        ("stage 2: framewise+residual best (held-out loss and sync r)",
         min(loss, key=loss.get) == best and max(sync, key=sync.get) == best, detail()),
        ("stage 2: global without residual worst (held-out loss and sync r)",
         max(loss, key=loss.get) == worst and min(sync, key=sync.get) == worst, detail()),
    ]
    ratios = res[best]["ratios"]
    checks.append(("stage 2: m_sigma within 25% at w=2.5 (framewise+residual)",
                   all(abs(v / rho - 1) <= 0.25 for v in ratios),
                   f"std/m_sigma {' '.join(f'{v:.2f}' for v in ratios)} for m_sigma "
                   f"{' '.join(f'{s:.3f}' for s in sigmas)}; data's own std/m_sigma {rho:.2f}; plain CFG "
                   f"{res[best]['std/m_sigma plain CFG']}; w=1 {res[best]['std/m_sigma w=1']}"))
    cond_ratios = res[best]["cond_ratios"]
    checks.append(("stage 2: guidance keeps the conditional std (w=2.5 within 25% of w=1)",
                   all(abs(a / max(b, 1e-12) - 1) <= 0.25 for a, b in zip(ratios, cond_ratios)),
                   f"w=2.5 / w=1: {' '.join(f'{a / max(b, 1e-12):.2f}' for a, b in zip(ratios, cond_ratios))}; "
                   f"plain CFG / w=1: {' '.join(f'{float(a) / max(b, 1e-12):.2f}' for a, b in zip(res[best]['std/m_sigma plain CFG'].split(), cond_ratios))}"))
    return rows, checks


#################################################################################
#                                      Main                                     #
#################################################################################

def _table(rows: List[dict]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) and c != "s" else
                                f"{r[c]:.0f}" if c == "s" else str(r[c]) for c in cols) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Stage-2 learning checks on a synthetic speech -> motion toy")
    ap.add_argument("--quick", action="store_true", help="the short budget (<= ~4 CPU-minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, held = synthetic_windows(seed=args.seed)
    print(f"synthetic toy: {len(train['motion'])} train / {len(held['motion'])} held-out windows of "
          f"{train['motion'].shape[1]} frames, D={train['motion'].shape[2]}, S={train['speech'].shape[2]}")
    rows, checks = stage2_checks(train, held, quick=args.quick, seed=args.seed)
    print()
    _table(rows)
    print("\n| check | met | measured |")
    print("|---|---|---|")
    for name, ok, det in checks:
        print(f"| {name} | {'yes' if ok else 'NO'} | {det} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print(f"stage-2 learning checks: {sum(ok for _, ok, _ in checks)} of {len(checks)} met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
