"""Gaussian diffusion for stage 2: the noise schedule, the training loss, the samplers and
classifier-free guidance. Separate from the model (diffusers' scheduler/model split): nothing
here knows the DiT; it works on any (N, T, D) tensors and any eps-prediction function.

- `DDPMSchedule`: betas (linear or cosine), alphas_cumprod, the forward process `q_sample`.
- `diffusion_loss`: DDPM's simplified objective, MSE between eps and its prediction
  (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 1).
- `respace`: the timesteps of a shorter sampling chain (10-100 of the 1000 training steps).
- `ddpm_step` / `ddpm_sample`: ancestral sampling (Ho et al. 2020, Algorithm 2), on any
  respaced chain (the posterior q(x_s | x_t, x_0) between the chain's consecutive steps).
- `ddim_step` / `ddim_sample`: DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models",
  eq. 12 with sigma from eq. 16; eta=0 deterministic, eta=1 the DDPM posterior).
- `cfg_model_fn`: classifier-free guidance on speech only (Ho & Salimans 2022), with the
  conditional and the speech-dropped pass batched into one forward, and optionally the guided
  x0 rescaled to the conditional prediction's temporal std (`rescale_guided_x0`, after Lin et
  al. 2024), so that guidance does not override the requested motion std m_sigma.

Samplers are plain @torch.no_grad() functions with one signature, k-diffusion style:
`(model_fn, shape, steps, schedule, ..., generator=None, x_T=None, callback=None)`, where
`model_fn(x (N, T, D), t (N,) long) -> eps (N, T, D)`. The state is kept in x_T's dtype
(float32 by default); eps is cast to it, so a model under bf16 autocast is fine.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

BETA_SCHEDULES = ("linear", "cosine")
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#################################################################################
#                                   Schedule                                    #
#################################################################################

class DDPMSchedule:
    """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0..T-1.

    "linear": betas from `beta_start` to `beta_end` (Ho et al. 2020: 1e-4 to 0.02, T = 1000);
    "cosine": abar_t = cos^2(((t/T + s) / (1 + s)) pi/2) / abar(0), betas clipped at 0.999
    (Nichol & Dhariwal 2021). Arrays are float64 on the CPU; values are gathered at t and
    cast to the dtype and device of the tensor they apply to.
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02, cosine_s: float = 0.008):
        if not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        if beta_schedule == "linear":
            if not 0 < beta_start <= beta_end < 1:
                raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        elif beta_schedule == "cosine":
            steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
            abar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        self.num_timesteps, self.beta_schedule = num_timesteps, beta_schedule
        self.betas = betas                                             # (T,)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)        # abar_t
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    def __repr__(self):
        return f"DDPMSchedule(num_timesteps={self.num_timesteps}, beta_schedule={self.beta_schedule!r})"

    def abar(self, t: int) -> float:
        """abar_t as a Python float; abar_{-1} = 1 (the chain's end, x_0 itself)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    @staticmethod
    def _gather(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        vals = arr[t.detach().to("cpu", torch.long)]                   # (N,)
        return vals.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4); x0 (N, ...)."""
        return (self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def sample_timesteps(self, n: int, generator: Optional[torch.Generator] = None,
                         device=None) -> torch.Tensor:
        """t ~ Uniform{0..T-1}, (n,) long, drawn on the generator's device and moved to `device`."""
        dev = generator.device if generator is not None else (device or "cpu")
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=dev).to(device or dev)


def respace(schedule: DDPMSchedule, steps: int) -> torch.Tensor:
    """`steps` training timesteps spread evenly over [0, T-1] (both ends kept), in sampling order
    (descending), (steps,) long. steps = T gives every timestep."""
    if not isinstance(steps, int) or not 1 <= steps <= schedule.num_timesteps:
        raise ValueError(f"steps must be an integer in [1, {schedule.num_timesteps}], got {steps!r}")
    if steps == 1:
        return torch.tensor([schedule.num_timesteps - 1])
    ts = torch.linspace(0, schedule.num_timesteps - 1, steps, dtype=torch.float64).round().long()
    return ts.flip(0)                                                  # (steps,), T-1 ... 0


#################################################################################
#                                   Training                                    #
#################################################################################

