"""Behaviour of ifmdm_model/stage2/diffusion.py that test_stage2.py leaves open (issue 16, mutation
testing): the schedule's argument bounds and cosine length, timestep sampling and respacing
bounds, explicit sampler chains and their checks, x_T, the generator and dtype of the samplers'
draws, clip_x0, diffusion_loss's draws and its train-mode-only drops, and classifier-free guidance
(w = 0 / 1, batched = unbatched, flags, the rescale through cfg_model_fn). Every expected value is
written out by hand (Ho et al. 2020 / Song et al. 2021 closed forms). CPU only, fast."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from ifmdm_model.stage2.diffusion import (DDPMSchedule, cfg_model_fn, ddim_sample, ddim_step, ddpm_sample,
                                   ddpm_step, diffusion_loss, rescale_guided_x0, respace)
from ifmdm_model.stage2.model import build_stage2


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per module


def abar_lin(t, T=1000, b0=1e-4, b1=0.02):
    """abar_t of the linear schedule written out: prod_{i <= t} (1 - beta_i), beta_i linear in i."""
    return math.prod(1 - (b0 + (b1 - b0) * (i / (T - 1) if T > 1 else 0.0)) for i in range(t + 1))


def zero_eps(x, t):
    return torch.zeros_like(x)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_model(**kw):
    """M2-tiny with every parameter random (so that each condition shows in eps), eval mode."""
    torch.manual_seed(0)
    model = build_stage2("M2-tiny", **kw)
    g = seeded(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(n=3, length=8, d=20, s=80, seed=0):
    g = seeded(seed)
    x = torch.randn(n, length, d, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = {"speech": torch.randn(n, length, s, generator=g), "m_mu": torch.randn(n, d, generator=g) * 0.3,
            "m_sigma": torch.rand(n, d, generator=g) * 0.2 + 0.05, "hint": torch.randn(n, d, generator=g) * 0.3}
    return x, t, cond


# ----------------------------------------------------------------------------- schedule

def test_schedule_argument_bounds():
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="num_timesteps"):
            DDPMSchedule(bad)
    one = DDPMSchedule(1)                                            # a one-step schedule is valid
    assert one.betas.tolist() == [1e-4] and abs(one.abar(0) - (1 - 1e-4)) < 1e-15
    for b0, b1 in ((0.0, 0.02), (-1e-4, 0.02), (1e-4, 1.0), (1e-4, 1.5), (0.03, 0.02)):
        with pytest.raises(ValueError, match="beta_start"):
            DDPMSchedule(10, beta_start=b0, beta_end=b1)
    flat = DDPMSchedule(10, beta_start=0.05, beta_end=0.05)          # beta_start == beta_end: constant
    assert torch.allclose(flat.alphas_cumprod, torch.tensor([0.95 ** (k + 1) for k in range(10)],
                                                            dtype=torch.float64), atol=1e-15)
    s = DDPMSchedule(10, beta_start=1e-3, beta_end=0.2)
    assert all(abs(s.abar(k) - abar_lin(k, 10, 1e-3, 0.2)) < 1e-14 for k in range(10)) and s.abar(-1) == 1.0


def test_cosine_schedule_has_one_beta_per_timestep_from_the_closed_form():
    T, cs = 50, 0.008

    def f(k):
        return math.cos((k / T + cs) / (1 + cs) * math.pi / 2) ** 2
    sched = DDPMSchedule(T, beta_schedule="cosine")
    want = [min(1 - f(k + 1) / f(k), 0.999) for k in range(T)]
    assert sched.betas.shape == (T,) and sched.alphas_cumprod.shape == (T,)
    assert max(abs(a - b) for a, b in zip(sched.betas.tolist(), want)) < 1e-12
    assert sched.betas[-1].item() == 0.999                           # the last beta is clipped
    assert abs(sched.abar(T - 2) - f(T - 1) / f(0)) < 1e-12


def test_sample_timesteps_cover_0_to_T_minus_1_from_the_generator_and_move_to_device():
    s = DDPMSchedule(7)
    t = s.sample_timesteps(5000, seeded(3))
    assert torch.equal(t, torch.randint(0, 7, (5000,), generator=seeded(3)))   # from the generator
    assert t.dtype == torch.long and t.min().item() == 0 and t.max().item() == 6
    free = s.sample_timesteps(2000)                                   # no generator, no device
    assert free.device.type == "cpu" and free.shape == (2000,) and 0 <= free.min() and free.max() <= 6
    assert s.sample_timesteps(4, device="cpu").device.type == "cpu"
    # drawn on the generator's device (CPU), then moved to the requested one (meta stands for a GPU)
    assert s.sample_timesteps(4, seeded(0), device="meta").device.type == "meta"


# ----------------------------------------------------------------------------- respace

@pytest.mark.parametrize("T,steps", [(1000, 1), (1000, 2), (1000, 3), (1000, 7), (1000, 59), (1000, 250),
                                     (1000, 999), (1000, 1000), (10, 1), (10, 4), (4000, 3222)])
def test_respace_keeps_both_ends_is_strictly_decreasing_and_evenly_spread(T, steps):
    ts = respace(DDPMSchedule(T), steps)
    got = ts.tolist()
    assert ts.dtype == torch.long and len(got) == steps and got[0] == T - 1
    if steps == 1:
        assert got == [T - 1]                                         # one step: from pure noise
        return
    assert got[-1] == 0 and all(a > b for a, b in zip(got, got[1:]))
    # step i (ascending) is a nearest integer to i (T - 1) / (steps - 1) (ties either way)
    up = got[::-1]
    assert all(abs(Fraction(up[i]) - Fraction(i * (T - 1), steps - 1)) <= Fraction(1, 2) for i in range(steps))


def test_respace_exact_small_chains_and_bad_step_counts():
    s = DDPMSchedule()
    assert respace(s, 1).tolist() == [999]
    assert respace(s, 2).tolist() == [999, 0]
    assert respace(s, 3).tolist() == [999, 500, 0]                    # 499.5 rounds half to even
    for bad in (0, -1, 1001, 2.0, None):
        with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 1000\]"):
            respace(s, bad)


# ----------------------------------------------------------------------------- chains, x_T, draws

def test_explicit_timestep_chain_is_followed_and_computed_by_hand():
    s = DDPMSchedule()
    x_T = torch.randn(2, 5, 3, generator=seeded(1), dtype=torch.float64)
    c = torch.randn(2, 5, 3, generator=seeded(2), dtype=torch.float64)
    seen = []

    def eps_fn(x, t):                                                 # eps = x - c: depends on x
        seen.append(t.tolist())
        return x - c
    for steps in ([900, 420, 7], (900, 420, 7), torch.tensor([900, 420, 7])):
        seen.clear()
        out = ddim_sample(eps_fn, (2, 5, 3), steps, s, x_T=x_T, dtype=torch.float64)
        assert seen == [[900, 900], [420, 420], [7, 7]]
        x = x_T.clone()
        for t, tp in ((900, 420), (420, 7), (7, -1)):                 # Song et al. eq. 12, eta = 0
            a, ap = abar_lin(t), (abar_lin(tp) if tp >= 0 else 1.0)
            e = x - c
            x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
            x = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e
        assert torch.allclose(out, x, atol=1e-10)
    assert torch.equal(x_T, torch.randn(2, 5, 3, generator=seeded(1), dtype=torch.float64))  # not in place
    seen.clear()
    ddpm_sample(eps_fn, (2, 5, 3), [900, 420, 7], s, generator=seeded(0), dtype=torch.float64)
    assert seen == [[900, 900], [420, 420], [7, 7]]


@pytest.mark.parametrize("steps", [[5, 5, 2], [5, 6, 2], [5, 2, 3], [5, 2, -1], [-1], [1000, 10], [1000],
                                   [1005, 3, 0]])
def test_bad_explicit_timesteps_raise(steps):
    s = DDPMSchedule()
    for sampler in (ddim_sample, ddpm_sample):
        with pytest.raises(ValueError, match=r"strictly decreasing within \[0, 999\]"):
            sampler(zero_eps, (1, 2, 2), steps, s, generator=seeded(0))


def test_x_T_is_the_start_and_its_shape_is_checked():
    s = DDPMSchedule()
    x_T = torch.randn(2, 4, 3, generator=seeded(5))
    # one DDIM step from t = 999 with eps = 0: x_0 = x_T / sqrt(abar_999)
    out = ddim_sample(zero_eps, [2, 4, 3], 1, s, x_T=x_T)
    assert torch.allclose(out, x_T / math.sqrt(abar_lin(999)), rtol=1e-5)
    for sampler in (ddim_sample, ddpm_sample):
        with pytest.raises(ValueError, match=r"x_T has shape \(2, 4, 3\), expected \(2, 4, 2\)"):
            sampler(zero_eps, (2, 4, 2), 3, s, x_T=x_T)


def test_samplers_draw_x_T_and_the_step_noise_from_the_generator_in_the_requested_dtype():
    s = DDPMSchedule()
    shape = (3, 4, 2)
    out = ddim_sample(zero_eps, shape, 1, s, generator=seeded(7), dtype=torch.float64)
    want = torch.randn(shape, generator=seeded(7), dtype=torch.float64) / math.sqrt(abar_lin(999))
    assert out.dtype == torch.float64 and torch.allclose(out, want, rtol=1e-12, atol=0)
    # DDPM over [999, 500]: x_T, then one posterior step with noise z, then the last (noiseless) step
    out = ddpm_sample(zero_eps, shape, [999, 500], s, generator=seeded(8), dtype=torch.float64)
    g = seeded(8)
    x, z = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    a, ap = abar_lin(999), abar_lin(500)
    alpha, beta = a / ap, 1 - a / ap
    x0 = x / math.sqrt(a)
    x = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(alpha) * (1 - ap) / (1 - a) * x \
        + math.sqrt(beta * (1 - ap) / (1 - a)) * z
    assert out.dtype == torch.float64 and torch.allclose(out, x / math.sqrt(ap), rtol=1e-10, atol=1e-12)
    # no generator: still samples (fresh noise), float32 on the CPU by default
    for o in (ddim_sample(zero_eps, shape, 3, s), ddim_sample(zero_eps, shape, 3, s, eta=1.0),
              ddpm_sample(zero_eps, shape, 3, s)):
        assert o.shape == shape and o.dtype == torch.float32 and torch.isfinite(o).all()
    # a CPU generator, the state on another device (meta stands for a GPU): x_T is drawn on the
    # generator's device, then moved; the model sees it there (stopped at once: no arithmetic on
    # meta tensors, slow to set up)
    class Stop(Exception):
        pass

    def where(x, t):
        raise Stop(x.device.type, x.dtype, t.device.type)
    for sampler in (ddim_sample, ddpm_sample):
        with pytest.raises(Stop) as stop:
            sampler(where, shape, 2, s, generator=seeded(0), device="meta", dtype=torch.float64)
        assert stop.value.args == ("meta", torch.float64, "meta")


# ----------------------------------------------------------------------------- steps, clip_x0

def _x_with_x0(x0, eps, a):
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * eps


def test_clip_x0_clamps_the_x0_prediction_and_rederives_eps_only_when_asked():
    s = DDPMSchedule()
    t, tp = 500, 300
    a, ap = abar_lin(t), abar_lin(tp)
    x0_true = torch.tensor([[[-3.0, -0.5, 0.2, 2.5], [1.5, -1.2, 0.9, -0.99]]], dtype=torch.float64)
    eps = torch.randn(x0_true.shape, generator=seeded(0), dtype=torch.float64)
    x = _x_with_x0(x0_true, eps, a)
    for bound in (1.0, 2.0):
        x0c = x0_true.clamp(-bound, bound)
        eps_c = (x - math.sqrt(a) * x0c) / math.sqrt(1 - a)              # eps re-derived from x0c
        out, x0 = ddim_step(s, x, eps, t, tp, clip_x0=bound)
        assert torch.allclose(x0, x0c, atol=1e-12)
        assert torch.allclose(out, math.sqrt(ap) * x0c + math.sqrt(1 - ap) * eps_c, atol=1e-10)
        z = torch.randn(x.shape, generator=seeded(1), dtype=torch.float64)
        out, x0 = ddpm_step(s, x, eps, t, tp, noise=z, clip_x0=bound)
        alpha, beta = a / ap, 1 - a / ap
        mean = math.sqrt(ap) * beta / (1 - a) * x0c + math.sqrt(alpha) * (1 - ap) / (1 - a) * x
        assert torch.allclose(x0, x0c, atol=1e-12)
        assert torch.allclose(out, mean + math.sqrt(beta * (1 - ap) / (1 - a)) * z, atol=1e-10)
    # not asked: x0 beyond [-1, 1] is kept
    out, x0 = ddim_step(s, x, eps, t, tp)
    assert torch.allclose(x0, x0_true, atol=1e-10)
    assert torch.allclose(out, _x_with_x0(x0_true, eps, ap), atol=1e-10)


def test_samplers_with_clip_x0_end_inside_the_bound():
    s = DDPMSchedule()
    x_T = 3 * torch.randn(2, 6, 3, generator=seeded(2), dtype=torch.float64)
    for sampler in (ddim_sample, ddpm_sample):
        out = sampler(zero_eps, (2, 6, 3), 1, s, x_T=x_T, clip_x0=1.0)   # one step: out = x0
        assert torch.allclose(out, (x_T / math.sqrt(abar_lin(999))).clamp(-1, 1), atol=1e-12)
        free = sampler(zero_eps, (2, 6, 3), 1, s, x_T=x_T)
        assert free.abs().max() > 10                                      # unclipped: x_T / sqrt(abar)


def test_ddim_step_defaults_to_eta_0_and_steps_report_missing_arguments():
    s = DDPMSchedule()
    x, eps = (torch.randn(2, 3, 2, generator=seeded(k), dtype=torch.float64) for k in (0, 1))
    a, ap = abar_lin(600), abar_lin(100)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    out, _ = ddim_step(s, x, eps, 600, 100)                              # no eta, no noise
    assert torch.allclose(out, math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps, atol=1e-10)
    with pytest.raises(ValueError, match="eta > 0 needs `noise`"):
        ddim_step(s, x, eps, 600, 100, eta=0.5)
    with pytest.raises(ValueError, match="needs `noise` for every step but the last"):
        ddpm_step(s, x, eps, 600, 100)
    with pytest.raises(ValueError, match="variance must be 'posterior' or 'beta', got 'fixed'"):
        ddpm_step(s, x, eps, 600, 100, noise=x, variance="fixed")


# ----------------------------------------------------------------------------- diffusion_loss

class Recorder:
    """A plain callable model (no `training`, no `sample_drops`): records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, **kw):
        self.calls.append({"x_t": x_t, "t": t, **kw})
        return 0.5 * x_t


