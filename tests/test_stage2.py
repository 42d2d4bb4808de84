"""Stage-2 motion DiT and its diffusion: shapes, config, adaLN-Zero, framewise vs global
modulation, sum vs token conditioning, null embeddings, the schedule and sampler formulas
checked by hand, classifier-free guidance and its rescale, and real learning checks (a tiny
model learns a toy speech -> motion map; its generated std follows m_sigma under CFG). CPU only."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ifmdm_data.errors import ConfigError
from ifmdm_model.stage2.diffusion import (DDPMSchedule, cfg_model_fn, ddim_sample, ddim_step, ddpm_sample,
                                   ddpm_step, diffusion_loss, rescale_guided_x0, respace)
from ifmdm_model.stage2.guidance import FramewiseTemporalGuidance, MotionHint, MotionStatisticsGuidance
from ifmdm_model.stage2.model import STAGE2_CONFIGS, MotionDiT, Stage2Config, build_stage2


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per module


def inputs(n=2, length=32, d=20, s=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, d, generator=g)                        # (N, T, D)
    t = torch.randint(0, 1000, (n,), generator=g)
    cond = {"speech": torch.randn(n, length, s, generator=g), "m_mu": torch.randn(n, d, generator=g) * 0.3,
            "m_sigma": torch.rand(n, d, generator=g) * 0.2, "hint": torch.randn(n, d, generator=g) * 0.3}
    return x, t, cond


def randomised(model: MotionDiT, seed=0) -> MotionDiT:
    """A model whose zero-initialised layers are random too, so that every path shows in eps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny(**kw) -> MotionDiT:
    torch.manual_seed(0)
    return build_stage2("M2-tiny", **kw).eval()


# ----------------------------------------------------------------------------- model

@pytest.mark.parametrize("name,length", [("M2-tiny", 32), ("M2-A0", 8)])
def test_registry_sizes_give_eps_of_the_input_shape(name, length):
    cfg = STAGE2_CONFIGS[name]
    model = build_stage2(name).eval()
    x, t, cond = inputs(2, length)
    with torch.no_grad():
        eps = model(x, t, **cond)
    assert eps.shape == (2, length, cfg.motion_dim)
    assert (cfg.depth, cfg.hidden, cfg.heads) == {"M2-tiny": (2, 64, 4), "M2-A0": (6, 512, 8)}[name]


@pytest.mark.parametrize("length", [1, 7, 32, 300])
def test_any_sequence_length_and_speech_dim(length):
    model = randomised(tiny(speech_dim=768))
    x, t, cond = inputs(2, length, s=768)
    with torch.no_grad():
        eps = model(x, t, **cond)
    assert eps.shape == (2, length, 20) and torch.isfinite(eps).all()
    if length > model.cfg.max_frames:            # beyond the cache: computed on the fly, same codes
        assert torch.allclose(model.positions(length)[:model.cfg.max_frames], model.pos)


def test_config_round_trip_and_explicit_errors():
    cfg = STAGE2_CONFIGS["M2-A0"]
    assert Stage2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key.*'width'"):
        Stage2Config.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(ConfigError, match="modulation"):
        build_stage2("M2-tiny", modulation="per-clip")
    with pytest.raises(ConfigError, match="heads"):
        build_stage2("M2-tiny", heads=5)
    with pytest.raises(ConfigError, match="p_drop_speech"):
        build_stage2("M2-tiny", p_drop_speech=1.5)
    with pytest.raises(ConfigError, match=r"'conditioning' must be one of \('sum', 'tokens'\), got 'concat'"):
        build_stage2("M2-tiny", conditioning="concat")
    with pytest.raises(ConfigError, match=r"'motion_stats' must be one of \('clip', 'window'\), got 'video'"):
        build_stage2("M2-tiny", motion_stats="video")
    with pytest.raises(ConfigError, match="unknown stage-2 model"):
        build_stage2("M2-huge")
    with pytest.raises(ConfigError, match="unknown override"):
        build_stage2("M2-tiny", speech=768)
    model = tiny()
    x, t, cond = inputs(2, 16)
    with pytest.raises(ValueError, match="speech must have shape"):
        model(x, t, **{**cond, "speech": torch.randn(2, 15, 80)})
    with pytest.raises(ValueError, match="drop_speech"):
        model(x, t, **cond, drop_speech=torch.zeros(3, dtype=torch.bool))