def diffusion_loss(model: Callable, schedule: DDPMSchedule, x0: torch.Tensor, cond: Dict,
                   generator: Optional[torch.Generator] = None, drops: Optional[Dict] = None,
                   t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDPM's simplified loss (Ho et al. 2020, Algorithm 1, L_simple): t ~ U{0..T-1}, eps ~ N(0, I),
    MSE(eps, model(q_sample(x0, t, eps), t, **cond, **drops)), a float32 scalar.

    x0 (N, T, D); cond: the model's keyword conditions (speech, m_mu, m_sigma, hint). `drops`:
    the drop flags; when None and the model (or a DDP-wrapped model's .module) is in train
    mode and has `sample_drops`, they are drawn from `generator` with the config's
    probabilities. t and noise are drawn from `generator` unless given (tests pass them).
    """
    n = x0.shape[0]
    if t is None:
        t = schedule.sample_timesteps(n, generator, device=x0.device)
    if noise is None:
        dev = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
    if drops is None:
        inner = getattr(model, "module", model)
        drops = {}
        if getattr(inner, "training", False) and hasattr(inner, "sample_drops"):
            drops = inner.sample_drops(n, generator, device=x0.device)
    x_t = schedule.q_sample(x0, t, noise)                              # (N, T, D)
    eps = model(x_t, t, **cond, **drops)
    return F.mse_loss(eps.float(), noise.float())


#################################################################################
#                                   Samplers                                    #
#################################################################################

def _x0_eps(x, eps, abar_t, clip_x0):
    """x_0 predicted from eps (inverting eq. 4); with clip_x0, x_0 is clamped and eps re-derived."""
    x0 = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
    return x0, eps


def ddpm_step(schedule: DDPMSchedule, x, eps, t: int, t_prev: int, noise=None,
              variance: str = "posterior", clip_x0: Optional[float] = None):
    """One ancestral step x_t -> x_{t_prev} (Ho et al. 2020, Algorithm 2, line 4), generalised to a
    respaced chain: with alpha = abar_t / abar_prev, beta = 1 - alpha, the posterior
    q(x_prev | x_t, x_0) has mean sqrt(abar_prev) beta / (1 - abar_t) x_0
    + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t, which for t_prev = t - 1 is Algorithm 2's
    1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps). sigma^2 = beta (1 - abar_prev) / (1 - abar_t)
    ("posterior", beta-tilde) or beta ("beta"); no noise is added on the last step (t_prev < 0).
    Returns (x_prev, x0_pred)."""
    if variance not in ("posterior", "beta"):
        raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
    a_t, a_prev = schedule.abar(t), schedule.abar(t_prev)
    alpha = a_t / a_prev
    beta = 1 - alpha
    x0, _ = _x0_eps(x, eps, a_t, clip_x0)
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)) * x
    if t_prev < 0:
        return mean, x0
    var = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
    if noise is None:
        raise ValueError("ddpm_step needs `noise` for every step but the last")
    return mean + math.sqrt(var) * noise, x0


def ddim_step(schedule: DDPMSchedule, x, eps, t: int, t_prev: int, eta: float = 0.0, noise=None,
              clip_x0: Optional[float] = None):
    """One DDIM step (Song et al. 2021, eq. 12):
    x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (eq. 16).
    eta = 0: deterministic; eta = 1: the DDPM posterior. Returns (x_prev, x0_pred)."""
    a_t, a_prev = schedule.abar(t), schedule.abar(t_prev)
    x0, eps = _x0_eps(x, eps, a_t, clip_x0)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    out = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise`")
        out = out + sigma * noise
    return out, x0


def _start(shape, x_T, generator, device, dtype):
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        return x_T.clone()
    return _randn(shape, generator, device, dtype)


def _randn(shape, generator, device, dtype):
    dev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=dtype).to(device)


def _chain(schedule, steps):
    ts = respace(schedule, steps) if isinstance(steps, int) else torch.as_tensor(steps).long()
    ts = [int(v) for v in ts]
    if any(b >= a for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must be strictly decreasing within [0, {schedule.num_timesteps - 1}]")
    return ts


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, shape: Sequence[int], steps, schedule: DDPMSchedule,
                eta: float = 0.0, generator: Optional[torch.Generator] = None,
                x_T: Optional[torch.Tensor] = None, callback: Optional[Callable] = None,
                device="cpu", dtype=torch.float32, clip_x0: Optional[float] = None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12; sigma(eta) from eq. 16) over `steps` (an int: the
    `respace`d chain, or a decreasing sequence of training timesteps), from x_T (or N(0, I) drawn
    with `generator`) to x_0 (N, T, D). callback({"i", "t", "x", "x0", "eps"}) after each step."""
    ts = _chain(schedule, steps)
    x = _start(shape, x_T, generator, device, dtype)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        noise = _randn(x.shape, generator, x.device, x.dtype) if eta > 0 and t_prev >= 0 else None
        x, x0 = ddim_step(schedule, x, eps, t, t_prev, eta, noise, clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "eps": eps})
    return x


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, shape: Sequence[int], steps, schedule: DDPMSchedule,
                generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None,
                callback: Optional[Callable] = None, device="cpu", dtype=torch.float32,
                variance: str = "posterior", clip_x0: Optional[float] = None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over `steps` (None or T: all 1000
    steps; an int: the `respace`d chain; or a decreasing sequence of timesteps)."""
    ts = _chain(schedule, schedule.num_timesteps if steps is None else steps)
    x = _start(shape, x_T, generator, device, dtype)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).to(x.dtype)
        noise = _randn(x.shape, generator, x.device, x.dtype) if t_prev >= 0 else None
        x, x0 = ddpm_step(schedule, x, eps, t, t_prev, noise, variance, clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0, "eps": eps})
    return x


#################################################################################
#                          Classifier-free guidance                             #
#################################################################################

def rescale_guided_x0(x: torch.Tensor, eps_guided: torch.Tensor, eps_cond: torch.Tensor, abar_t,
                      rescale: float = 1.0) -> torch.Tensor:
    """Guidance rescale for motion (after Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", sec. 3.4), returned as eps.

    Why: with speech-only CFG the unconditional pass knows m_mu / m_sigma but not the speech,
    so x0_uncond is roughly "mean + the part of the motion speech does not explain", and
    x0_guided = x0_uncond + w (x0_cond - x0_uncond) multiplies the speech-explained part by w:
    the motion's std over frames grows from sigma to about sqrt(sigma_rest^2 + w^2
    sigma_speech^2) whatever m_sigma asked for (measured on a toy where m_sigma is the clip std:
    std / m_sigma 1.5-1.6 at w = 2.5 against 0.9-1.0 at w = 1).

    What: the guided x0 prediction is rescaled, per sample and per motion dimension, around its
    mean over frames, to the std over frames of the conditional x0 prediction (which follows
    m_sigma), and eps is re-derived from it. The mean over frames is left alone (m_mu conditions
    it; Lin et al.'s uncentred std over all dims would let m_mu's offset dominate the std), and
    the rescale is done on x0, not on eps as in Lin et al.: at high noise eps is almost all
    x_t's noise, so rescaling eps leaves the inflation in place (measured: std / m_sigma
    unchanged, 1.6). `rescale` in [0, 1] blends: x0 = rescale x0_rescaled + (1 - rescale)
    x0_guided (Lin et al.'s phi); 1 matched the requested std best on the toy.

    x, eps_* (N, T, D); abar_t: a float or an (N,) tensor of abar at each sample's t."""
    a = torch.as_tensor(abar_t, dtype=torch.float64)
    a = a.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    x0_g = (x - s1a * eps_guided) / sa
    x0_c = (x - s1a * eps_cond) / sa
    mean_g = x0_g.mean(dim=1, keepdim=True)
    std_g = x0_g.std(dim=1, keepdim=True, unbiased=False)
    std_c = x0_c.std(dim=1, keepdim=True, unbiased=False)
    x0_r = mean_g + (x0_g - mean_g) * (std_c / std_g.clamp_min(1e-8))
    x0 = rescale * x0_r + (1 - rescale) * x0_g
    return (x - sa * x0) / s1a


def cfg_model_fn(model: Callable, cond: Dict[str, torch.Tensor], w: float = 2.5,
                 batched: bool = True, rescale: float = 0.0,
                 schedule: Optional[DDPMSchedule] = None) -> ModelFn:
    """eps(x, t) with classifier-free guidance on speech only (Ho & Salimans 2022, eq. 6 in the
    eps form used by IF-MDM): eps = eps_uncond + w (eps_cond - eps_uncond), where the
    unconditional pass drops ONLY the speech (null speech embedding); the motion statistics and
    the hint are kept in both passes.

    cond: {"speech" (N, T, S), "m_mu" (N, D), "m_sigma" (N, D), "hint" (N, D)}. `batched`: both
    passes in one forward over 2N samples (default), else two forwards. w = 1 runs only the
    conditional pass (exactly the conditional prediction), w = 0 only the unconditional one.

    `rescale` > 0 (needs the `schedule` the model was trained with): the guided prediction is
    rescaled to the conditional prediction's std over frames (`rescale_guided_x0`), so that the
    generated motion keeps the std m_sigma asks for; inference (`ifmdm-infer --cfg-rescale`)
    uses 1.0 by default. 0 (this function's default): plain CFG.
    """
    w, rescale = float(w), float(rescale)
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale!r}")
    if rescale > 0 and schedule is None:
        raise ValueError("cfg_model_fn: rescale > 0 needs the diffusion schedule (schedule=...)")

    def flags(n, drop, device):
        return torch.full((n,), drop, dtype=torch.bool, device=device)

    def run(x, t, drop_speech):
        n = x.shape[0]
        return model(x, t, **cond, drop_speech=drop_speech, drop_stats=flags(n, False, x.device),
                     drop_hint=flags(n, False, x.device))

    def eps_fn(x, t):
        n = x.shape[0]
        if w == 1.0:
            return run(x, t, flags(n, False, x.device))
        if w == 0.0:
            return run(x, t, flags(n, True, x.device))
        if batched:
            both = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
            drop = torch.cat([flags(n, False, x.device), flags(n, True, x.device)])
            eps = model(torch.cat([x, x]), torch.cat([t, t]), **both, drop_speech=drop,
                        drop_stats=flags(2 * n, False, x.device), drop_hint=flags(2 * n, False, x.device))
            eps_cond, eps_uncond = eps.chunk(2)
        else:
            eps_cond = run(x, t, flags(n, False, x.device))
            eps_uncond = run(x, t, flags(n, True, x.device))
        eps = eps_uncond + w * (eps_cond - eps_uncond)
        if rescale > 0:
            abar = schedule.alphas_cumprod[t.detach().to("cpu", torch.long)]
            eps = rescale_guided_x0(x, eps.to(x.dtype), eps_cond.to(x.dtype), abar, rescale)
        return eps

    return eps_fn
