"""The recursive chunk sampler of IF-MDM inference (paper Sec. 3.2; DESIGN.md, "Inference"):
motion for speech of any length, generated chunk by chunk by the stage-2 motion DiT, each chunk
conditioned on the motion the previous chunk ended with.

`sample_motion_chunks(...)` is a plain generator over (model, schedule, speech, m'), k-diffusion
style; its options are grouped in `ChunkSampling`. `generate` streams its chunks to the decoder."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Union

import numpy as np
import torch


@dataclass(frozen=True)
class ChunkSampling:
    """Options of the recursive chunk sampler (the `ifmdm-infer` flags in brackets).

    steps: DDIM steps over the respaced chain (--steps).
    cfg: classifier-free guidance scale w on speech, both passes batched; 1: off (--cfg).
    guidance_rescale: in [0, 1]; 1 rescales the guided x0 to the conditional prediction's std
        over frames, so CFG does not inflate the motion std m_sigma asks for (--cfg-rescale).
    eta: DDIM eta (0: deterministic given x_T).
    motion_std: m_sigma, the same for every motion dimension (--motion-std).
    motion_mean: m_mu: "input" (the portrait's m'), "previous" (each chunk: the previous chunk's
        mean motion; the first chunk: m') or a float32 array (D,) (--motion-mean, checked by
        `options.motion_mean_arg`).
    first_hint: the first chunk's motion hint: "input" (m') or "learned" (the model's learned
        null hint, None) (--first-hint). Every later chunk's hint is the last generated frame.
    seed: seed of the CPU torch.Generator that draws all the noise (same seed, same motion on
        any device) (--seed)."""
    steps: int = 25
    cfg: float = 2.5
    guidance_rescale: float = 1.0
    eta: float = 0.0
    motion_std: float = 0.1
    motion_mean: Union[str, np.ndarray] = "input"
    first_hint: str = "input"
    seed: int = 0


class _ArrayFrames:
    """`read(n)` over a whole (T, S) feature array: the next n frames."""

    def __init__(self, frames):
        self.frames, self.pos = np.asarray(frames, np.float32), 0

    def read(self, n: int) -> np.ndarray:
        out = self.frames[self.pos:self.pos + n]
        self.pos += n
        return out


def _no_timer(name):
    return contextlib.nullcontext()


def sample_motion_chunks(model_fn: Callable, schedule, speech, n_frames: int, chunk_frames: int,
                         m_in: torch.Tensor, opts: ChunkSampling = ChunkSampling(), device=None,
                         amp=None, timer: Callable = _no_timer) -> Iterator[torch.Tensor]:
    """Generate n_frames of motion in chunks of n_f = `chunk_frames` (the stage-2 model's
    `n_frames`); yields each chunk's motion (length, D) float32 as soon as it is sampled
    (length = n_f, the last chunk n_frames - k n_f).

    model_fn: the stage-2 MotionDiT (or its torch.compile), called as
        model_fn(x_t (2, n_f, D), t (2,), speech=, m_mu=, m_sigma=, hint=) through
        `diffusion.cfg_model_fn` (speech-only CFG, both passes in one batch).
    schedule: the stage-2 checkpoint's `DDPMSchedule`.
    speech: per-frame speech features aligned to the video frames, (n_frames, S) float32: an
        array, or a stream with `read(n)` -> the next n frames (n, S)
        (`ifmdm_data.features.align.stream_frames`: computed lazily, chunk by chunk).
    m_in: m', the portrait's motion from E_v, (1, D) float32 on the model's device.
    device: the models' device (default: m_in's).
    amp: autocast context around the sampler (`options.autocast_for`); default none.
    timer: timer(name) -> context manager; the speech read is timed as "features", the
        sampling as "motion" (`generate`'s per-stage seconds).

    Per chunk: the speech of its frames (the last chunk padded to n_f by repeating its last
    frame, the extra motion trimmed), m_mu per `opts.motion_mean`, m_sigma = motion_std in every
    dimension, the hint m' (or the learned null hint) for the first chunk and the previous
    chunk's last motion frame after it; DDIM from N(0, I) noise drawn from one CPU generator
    seeded with `opts.seed`, so the whole sequence depends on the seed only."""
    from ifmdm_model.stage2.diffusion import cfg_model_fn, ddim_sample

    n_f, D, dev = chunk_frames, m_in.shape[-1], m_in.device if device is None else device
    reader = speech if hasattr(speech, "read") else _ArrayFrames(speech)
    amp = contextlib.nullcontext() if amp is None else amp
    mean_mode = opts.motion_mean
    gen = torch.Generator(device="cpu").manual_seed(int(opts.seed))
    sigma = torch.full((1, D), float(opts.motion_std), device=dev)
    user_mu = torch.from_numpy(mean_mode).to(dev)[None] if isinstance(mean_mode, np.ndarray) else None
    hint, prev_mean = (m_in if opts.first_hint == "input" else None), m_in
    for start in range(0, n_frames, n_f):
        length = min(n_f, n_frames - start)
        with timer("features"):
            sp = reader.read(length)                                   # (length, S)
        with timer("motion"):
            if length < n_f:                                           # pad the last chunk
                sp = np.concatenate([sp, np.repeat(sp[-1:], n_f - length, axis=0)])
            sp_t = torch.from_numpy(sp).to(dev)[None]                  # (1, n_f, S)
            mu = user_mu if user_mu is not None else prev_mean if mean_mode == "previous" else m_in
            cond = {"speech": sp_t, "m_mu": mu, "m_sigma": sigma, "hint": hint}
            eps_fn = cfg_model_fn(model_fn, cond, opts.cfg, batched=True,
                                  rescale=float(opts.guidance_rescale), schedule=schedule)
            with amp:
                x = ddim_sample(eps_fn, (1, n_f, D), opts.steps, schedule, eta=opts.eta,
                                generator=gen, device=dev, dtype=torch.float32)
            x = x[0, :length].float()                                  # (length, D)
            hint = x[-1:].clone()
            prev_mean = x.mean(0, keepdim=True)
        yield x