def test_checkpoint_configs_without_the_newer_keys_keep_their_behaviour():
    """A model_config written before `conditioning` / `motion_stats` existed loads as "sum" /
    "clip" (what it was trained with), and its weights fit the model that config builds."""
    old = STAGE2_CONFIGS["M2-tiny"].to_dict()
    for key in ("conditioning", "motion_stats"):
        del old[key]
    cfg = Stage2Config.from_dict(old)
    assert (cfg.conditioning, cfg.motion_stats) == ("sum", "clip")
    torch.manual_seed(0)
    MotionDiT(cfg).load_state_dict(build_stage2("M2-tiny").state_dict())   # strict: same names
    with pytest.raises(ConfigError, match="mapping"):
        Stage2Config.from_dict(["M2-tiny"])


def test_adaln_zero_fresh_model_predicts_exactly_zero():
    model = build_stage2("M2-tiny")
    x, t, cond = inputs(3, 32)
    for mode in (model.train(), model.eval()):
        assert torch.equal(mode(x, t, **cond), torch.zeros(3, 32, 20))
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and not block.speech_in.weight.any()


def test_framewise_modulation_differs_per_frame_global_is_one_vector_per_sequence():
    x, t, cond = inputs(2, 16)
    mods = {}
    for modulation in ("framewise", "global"):
        model = randomised(tiny(modulation=modulation))
        assert isinstance(model.temporal_guidance, FramewiseTemporalGuidance)
        with torch.no_grad():
            c = model.conditioning(x, t, **cond)["c"]
            mods[modulation] = [m.expand(2, 16, 64) for m in model.blocks[0].modulation(c)]
        assert c.shape == ((2, 16, 64) if modulation == "framewise" else (2, 1, 64))
    for shift_scale_gate in mods["framewise"]:                       # (N, T, H): frames differ
        assert (shift_scale_gate[:, 1:] - shift_scale_gate[:, :1]).abs().amax() > 1e-3
    for shift_scale_gate in mods["global"]:                          # identical for every frame
        assert torch.equal(shift_scale_gate[:, 1:], shift_scale_gate[:, :1].expand(2, 15, 64))


def test_global_without_residual_sees_speech_only_through_its_frame_mean():
    """The ablation baseline: reversing the speech frames changes nothing; framewise notices."""
    x, t, cond = inputs(2, 16)
    flipped = {**cond, "speech": cond["speech"].flip(1)}
    for modulation, residual, same in (("global", False, True), ("global", True, False),
                                       ("framewise", False, False)):
        model = randomised(tiny(modulation=modulation, speech_residual=residual))
        assert (model.blocks[0].speech_in is None) == (not residual)
        with torch.no_grad():
            a, b = model(x, t, **cond), model(x, t, **flipped)
        assert torch.allclose(a, b, atol=1e-5) == same, (modulation, residual)


@pytest.mark.parametrize("conditioning", ["sum", "tokens"])
def test_null_embeddings_replace_dropped_conditions(conditioning):
    model = randomised(tiny(conditioning=conditioning))
    assert isinstance(model.stats_guidance, MotionStatisticsGuidance)
    assert isinstance(model.motion_hint, MotionHint)
    x, t, cond = inputs(2, 16)
    other = inputs(2, 16, seed=5)[2]
    with torch.no_grad():
        for flag, keys in (("drop_speech", ["speech"]), ("drop_stats", ["m_mu", "m_sigma"]),
                           ("drop_hint", ["hint"])):
            changed = {**cond, **{k: other[k] for k in keys}}
            kept = model(x, t, **cond)
            assert not torch.allclose(kept, model(x, t, **changed))  # the condition matters...
            dropped = model(x, t, **cond, **{flag: True})
            assert torch.equal(dropped, model(x, t, **changed, **{flag: True}))  # ...unless dropped
            assert torch.allclose(dropped, model(x, t, **{**cond, **{k: None for k in keys}}), atol=1e-6)
            per_sample = model(x, t, **cond, **{flag: torch.tensor([True, False])})
            assert torch.allclose(per_sample[0], dropped[0], atol=1e-6)
            assert torch.allclose(per_sample[1], kept[1], atol=1e-6)
    # the learned null embedding is what is used (and trained) where the flag is set
    for flag, null in (("drop_speech", model.temporal_guidance.null), ("drop_stats", model.stats_guidance.null),
                       ("drop_hint", model.motion_hint.null)):
        for on in (False, True):
            model.zero_grad(set_to_none=True)
            model(x, t, **cond, **{flag: on}).square().sum().backward()
            assert (null.grad is not None and null.grad.abs().sum() > 0) == on


