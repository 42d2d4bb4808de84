"""Stage-1 motion autoencoder: shapes, gradients, local flow masks, losses, precision, checkpoints,
and a real learning check (a tiny model overfits four crops of skimage's astronaut). CPU only."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ifmdm_data.errors import ConfigError, MissingWeightsError
from ifmdm_model.stage1.losses import (VGG19_FILENAME, Stage1Loss, Stage1LossConfig, VGGPerceptual,
                                build_perceptual, d_loss, g_loss, local_flow_loss, r1_penalty)
from ifmdm_model.stage1.local_flow import LocalFlowModule, normalise_masks
from ifmdm_model.stage1.model import STAGE1_CONFIGS, MotionAutoencoder, build_discriminator, build_stage1

TINY = STAGE1_CONFIGS["S1-tiny"]
NO_VGG = Stage1LossConfig(perceptual=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: one torch thread per module


def images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1     # (N, 3, H, W) in [-1, 1]


def tiny(seed: int = 0, **kw) -> MotionAutoencoder:
    torch.manual_seed(seed)
    return build_stage1(replace(TINY, **kw))


@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("motion_dim", [20, 40])
def test_forward_shapes(groups, motion_dim):
    model = tiny(groups=groups, motion_dim=motion_dim).eval()
    a, m = images(2, 1), images(2, 2)
    with torch.no_grad():
        out = model(a, m)
        assert out["recon"].shape == (2, 3, 64, 64)
        assert out["motion"].shape == (2, motion_dim)
        assert out["motion"].abs().max() < 1                       # tanh
        res = [4, 8, 16, 32, 64]
        assert [t.shape for t in out["masks"]] == [(2, groups, r, r) for r in res]
        assert [t.shape for t in out["flows"]] == [(2, groups, 2, r, r) for r in res]
        # encode / decode (the inference path) reproduce forward
        appearance, _ = model.encode(a)
        assert [t.shape[-1] for t in appearance[:5]] == res
        # motion_decoder "directions" (default): the appearance latent z_a (N, style_dim) last
        assert len(appearance) == 6 and appearance[5].shape == (2, TINY.style_dim)
        _, motion = model.encode(m)
        torch.testing.assert_close(model.decode(appearance, motion), out["recon"],
                                   atol=1e-4, rtol=1e-4)      # batch of N vs 2N: rounding only
        # one appearance, many motions: the appearance list is broadcast
        many = model.decode([t[:1] for t in appearance], motion)
        torch.testing.assert_close(many[:1], model.decode([t[:1] for t in appearance], motion[:1]),
                                   atol=1e-4, rtol=1e-4)


def test_registry_and_config_errors():
    counts = {}
    for name, cfg in STAGE1_CONFIGS.items():
        with torch.device("meta"):                                 # no memory, no init cost
            model = build_stage1(name)
        counts[name] = sum(p.numel() for p in model.parameters())
        assert model.cfg.image_size == cfg.image_size and model.cfg.motion_dim == 20
    assert counts["S1-tiny"] < 1e6 < counts["S1-256"] <= counts["S1-512"]
    with pytest.raises(ConfigError, match="S1-huge"):
        build_stage1("S1-huge")
    with pytest.raises(ConfigError, match="groups"):
        build_stage1(replace(TINY, groups=5))                      # 5 does not divide 16 / 32 channels
    with pytest.raises(ConfigError, match="mask_norm"):
        build_stage1(replace(TINY, mask_norm="softmax"))


@pytest.mark.parametrize("groups,mask_norm", [(1, "paper"), (16, "paper"), (4, "spatial")])
def test_gradients_reach_every_parameter(groups, mask_norm):
    model = tiny(groups=groups, mask_norm=mask_norm)
    out = model(images(2, 3), images(2, 4))
    losses = Stage1Loss(NO_VGG)(out, images(2, 5))
    assert set(losses) == {"loss", "l1", "local_flow"}
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for block in model.decoder.blocks:                             # every group's mask logits learn
        w = block.local_flow.head.weight.grad.reshape(groups, 3, -1)  # (G, dx/dy/mask, ...)
        assert (w[:, 2].abs().sum(dim=-1) > 0).all()
        assert (w[:, :2].abs().sum(dim=(1, 2)) > 0).all()


def test_flow_checkpoint_gives_the_same_gradients():
    grads = []
    for use_checkpoint in (False, True):
        model = tiny(seed=0, groups=4, flow_checkpoint=use_checkpoint)
        Stage1Loss(NO_VGG)(model(images(2, 3), images(2, 4)), images(2, 5))["loss"].backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_mask_normalisation_sums_to_one_over_space():
    logits = torch.randn(2, 5, 7, 9) * 3                           # (N, G, H, W)
    masks = normalise_masks(logits, "paper")
    # the paper's softmax over W, then over H (every column sums to 1), as a distribution
    torch.testing.assert_close(masks, torch.softmax(torch.softmax(logits, -1), -2) / 9)
    torch.testing.assert_close(masks.sum(dim=(2, 3)), torch.ones(2, 5))
    torch.testing.assert_close(normalise_masks(logits, "spatial").sum(dim=(2, 3)), torch.ones(2, 5))
    torch.testing.assert_close(normalise_masks(logits, "spatial"),
                               torch.softmax(logits.reshape(2, 5, 63), -1).reshape(2, 5, 7, 9))
    # separable: the row softmax times the column softmax, renormalised over space
    sep = torch.softmax(logits, -1) * torch.softmax(logits, -2)
    torch.testing.assert_close(normalise_masks(logits, "separable"), sep / sep.sum(dim=(2, 3), keepdim=True))
    # inside the module too, for every scale of the model
    out = tiny(groups=4).eval()(images(2, 6), images(2, 7))
    for m in out["masks"]:
        torch.testing.assert_close(m.sum(dim=(2, 3)), torch.ones(2, 4))


def test_local_flow_identity_warp_and_group_weights():
    """Zero offsets warp A_l onto itself; the group weights sum to 1, so the combination is A_l."""
    torch.manual_seed(0)
    lfm = LocalFlowModule(channels=16, resolution=8, groups=4)
    torch.nn.init.zeros_(lfm.head.weight)
    torch.nn.init.normal_(lfm.head.bias)                           # mask logits differ per group
    lfm.head.bias.data.view(4, 3)[:, :2] = 0                      # offsets exactly 0
    feature, appearance = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    warped, masks, flows = lfm(feature, appearance)
    assert flows.abs().max() == 0
    torch.testing.assert_close(warped, appearance)
    # a shift of exactly one pixel to the right in normalised coordinates
    lfm.head.bias.data.view(4, 3)[:, 0] = math.atanh(2 / 8)
    warped, _, _ = lfm(feature, appearance)
    torch.testing.assert_close(warped[..., :-1], appearance[..., 1:])


def test_local_flow_loss_prefers_compact_masks():
    h = w = 32
    c = (torch.arange(h) * 2 + 1) / h - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")

    def blob(sigma, cx=0.3, cy=-0.2):
        g = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        return (g / g.sum()).expand(2, 4, h, w)                    # (N, G, H, W)

    uniform = torch.full((2, 4, h, w), 1.0 / (h * w))
    compact, wide = local_flow_loss([blob(0.05)]), local_flow_loss([blob(0.4)])
    spread = local_flow_loss([uniform])
    assert compact < 0.01 < wide < spread
    assert abs(spread.item() - 2 / 3) < 0.01                       # 1/3 per axis in [-1, 1]
    assert local_flow_loss([blob(0.05), uniform]) > compact        # averaged over scales


def _random_vgg19_file(folder):
    """A random-init torchvision vgg19 state dict (the features part, as the real file has it)."""
    from torchvision.models import vgg19

    with torch.device("meta"):
        features = vgg19(weights=None).features
    features = features.to_empty(device="cpu")
    torch.manual_seed(0)
    for m in features.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    path = folder / VGG19_FILENAME
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def test_vgg_perceptual_loads_local_weights(tmp_path):
    path = _random_vgg19_file(tmp_path)
    vgg = VGGPerceptual(tmp_path, pyramid=(1.0, 0.5))              # a folder holding the file
    assert all(not p.requires_grad for p in vgg.parameters())
    x, y = images(2, 8).requires_grad_(True), images(2, 9)
    assert vgg(y, y).item() == 0
    loss = vgg(x, y)
    assert loss > 0
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(VGGPerceptual(path, pyramid=(1.0, 0.5))(x, y), loss)  # the file
    losses = Stage1Loss(Stage1LossConfig(vgg_weights=str(path), vgg_pyramid=(1.0,)))(
        {"recon": x, "masks": [torch.rand(2, 4, 8, 8)]}, y)
    assert {"l1", "perceptual", "local_flow"} <= set(losses)


def test_vgg_perceptual_missing_or_absent(tmp_path):
    with pytest.raises(MissingWeightsError, match=VGG19_FILENAME):
        VGGPerceptual(tmp_path)
    with pytest.raises(MissingWeightsError, match="my_vgg.pth"):
        VGGPerceptual(tmp_path / "my_vgg.pth")
    with pytest.warns(UserWarning, match="perceptual loss is OFF"):
        assert build_perceptual(None) is None
    with pytest.warns(UserWarning, match="perceptual loss is OFF"):
        loss = Stage1Loss(Stage1LossConfig())
    assert loss.perceptual is None


def test_bf16_autocast_on_cpu():
    model = tiny(groups=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2, 10), images(2, 11))
        losses = Stage1Loss(NO_VGG)(out, images(2, 12))
    assert out["recon"].dtype == torch.bfloat16
    assert out["masks"][-1].dtype == torch.float32                 # masks and warps stay float32
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    a, m = images(2, 13), images(2, 14)
    model = tiny(seed=0).eval()
    save_file(model.state_dict(), str(tmp_path / "stage1.safetensors"))
    other = tiny(seed=1).eval()
    with torch.no_grad():
        assert not torch.equal(other(a, m)["recon"], model(a, m)["recon"])
        other.load_state_dict(load_file(str(tmp_path / "stage1.safetensors")))
        assert torch.equal(other(a, m)["recon"], model(a, m)["recon"])


def test_discriminator_and_gan_losses():
    torch.manual_seed(0)
    disc = build_discriminator(TINY)
    real, fake = images(3, 15), images(3, 16)                      # batch 3: minibatch-std group 3
    logits = disc(real)
    assert logits.shape == (3, 1)
    assert torch.isfinite(d_loss(logits, disc(fake))) and torch.isfinite(g_loss(disc(fake)))
    assert r1_penalty(disc, real) > 0
    crit = Stage1Loss(replace(NO_VGG, gan=0.1))
    out = {"recon": fake.requires_grad_(True), "masks": [torch.rand(3, 4, 8, 8)]}
    with pytest.raises(ValueError, match="discriminator"):
        crit(out, real)
    assert "gan_g" in crit(out, real, discriminator=disc)
    d = crit.discriminator_losses(disc, real, fake, r1=True)
    d["loss"].backward()
    assert {"d_loss", "r1"} <= set(d) and all(p.grad is not None for p in disc.parameters())


def _astronaut_frames():
    """Frame 0 (the appearance) and four shifted / rotated 64x64 crops of the head (motions)."""
    from skimage.data import astronaut

    img = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 512, 512)

    def crop(dx, dy, degrees, s=0.45, cx=-0.05, cy=-0.45):
        a = math.radians(degrees)
        theta = torch.tensor([[s * math.cos(a), -s * math.sin(a), cx + dx],
                              [s * math.sin(a), s * math.cos(a), cy + dy]])[None]
        grid = F.affine_grid(theta, (1, 3, 64, 64), align_corners=False)
        return F.grid_sample(img, grid, align_corners=False)     # (1, 3, 64, 64)

    targets = torch.cat([crop(0.06, 0, 0), crop(-0.05, 0.04, 8), crop(0, -0.06, -10),
                         crop(0.04, 0.05, 5)])
    return crop(0, 0, 0), targets


def test_tiny_model_overfits_astronaut():
    frame0, targets = _astronaut_frames()
    appearance = frame0.expand(4, -1, -1, -1)
    model = tiny(seed=0, groups=4, channel_base=512, channel_max=16, style_dim=32)
    crit = Stage1Loss(NO_VGG)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    history = []
    for _ in range(150):
        losses = crit(model(appearance, targets), targets)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        history.append(losses["l1"].item())
    with torch.no_grad():
        recon = model(appearance, targets)["recon"]
    final = F.l1_loss(recon, targets).item()
    # the best output that ignores the motion: the per-pixel median of the targets
    motion_blind = (targets.median(0, keepdim=True).values - targets).abs().mean().item()
    assert final < 0.5 * history[0], (history[0], final)
    assert final < motion_blind, (final, motion_blind)
    # each reconstruction is closest to its own motion target: the motion code is used
    dist = (recon[:, None] - targets[None]).abs().mean(dim=(2, 3, 4))  # (recon, target)
    assert torch.equal(dist.argmin(dim=1), torch.arange(4)), dist


def test_directions_decoder_uses_an_orthonormal_basis_around_the_appearance_latent():
    model = tiny(seed=0).eval()                                    # motion_decoder "directions"
    q = model.decoder.basis()                                      # (style_dim, D)
    assert q.shape == (TINY.style_dim, TINY.motion_dim)
    torch.testing.assert_close(q.t() @ q, torch.eye(TINY.motion_dim), atol=1e-5, rtol=0)
    appearance, m = model.encode(images(3, 8))
    style = model.decoder.style(appearance, m)
    torch.testing.assert_close(style, appearance[-1] + m @ q.t())
    # zero motion: the style is the appearance latent itself
    torch.testing.assert_close(model.decoder.style(appearance, torch.zeros_like(m)), appearance[-1])
    with pytest.raises(ValueError, match="appearance latent"):
        model.decoder.style(appearance[:-1], m)


def test_coarse_to_fine_flow_is_the_upsampled_coarse_flow_plus_a_residual():
    torch.manual_seed(0)
    lfm = LocalFlowModule(channels=8, resolution=8, groups=2)
    torch.nn.init.zeros_(lfm.head.weight)                          # residual offsets exactly 0
    coarse = torch.rand(1, 2, 2, 4, 4) * 0.2 - 0.1                 # (N, G, 2, H/2, W/2)
    _, _, flow = lfm(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8), coarse)
    up = F.interpolate(coarse.reshape(1, 4, 4, 4), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(flow, up.reshape(1, 2, 2, 8, 8))
    _, _, alone = lfm(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8))
    assert alone.abs().max() == 0                                  # without it: the paper's flows
    # in the decoder: on only when the config says so
    assert tiny(coarse_to_fine=True).decoder.coarse_to_fine and not tiny().decoder.coarse_to_fine


def test_layers_initialise_themselves_when_built_alone():
    torch.manual_seed(0)
    from ifmdm_model.stage1.layers import EqualConv2d, EqualLinear
    conv, lin = EqualConv2d(16, 16, 3), EqualLinear(16, 8, bias_init=1.0, lr_mul=0.01)
    assert 0.8 < conv.weight.std() < 1.2 and torch.all(conv.bias == 0)
    assert 80 < lin.weight.std() < 120 and torch.allclose(lin.bias * lin.lr_mul, torch.ones(8))
    assert torch.isfinite(conv(torch.randn(1, 16, 8, 8))).all()