def test_diffusion_loss_draws_t_then_noise_from_the_generator_and_is_l_simple():
    s = DDPMSchedule()
    x0 = torch.randn(6, 5, 3, generator=seeded(0), dtype=torch.float64)
    cond = {"speech": torch.ones(6, 5, 2)}
    model = Recorder()
    loss = diffusion_loss(model, s, x0, cond, generator=seeded(11))
    g = seeded(11)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    call = model.calls[0]
    assert torch.equal(call["t"], t) and set(call) == {"x_t", "t", "speech"}  # no drop flags
    a = torch.tensor([abar_lin(k) for k in t.tolist()], dtype=torch.float64).view(-1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise                               # Ho et al. eq. 4
    assert call["x_t"].dtype == torch.float64 and torch.allclose(call["x_t"], x_t, rtol=0, atol=1e-12)
    want = ((0.5 * x_t).float() - noise.float()).square().mean()
    assert loss.dtype == torch.float32 and torch.allclose(loss, want, rtol=1e-6)
    # without a generator: fresh draws, still a finite loss
    assert torch.isfinite(diffusion_loss(Recorder(), s, x0, cond)) and len(model.calls) == 1


class Dropper(Recorder):
    """A callable with `sample_drops` but no `training` attribute: not in train mode."""

    def sample_drops(self, n, generator=None, device=None):
        raise AssertionError("drops drawn for a model that is not in train mode")


def test_diffusion_loss_draws_no_drops_without_train_mode():
    x0 = torch.randn(2, 4, 20, generator=seeded(0))
    model = Dropper()
    diffusion_loss(model, DDPMSchedule(), x0, {}, generator=seeded(0))
    assert set(model.calls[0]) == {"x_t", "t"}


class DDPWrapper(torch.nn.Module):
    """Like DistributedDataParallel: the model in .module; no sample_drops of its own."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *a, **kw):
        return self.module(*a, **kw)


def _spy_forward(model):
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_diffusion_loss_drops_conditions_only_in_train_mode_with_the_given_probabilities():
    p = {"p_drop_speech": 0.5, "p_drop_stats": 0.2, "p_drop_hint": 0.8}
    n, length = 2000, 2
    x, _, cond = inputs(n, length)
    s = DDPMSchedule()
    for wrap in (False, True):
        model = tiny_model(**p)
        calls = _spy_forward(model)
        model.train()
        runner = DDPWrapper(model).train() if wrap else model
        with torch.no_grad():
            diffusion_loss(runner, s, x, cond, generator=seeded(4))
        g = seeded(4)                                                  # t, noise, then the drops
        torch.randint(0, 1000, (n,), generator=g)
        torch.randn(x.shape, generator=g)
        u = torch.rand(3, n, generator=g)
        got = calls[0]
        for i, k in enumerate(("drop_speech", "drop_stats", "drop_hint")):
            assert torch.equal(got[k], u[i] < p["p_" + k]), k
            assert abs(got[k].float().mean().item() - p["p_" + k]) < 0.04, k
        model.eval()                                                   # eval: no drops at all
        runner = DDPWrapper(model).eval() if wrap else model
        with torch.no_grad():
            diffusion_loss(runner, s, x[:4], {k: v[:4] for k, v in cond.items()}, generator=seeded(4))
        assert not {"drop_speech", "drop_stats", "drop_hint"} & set(calls[1])


# ----------------------------------------------------------------------------- guidance

from test_stage2 import Spy  # noqa: E402  (records each call's x, t and conditions)


def _passes(model, x, t, cond):
    with torch.no_grad():
        kw = {"drop_stats": False, "drop_hint": False}
        return model(x, t, **cond, drop_speech=False, **kw), model(x, t, **cond, drop_speech=True, **kw)


def test_cfg_w0_is_one_unconditional_pass_and_w1_one_conditional_pass():
    spy = Spy(tiny_model())
    x, t, cond = inputs()
    eps_c, eps_u = _passes(spy.model, x, t, cond)
    for w, want, dropped in ((0.0, eps_u, True), (1.0, eps_c, False), (0, eps_u, True), (1, eps_c, False)):
        spy.calls.clear()
        with torch.no_grad():
            got = cfg_model_fn(spy, cond, w=w)(x, t)
        assert torch.equal(got, want)
        assert len(spy.calls) == 1 and spy.calls[0]["x"].shape[0] == 3   # one forward, N samples
        assert spy.calls[0]["drop_speech"].tolist() == [dropped] * 3


def test_cfg_default_w_is_2_5_and_unbatched_equals_batched():
    model = tiny_model()
    x, t, cond = inputs()
    eps_c, eps_u = _passes(model, x, t, cond)
    with torch.no_grad():
        assert torch.allclose(cfg_model_fn(model, cond)(x, t), eps_u + 2.5 * (eps_c - eps_u), atol=1e-5)
        for w in (2.5, -0.5, 4.0):
            b = cfg_model_fn(model, cond, w=w, batched=True)(x, t)
            u = cfg_model_fn(model, cond, w=w, batched=False)(x, t)
            assert torch.allclose(b, u, atol=1e-5) and torch.allclose(u, eps_u + w * (eps_c - eps_u), atol=1e-5)
        # a condition given as None (no hint) is passed on as None to both passes, not concatenated
        no_hint = {**cond, "hint": None}
        c, u = _passes(model, x, t, no_hint)
        for batched in (True, False):
            got = cfg_model_fn(model, no_hint, w=2.0, batched=batched)(x, t)
            assert torch.allclose(got, u + 2.0 * (c - u), atol=1e-5)


def test_cfg_keeps_stats_and_hint_in_every_pass_even_in_train_mode():
    """A model in train mode draws a drop for every flag left None (here with probability 1):
    the guidance passes must set all three flags themselves."""
    model = tiny_model(p_drop_speech=1.0, p_drop_stats=1.0, p_drop_hint=1.0)
    x, t, cond = inputs()
    eps_c, eps_u = _passes(model, x, t, cond)                         # eval: explicit flags
    model.train()
    with torch.no_grad():
        assert torch.equal(cfg_model_fn(model, cond, w=1.0)(x, t), eps_c)
        assert torch.equal(cfg_model_fn(model, cond, w=0.0)(x, t), eps_u)
        for batched in (True, False):
            got = cfg_model_fn(model, cond, w=3.0, batched=batched)(x, t)
            assert torch.allclose(got, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5)


def _rescaled_by_hand(x, eps_g, eps_c, abar, r):
    """rescale_guided_x0 written out in float64, per sample: x0 from eps, the guided x0's
    deviations from its frame mean scaled to the conditional x0's (population) std over frames."""
    x, eps_g, eps_c = x.double(), eps_g.double(), eps_c.double()
    out = torch.empty_like(x)
    for i, a in enumerate(abar):
        x0g = (x[i] - math.sqrt(1 - a) * eps_g[i]) / math.sqrt(a)
        x0c = (x[i] - math.sqrt(1 - a) * eps_c[i]) / math.sqrt(a)
        mg = x0g.mean(0)
        sg = ((x0g - mg) ** 2).mean(0).sqrt()
        sc = ((x0c - x0c.mean(0)) ** 2).mean(0).sqrt()
        x0 = r * (mg + (x0g - mg) * sc / sg) + (1 - r) * x0g
        out[i] = (x[i] - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return out


def test_cfg_rescale_is_rescale_guided_x0_of_the_guided_and_conditional_passes():
    s = DDPMSchedule()
    model = tiny_model()
    x, t, cond = inputs(3, 8, seed=3)
    t = torch.tensor([950, 500, 30])
    eps_c, eps_u = _passes(model, x, t, cond)
    eps_g = eps_u + 2.5 * (eps_c - eps_u)
    abar = [abar_lin(k) for k in t.tolist()]
    for r in (1.0, 0.5, 0.25):
        want = _rescaled_by_hand(x, eps_g, eps_c, abar, r)
        with torch.no_grad():
            for batched in (True, False):
                got = cfg_model_fn(model, cond, w=2.5, rescale=r, schedule=s, batched=batched)(x, t)
                assert got.dtype == x.dtype and torch.allclose(got.double(), want, atol=2e-4), (r, batched)
    with torch.no_grad():                                              # rescale 0: plain CFG
        assert torch.allclose(cfg_model_fn(model, cond, w=2.5, rescale=0.0, schedule=s)(x, t), eps_g, atol=1e-5)


def test_rescale_guided_x0_exact_values_and_default_full_rescale():
    g = seeded(6)
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    eps_c, eps_g = torch.randn(2, 10, 3, generator=g, dtype=torch.float64), 3 * torch.randn(2, 10, 3, generator=g,
                                                                                            dtype=torch.float64)
    for abar in (0.9999, 0.3, 0.004):                                  # a float abar, float64 state
        want = _rescaled_by_hand(x, eps_g, eps_c, [abar, abar], 1.0)
        assert torch.allclose(rescale_guided_x0(x, eps_g, eps_c, abar), want, rtol=1e-10, atol=1e-10)
    abar = torch.tensor([0.9, 0.05], dtype=torch.float64)              # or one abar per sample
    want = _rescaled_by_hand(x, eps_g, eps_c, abar.tolist(), 0.3)
    assert torch.allclose(rescale_guided_x0(x, eps_g, eps_c, abar, 0.3), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rescale", [-0.1, 1.01, 2.0, float("nan")])
def test_cfg_bad_rescale_raises(rescale):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"rescale must be in \[0, 1\]"):
        cfg_model_fn(model, {}, 2.5, rescale=rescale, schedule=DDPMSchedule())


def test_cfg_rescale_bounds_are_accepted_and_a_schedule_is_required():
    model = tiny_model()
    for r in (0.0, 1.0, 0, 1):
        cfg_model_fn(model, {}, 2.5, rescale=r, schedule=DDPMSchedule())
    cfg_model_fn(model, {}, 2.5, rescale=0.0)                         # plain CFG needs no schedule
    with pytest.raises(ValueError, match="rescale > 0 needs the diffusion schedule"):
        cfg_model_fn(model, {}, 2.5, rescale=0.5)