def test_training_mode_draws_drops_with_the_config_probabilities():
    model = tiny(p_drop_speech=0.5, p_drop_stats=0.0, p_drop_hint=1.0).train()
    drops = model.sample_drops(4000, torch.Generator().manual_seed(0))
    assert abs(drops["drop_speech"].float().mean().item() - 0.5) < 0.05
    assert not drops["drop_stats"].any() and drops["drop_hint"].all()


def test_bf16_autocast_forward_and_loss_backward():
    model = randomised(tiny()).train()
    x, t, cond = inputs(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = model(x, t, **cond)
        loss = diffusion_loss(model, DDPMSchedule(), x, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert eps.dtype == torch.bfloat16 and torch.isfinite(eps).all() and loss.dtype == torch.float32
    assert model.x_embed.weight.grad is not None


def test_token_conditioning_prepends_hint_mean_std_tokens_and_returns_frames_only():
    """conditioning="tokens" (the paper's concatenation): the blocks see [hint, m_mu, m_sigma,
    frames], the adaLN input holds no statistics or hint, the output has the frames only."""
    x, t, cond = inputs(2, 16)
    other = inputs(2, 16, seed=5)[2]
    for modulation in ("framewise", "global"):
        model = randomised(tiny(conditioning="tokens", modulation=modulation))
        assert model.stats_guidance.null.shape == (2, 64) and model.motion_hint.null.shape == (64,)
        seen = []
        hook = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append((a[0].shape, a[1].shape)))
        with torch.no_grad():
            eps = model(x, t, **cond)
            cnd = model.conditioning(x, t, **cond)
            cnd_other = model.conditioning(x, t, **{**cond, "m_mu": other["m_mu"], "hint": other["hint"]})
        hook.remove()
        assert eps.shape == (2, 16, 20)
        assert seen[0] == ((2, 3 + 16, 64), ((2, 3 + 16, 64) if modulation == "framewise" else (2, 1, 64)))
        assert cnd["tokens"].shape == (2, 3, 64) and "clip" not in cnd
        assert torch.equal(cnd["c"], cnd_other["c"])                  # c: t + speech only
        assert not torch.equal(cnd["tokens"][:, :2], cnd_other["tokens"][:, :2])   # hint, m_mu tokens
        assert torch.equal(cnd["tokens"][:, 2], cnd_other["tokens"][:, 2])          # m_sigma token kept
        with torch.no_grad():                                         # drops replace whole tokens
            d = model.conditioning(x, t, **cond, drop_stats=torch.tensor([True, False]),
                                   drop_hint=torch.tensor([False, True]))["tokens"]
        assert torch.equal(d[0, 1:], model.stats_guidance.null) and torch.equal(d[1, 1:], cnd["tokens"][1, 1:])
        assert torch.equal(d[1, 0], model.motion_hint.null) and torch.equal(d[0, 0], cnd["tokens"][0, 0])
    # fresh (adaLN-Zero) token model predicts zero too, and trains
    model = build_stage2("M2-tiny", conditioning="tokens").train()
    assert torch.equal(model(x, t, **cond), torch.zeros(2, 16, 20))
    diffusion_loss(model, DDPMSchedule(), x, cond, generator=torch.Generator().manual_seed(0)).backward()
    assert model.stats_guidance.mu[0].weight.grad is not None


# ----------------------------------------------------------------------------- diffusion math

def abar_by_hand(t: int) -> float:
    """Ho et al.'s linear schedule written out: beta_i = 1e-4 + (0.02 - 1e-4) i / 999."""
    return math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(t + 1))


def test_schedules_and_q_sample_match_the_closed_form():
    s = DDPMSchedule()
    assert s.betas.shape == (1000,) and abs(s.abar(499) - abar_by_hand(499)) < 1e-12
    x0, noise = torch.randn(3, 8, 4, dtype=torch.float64), torch.randn(3, 8, 4, dtype=torch.float64)
    t = torch.tensor([0, 250, 999])
    xt = s.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = abar_by_hand(ti)
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-10)
    cos = DDPMSchedule(beta_schedule="cosine")
    f = [math.cos((k / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for k in (0, 301)]
    assert abs(cos.abar(300) - f[1] / f[0]) < 1e-9 and cos.betas.max() <= 0.999
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMSchedule(beta_schedule="sigmoid")
    assert respace(s, 1000).tolist() == list(range(999, -1, -1))
    assert respace(s, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    with pytest.raises(ValueError, match="steps"):
        respace(s, 0)


def test_one_ddpm_step_is_algorithm_2():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 8, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (600, 1):
        beta = 1e-4 + (0.02 - 1e-4) * t / 999
        a, a_prev = abar_by_hand(t), abar_by_hand(t - 1)
        sigma2 = (1 - a_prev) / (1 - a) * beta                        # beta-tilde_t
        by_hand = (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta) + math.sqrt(sigma2) * z
        out, _ = ddpm_step(s, x, eps, t, t - 1, noise=z)
        assert torch.allclose(out, by_hand, atol=1e-9)
        out_beta, _ = ddpm_step(s, x, eps, t, t - 1, noise=z, variance="beta")
        assert torch.allclose(out_beta, by_hand - math.sqrt(sigma2) * z + math.sqrt(beta) * z, atol=1e-9)
    last, x0 = ddpm_step(s, x, eps, 0, -1)                           # no noise on the last step
    assert torch.allclose(last, x0) and torch.allclose(x0, (x - math.sqrt(1e-4) * eps) / math.sqrt(1 - 1e-4))


def test_ddim_eta0_is_the_deterministic_formula_and_eta1_is_the_ddpm_posterior():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(2, 8, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t, t_prev = 700, 650                                             # a respaced jump
    a, a_prev = abar_by_hand(t), abar_by_hand(t_prev)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    out, _ = ddim_step(s, x, eps, t, t_prev, eta=0.0)
    assert torch.allclose(out, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, atol=1e-9)
    for t, t_prev in ((700, 699), (700, 650)):
        ddim, _ = ddim_step(s, x, eps, t, t_prev, eta=1.0, noise=z)
        ddpm, _ = ddpm_step(s, x, eps, t, t_prev, noise=z)
        assert torch.allclose(ddim, ddpm, atol=1e-9)


def test_samplers_recover_the_data_with_the_exact_denoiser():
    """With the Bayes-optimal eps of known data, the full samplers must land on that data."""
    s = DDPMSchedule()
    target = torch.linspace(-1, 1, 8).view(1, 8, 1).expand(4, 8, 2)

    def point_eps(x, t):                                             # data = one point
        a = s.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()
    g = torch.Generator().manual_seed(0)
    for out in (ddim_sample(point_eps, (4, 8, 2), 10, s, generator=g),
                ddim_sample(point_eps, (4, 8, 2), 25, s, eta=1.0, generator=g),
                ddpm_sample(point_eps, (4, 8, 2), 50, s, generator=g)):
        assert torch.allclose(out, target, atol=1e-4)

    mu, sd = 0.5, 0.3                                                # data ~ N(mu, sd^2)

    def gauss_eps(x, t):
        a = s.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sd ** 2 + 1 - a)
    steps = []
    for out in (ddpm_sample(gauss_eps, (4096, 1, 2), None, s, generator=g,
                            callback=lambda d: steps.append(d["t"])),
                ddim_sample(gauss_eps, (4096, 1, 2), 1000, s, generator=g)):
        assert abs(out.mean().item() - mu) < 0.02 and abs(out.std().item() - sd) < 0.015
    assert steps == list(range(999, -1, -1))


# ----------------------------------------------------------------------------- guidance

class Spy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, **kw):
        self.calls.append({"x": x, "t": t, **kw})
        return self.model(x, t, **kw)


def test_cfg_w1_is_the_conditional_prediction_and_w_combines_both_passes():
    model = randomised(tiny())
    x, t, cond = inputs(3, 16)
    with torch.no_grad():
        eps_c = model(x, t, **cond, drop_speech=False, drop_stats=False, drop_hint=False)
        eps_u = model(x, t, **cond, drop_speech=True, drop_stats=False, drop_hint=False)
        assert torch.equal(cfg_model_fn(model, cond, w=1.0)(x, t), eps_c)
        for batched in (True, False):
            got = cfg_model_fn(model, cond, w=2.5, batched=batched)(x, t)
            assert torch.allclose(got, eps_u + 2.5 * (eps_c - eps_u), atol=1e-5)


def test_cfg_unconditional_half_drops_only_the_speech():
    spy = Spy(randomised(tiny()))
    x, t, cond = inputs(3, 16)
    with torch.no_grad():
        cfg_model_fn(spy, cond, w=2.5)(x, t)
    assert len(spy.calls) == 1                                       # one batched forward
    call = spy.calls[0]
    assert call["drop_speech"].tolist() == [False] * 3 + [True] * 3
    assert not call["drop_stats"].any() and not call["drop_hint"].any()
    for k in ("speech", "m_mu", "m_sigma", "hint"):
        assert torch.equal(call[k], torch.cat([cond[k], cond[k]]))
    # numerically: the w = 0 (unconditional) prediction ignores speech but not stats or hint
    other = inputs(3, 16, seed=9)[2]
    with torch.no_grad():
        uncond = cfg_model_fn(spy, cond, w=0.0)(x, t)
        assert torch.equal(uncond, cfg_model_fn(spy, {**cond, "speech": other["speech"]}, w=0.0)(x, t))
        for k in ("m_mu", "hint"):
            assert not torch.allclose(uncond, cfg_model_fn(spy, {**cond, k: other[k]}, w=0.0)(x, t))


def test_guidance_rescale_keeps_the_conditional_std_over_frames_and_the_guided_mean():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 4, generator=g)
    eps_c, eps_g = torch.randn(3, 16, 4, generator=g), 3 * torch.randn(3, 16, 4, generator=g)
    t = torch.tensor([900, 400, 20])
    a = s.alphas_cumprod[t].float().view(-1, 1, 1)

    def x0(eps):
        return (x - (1 - a).sqrt() * eps) / a.sqrt()
    out = rescale_guided_x0(x, eps_g, eps_c, s.alphas_cumprod[t], 1.0)
    assert torch.allclose(x0(out).std(1), x0(eps_c).std(1), rtol=1e-3)
    assert torch.allclose(x0(out).mean(1), x0(eps_g).mean(1), atol=1e-3)
    assert torch.allclose(rescale_guided_x0(x, eps_g, eps_c, s.alphas_cumprod[t], 0.0), eps_g, atol=1e-4)
    half = rescale_guided_x0(x, eps_g, eps_c, s.alphas_cumprod[t], 0.5)
    assert torch.allclose(half, (out + eps_g) / 2, atol=1e-3)         # x0 is affine in eps
    model = randomised(tiny())
    x, t, cond = inputs(2, 16)
    with pytest.raises(ValueError, match="needs the diffusion schedule"):
        cfg_model_fn(model, cond, 2.5, rescale=1.0)
    with pytest.raises(ValueError, match="rescale"):
        cfg_model_fn(model, cond, 2.5, rescale=1.5, schedule=s)
    with torch.no_grad():                                             # w = 1: nothing to rescale
        assert torch.equal(cfg_model_fn(model, cond, 1.0, rescale=1.0, schedule=s)(x, t),
                           cfg_model_fn(model, cond, 1.0)(x, t))


# ----------------------------------------------------------------------------- learning

S, D, T = 8, 4, 16


def toy_batch(n, g, proj, amap):
    """Speech = smooth random envelope e_f times a fixed projection + noise; motion = a fixed
    linear map of e_f. Returns x0 (n, T, D), conditions, e (n, T)."""
    z = torch.randn(n, 1, T + 1 + 8, generator=g)
    k = torch.hann_window(9, periodic=False).view(1, 1, 9)
    e = F.conv1d(z, k / k.sum())[:, 0]                               # (n, T + 1) smooth
    e = (e - e.mean(1, keepdim=True)) / (e.std(1, keepdim=True) + 1e-6)
    speech = e[:, 1:, None] * proj + 0.1 * torch.randn(n, T, S, generator=g)
    motion = 0.3 * e[..., None] * amap                               # (n, T + 1, D)
    x0 = motion[:, 1:]
    return x0, {"speech": speech, "m_mu": x0.mean(1), "m_sigma": x0.std(1), "hint": motion[:, 0]}, e[:, 1:]


def envelope_corr(motion, e, amap):
    """Mean over samples of the Pearson correlation (over frames) of motion along amap with e."""
    p = motion @ amap / amap.norm()
    p, e = p - p.mean(1, keepdim=True), e - e.mean(1, keepdim=True)
    return ((p * e).sum(1) / (p.norm(dim=1) * e.norm(dim=1) + 1e-8)).mean().item()


def test_tiny_model_learns_a_toy_speech_to_motion_map():
    g = torch.Generator().manual_seed(0)
    proj, amap = torch.randn(S, generator=g), torch.randn(D, generator=g)
    amap = 2 * amap / amap.norm()
    torch.manual_seed(0)
    model = build_stage2("M2-tiny", motion_dim=D, speech_dim=S, n_frames=T).train()
    schedule = DDPMSchedule()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(300):
        x0, cond, _ = toy_batch(32, g, proj, amap)
        loss = diffusion_loss(model, schedule, x0, cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    model.eval()
    x0, cond, e = toy_batch(64, torch.Generator().manual_seed(123), proj, amap)
    shuffled = {**cond, "speech": cond["speech"].roll(1, dims=0)}
    out = ddim_sample(cfg_model_fn(model, cond, 2.5), x0.shape, 20, schedule,
                      generator=torch.Generator().manual_seed(7))
    out_shuffled = ddim_sample(cfg_model_fn(model, shuffled, 2.5), x0.shape, 20, schedule,
                               generator=torch.Generator().manual_seed(7))
    r, r_shuffled = envelope_corr(out, e, amap), envelope_corr(out_shuffled, e, amap)
    assert r > 0.8 and abs(r_shuffled) < 0.2, (r, r_shuffled)


def std_toy(n, g, proj, sigma=None):
    """A toy where the clip's std is the condition: each of D dims is a smooth signal over T
    frames, half of its variance a function of the speech (a smooth envelope e_d projected
    into S speech channels) and half independent, standardised over frames and scaled by the
    clip's sigma (log-uniform in [0.04, 0.8], the same for all dims) around a random mean. So
    m_sigma = sigma exactly, and speech explains only part of the motion (as on real data)."""
    def smooth():
        z = torch.randn(n * D, 1, T + 1 + 8, generator=g)
        k = torch.hann_window(9, periodic=False).view(1, 1, 9)
        return F.conv1d(z, k / k.sum())[:, 0].view(n, D, T + 1).transpose(1, 2)   # (n, T + 1, D)

    def standard(u):
        u = u - u.mean(1, keepdim=True)
        return u / (u.std(1, keepdim=True, unbiased=False) + 1e-6)
    e, r = standard(smooth()), standard(smooth())
    u = standard(0.7 * e + math.sqrt(1 - 0.7 ** 2) * r)
    if sigma is None:
        sigma = torch.empty(n, 1, 1).uniform_(math.log(0.04), math.log(0.8), generator=g).exp()
    motion = 0.3 * torch.randn(n, 1, D, generator=g) + sigma * u      # (n, T + 1, D)
    x0 = motion[:, 1:]
    speech = e[:, 1:] @ proj + 0.1 * torch.randn(n, T, S, generator=g)
    return x0, {"speech": speech, "m_mu": x0.mean(1), "m_sigma": x0.std(1, unbiased=False), "hint": motion[:, 0]}


def test_generated_std_follows_m_sigma_under_the_default_guidance():
    """Speech CFG (w = 2.5) multiplies the speech-explained part of the motion by w, so plain
    CFG gives ~1.5-1.7x the requested std on this toy (and fails the 25% bound); with the
    guidance rescale (inference's default) the std over frames stays within 25% of m_sigma,
    as the conditional prediction's (w = 1) does. Measured (seed 0): w = 1 1.24 / 0.93 / 0.98,
    plain CFG 1.91 / 1.59 / 1.64, rescaled 1.07 / 0.84 / 0.91 for m_sigma 0.1 / 0.3 / 0.6; so
    with the rescale disabled the last assertion fails (checked by hand)."""
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(D, S, generator=g)
    torch.manual_seed(0)
    model = build_stage2("M2-tiny", motion_dim=D, speech_dim=S, n_frames=T).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    schedule = DDPMSchedule()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 800
    for i in range(steps):
        x0, cond = std_toy(32, g, proj)
        loss = diffusion_loss(model, schedule, x0, cond, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():                                        # EMA over the last 2/3
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 if i < steps // 3 else 0.02)

    def ratio(sigma, w, rescale):
        x0, cond = std_toy(32, torch.Generator().manual_seed(5), proj, sigma=sigma)
        cond["m_sigma"] = torch.full_like(cond["m_sigma"], sigma)
        eps_fn = cfg_model_fn(ema, cond, w, rescale=rescale, schedule=schedule)
        out = ddim_sample(eps_fn, x0.shape, 25, schedule, generator=torch.Generator().manual_seed(7))
        return out.std(1, unbiased=False).mean().item() / sigma
    sigmas = (0.1, 0.3, 0.6)
    cond_only = [ratio(s, 1.0, 0.0) for s in sigmas]
    plain = [ratio(s, 2.5, 0.0) for s in sigmas]
    rescaled = [ratio(s, 2.5, 1.0) for s in sigmas]
    # the model learned m_sigma (w = 1 measured 1.24 / 0.93 / 0.98 here; its low-sigma floor
    # varies with the seed: 1.06-1.26 over 4 seeds, hence the looser bound)
    assert all(abs(r - 1) < 0.35 for r in cond_only), cond_only
    assert max(plain) > 1.25, plain                                  # the toy shows the problem
    assert all(abs(r - 1) < 0.25 for r in rescaled), (rescaled, plain)


def test_stage2_learning_checks_run_on_the_synthetic_toy():
    """Smoke run of benchmarks/learning_stage2.py (5 steps per variant: nothing is learned, so
    only the table's shape and the checks' names are asserted)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from learning_stage2 import VARIANTS, stage2_checks, synthetic_windows

    train, held = synthetic_windows(seed=0, n_train_clips=2, n_heldout_clips=1, clip_frames=48)
    assert train["motion"].shape[1:] == (16, 8) and held["m_sigma"].shape == (3, 8)
    rows, checks = stage2_checks(train, held, quick=True, steps=5, log=None)
    assert [r["variant"] for r in rows] == [v[0] for v in VARIANTS]
    assert all(math.isfinite(r["held-out loss"]) and -1 <= r["sync r"] <= 1 for r in rows)
    names = [c[0] for c in checks]
    assert any("framewise+residual best" in n for n in names) and any("m_sigma within 25%" in n for n in names)
    assert any("global without residual worst" in n for n in names)
    assert all(isinstance(ok, bool) and detail for _, ok, detail in checks)
    with pytest.raises(ValueError, match="lack"):
        stage2_checks({k: v for k, v in train.items() if k != "hint"}, held, quick=True, steps=1)
