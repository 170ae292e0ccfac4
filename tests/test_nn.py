"""The U-Net backbone and the VP / VE / EDM preconditioners against closed forms."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffmem.config import ModelConfig
from diffmem.errors import UsageError
from diffmem.nn import build_denoiser, num_skips, validate_model, vp_sigma, vp_sigma_inv
from diffmem.nn.layers import FourierEmbedding, PositionalEmbedding, Resample
from diffmem.nn.precond import PRECONDITIONERS
from diffmem.train.losses import loss_weight, sample_sigma

TINY = ModelConfig(resolution=8, in_channels=1, channels=8, channel_mult=(1, 2), blocks=1, attn_resolutions=(),
                   dropout=0.0, precond="edm")
SIGMAS = np.array([0.002, 0.02, 0.3, 1.0, 5.0, 80.0])


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (including the zero-initialised ones) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _closed_forms(precond: str, s: np.ndarray, cfg: ModelConfig):
    """EDM paper 2022, Table 1, in float64 NumPy."""
    if precond == "edm":
        sd = cfg.sigma_data
        return sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2), 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4
    if precond == "vp":
        bd, bm = cfg.vp_beta_d, cfg.vp_beta_min
        t = (np.sqrt(bm**2 + 2 * bd * np.log1p(s**2)) - bm) / bd
        return np.ones_like(s), -s, 1 / np.sqrt(s**2 + 1), (cfg.vp_M - 1) * t
    return np.ones_like(s), s, np.ones_like(s), np.log(s / 2)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_coefficients_match_table_1(precond):
    cfg = dataclasses.replace(TINY, precond=precond)
    D = build_denoiser(cfg)
    got = D.coefficients(torch.as_tensor(SIGMAS, dtype=torch.float64))
    for g, want in zip(got, _closed_forms(precond, SIGMAS, cfg)):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_denoiser_is_c_skip_x_plus_c_out_F(precond):
    cfg = dataclasses.replace(TINY, precond=precond)
    D = build_denoiser(cfg)
    _randomize(D)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    s = torch.as_tensor(SIGMAS)
    coefs = _closed_forms(precond, SIGMAS, cfg)
    c_skip, c_out, c_in, c_noise = (torch.as_tensor(c).reshape(-1, 1, 1, 1) for c in coefs)
    F_x = D.backbone((c_in * x).float(), c_noise.reshape(-1).float()).double()
    torch.testing.assert_close(D(x, s), c_skip * x + c_out * F_x, rtol=1e-6, atol=1e-6)
    assert D(x, s).dtype == torch.float64 and D(x.float(), s.float()).dtype == torch.float32


def test_vp_schedule_and_sigma_range():
    bd, bm = 19.9, 0.1
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    want = np.sqrt(np.expm1(0.5 * bd * t.numpy() ** 2 + bm * t.numpy()))
    np.testing.assert_allclose(vp_sigma(t, bd, bm).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(vp_sigma_inv(vp_sigma(t, bd, bm), bd, bm).numpy(), t.numpy(), rtol=1e-9)
    D = build_denoiser(dataclasses.replace(TINY, precond="vp"))
    assert D.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * bd + bm) - 1), rel=1e-12)  # ≈ 152
    assert D.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * bd * 1e-10 + bm * 1e-5)), rel=1e-9)
    ve = build_denoiser(dataclasses.replace(TINY, precond="ve"))
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    edm = build_denoiser(TINY)
    assert (edm.sigma_min, edm.sigma_max) == (0.0, math.inf)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_loss_weight_makes_effective_weight_one(precond):
    # λ(σ)·c_out(σ)² = 1 for all three (EDM paper 2022, §5: unit effective weight)
    cfg = dataclasses.replace(TINY, precond=precond)
    s = torch.as_tensor(SIGMAS)
    c_out = _closed_forms(precond, SIGMAS, cfg)[1]
    np.testing.assert_allclose(loss_weight(cfg, s).numpy() * c_out**2, 1.0, rtol=1e-12)


def test_training_sigma_distributions():
    """The loss's σ distribution of each preconditioning comes from the model config alone, one field per
    parameter (EDM paper 2022, Table 1)."""
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    edm = dataclasses.replace(TINY, P_mean=-1.2, P_std=1.2)
    np.testing.assert_allclose(sample_sigma(edm, u, z).numpy(), np.exp(-1.2 + 1.2 * z.numpy()), rtol=1e-12)
    wide = dataclasses.replace(TINY, P_mean=0.5, P_std=2.0)
    np.testing.assert_allclose(sample_sigma(wide, u, z).numpy(), np.exp(0.5 + 2.0 * z.numpy()), rtol=1e-12)
    ve = dataclasses.replace(TINY, precond="ve")
    np.testing.assert_allclose(sample_sigma(ve, u, z).numpy(), [0.02, math.sqrt(0.02 * 100), 100], rtol=1e-12)
    ve_own = dataclasses.replace(ve, ve_sigma_min=0.5, ve_sigma_max=8.0)
    np.testing.assert_allclose(sample_sigma(ve_own, u, z).numpy(), [0.5, 2.0, 8.0], rtol=1e-12)
    vp = dataclasses.replace(TINY, precond="vp")
    s = sample_sigma(vp, u, z).numpy()
    assert s[0] == pytest.approx(build_denoiser(vp).sigma_max, rel=1e-12)  # u = 0 → t = 1
    assert s[2] == pytest.approx(build_denoiser(vp).sigma_min, rel=1e-12)  # u = 1 → t = ε_t


SHAPE_CASES = [  # every knob the study varies, on tiny models
    dict(),
    dict(arch="ncsnpp", embedding="fourier"),
    dict(arch="ncsnpp", encoder="standard", channel_mult_noise=1),
    dict(encoder="residual", precond="vp"),
    dict(embedding="fourier", precond="ve", label_dim=5),
    dict(label_dim=16),
    dict(skip_mask=(False, True, False, True)),
    dict(skip_mask=(False,) * 4, precond="vp"),
    dict(resolution=16, channel_mult=(1, 2, 2), blocks=2, attn_resolutions=(8,), dropout=0.1,
         skip_mask=(True, True, True, False, False, False, True, True, True)),
    dict(resolution=16, channel_mult=(1, 1, 2), arch="ncsnpp", encoder="residual", embedding="fourier",
         attn_resolutions=(16, 4), label_dim=3),
    dict(in_channels=3, channel_mult=(2, 2, 2), blocks=2, attn_resolutions=(4,)),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "base")
def test_output_shapes_for_every_knob(case):
    cfg = dataclasses.replace(TINY, **case)
    D = build_denoiser(cfg)
    _randomize(D)
    n = 3
    x = torch.randn(n, cfg.in_channels, cfg.resolution, cfg.resolution)
    labels = torch.arange(n) % cfg.label_dim if cfg.label_dim else None
    out = D(x, torch.tensor([0.1, 1.0, 10.0]), labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert D.resolution == cfg.resolution and D.in_channels == cfg.in_channels and D.label_dim == cfg.label_dim
    if cfg.label_dim:  # the label changes the output
        assert not torch.allclose(out, D(x, torch.tensor([0.1, 1.0, 10.0]), (labels + 1) % cfg.label_dim))


def test_disabled_skip_feeds_zeros():
    cfg = dataclasses.replace(TINY, skip_mask=(True, True, False, True))  # skip 2: down block's output at 4×4
    D = build_denoiser(cfg)
    _randomize(D)
    seen = []
    # decoder blocks eat skips last-first: 3, 2 at 4×4, then (up block), 1, 0 at 8×8
    D.backbone.dec[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    D(torch.randn(2, 1, 8, 8), 1.0)
    skip_ch = 8  # the down block keeps C channels
    assert seen[0][:, -skip_ch:].abs().max() == 0 and seen[0][:, :-skip_ch].abs().max() > 0
    assert num_skips(cfg) == 4


def test_bad_configs_are_refused_with_the_config_path_named():
    """The library names a field by its config path (the command line shows its flag instead), never a flag."""
    with pytest.raises(UsageError, match=r"^model.skip_mask: 3 flags is not valid; expected 4 flags"):
        build_denoiser(dataclasses.replace(TINY, skip_mask=(True,) * 3))
    with pytest.raises(UsageError, match=r"^model.precond: 'vx' is not valid; expected one of edm, ve, vp$"):
        build_denoiser(dataclasses.replace(TINY, precond="vx"))
    with pytest.raises(UsageError, match=r"^model.channel_mult: \[1, 1, 1\] is not valid; .* 6×6 .* divisible by 4"):
        build_denoiser(dataclasses.replace(TINY, resolution=6, channel_mult=(1, 1, 1)))
    with pytest.raises(UsageError, match=r"^model.arch: 'adm' is not valid; expected one of ddpmpp, ncsnpp$"):
        build_denoiser(dataclasses.replace(TINY, arch="adm"))
    with pytest.raises(UsageError, match=r"^base.model.channels: 6.5 is not valid"):
        validate_model(dataclasses.replace(TINY, channels=6.5), where="base.model")
    with pytest.raises(UsageError, match=r"^model.P_std: -1.0 is not valid; expected a finite number"):
        validate_model(dataclasses.replace(TINY, P_std=-1.0))
    with pytest.raises(UsageError, match=r"^model.ve_sigma_min: 200.0 is not valid; expected 0 < model.ve_sigma_min"):
        validate_model(dataclasses.replace(TINY, ve_sigma_min=200.0))
    with pytest.raises(UsageError, match=r"^model.vp_epsilon_t: 0.0 is not valid"):
        validate_model(dataclasses.replace(TINY, vp_epsilon_t=0.0))
    # before the data is known, the resolution levels are not checked
    validate_model(dataclasses.replace(TINY, resolution=6, channel_mult=(1, 1, 1)), resolution=False)
    D = build_denoiser(dataclasses.replace(TINY, label_dim=4))
    with pytest.raises(UsageError, match=r"^labels: None is not valid; expected a LongTensor of shape \(1,\)"):
        D(torch.zeros(1, 1, 8, 8), 1.0)
    with pytest.raises(UsageError, match=r"^sigma: shape \(2,\) is not valid; expected \(1,\) or a scalar"):
        D(torch.zeros(1, 1, 8, 8), torch.ones(2), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
def test_resampling_keeps_constants_and_box_is_average_pooling(taps):
    x = torch.full((1, 2, 8, 8), 3.0)
    down, up = Resample(taps, down=True), Resample(taps, down=False)
    assert down(x).shape == (1, 2, 4, 4) and up(x).shape == (1, 2, 16, 16)
    torch.testing.assert_close(down(x)[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))
    torch.testing.assert_close(up(x)[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    if taps == (1, 1):
        r = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(down(r), torch.nn.functional.avg_pool2d(r, 2))
        torch.testing.assert_close(up(r), r.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_positional_embedding_known_values():
    # [sin, cos] of c·f_i with f_i = 10⁻⁴^(i / (n − 1)): the lowest frequency is exactly 1e-4 (endpoint)
    e = PositionalEmbedding(8)(torch.tensor([0.0, 2.0]))
    freqs = np.array([1.0, 10_000 ** (-1 / 3), 10_000 ** (-2 / 3), 1e-4])
    np.testing.assert_allclose(e[1].numpy(), np.concatenate([np.sin(2 * freqs), np.cos(2 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(e[0].numpy(), [0, 0, 0, 0, 1, 1, 1, 1])


def test_fourier_embedding_known_values():
    emb = FourierEmbedding(6)
    f = emb.freqs.double().numpy()
    a = 2 * np.pi * 0.3 * f
    np.testing.assert_allclose(emb(torch.tensor([0.3]))[0].numpy(), np.concatenate([np.sin(a), np.cos(a)]), rtol=2e-5)


def test_arch_defaults_and_overrides():
    from diffmem.nn import noise_channels, resolved_encoder

    nc = dataclasses.replace(TINY, arch="ncsnpp")
    assert (resolved_encoder(nc), noise_channels(nc)) == ("residual", 16)  # NCSN++: residual encoder, 2C
    assert (resolved_encoder(TINY), noise_channels(TINY)) == ("standard", 8)  # DDPM++: standard, C
    own = dataclasses.replace(nc, encoder="standard", channel_mult_noise=3)
    assert (resolved_encoder(own), noise_channels(own)) == ("standard", 24)
    net = build_denoiser(nc).backbone
    assert net.map_layer0.in_features == 16 and len(net.aux) == 1
    assert len(build_denoiser(own).backbone.aux) == 0 and build_denoiser(own).backbone.map_layer0.in_features == 24
    with pytest.raises(UsageError, match="^model.channel_mult_noise: 0 is not valid"):
        build_denoiser(dataclasses.replace(TINY, channel_mult_noise=0))


def test_initialisation_scales():
    """Xavier-uniform everywhere; the last layer of each residual branch × 1e-5, the attention's q/k/v × √0.2;
    biases zero (bound b = √(6 / (fan_in + fan_out)), so |w| ≤ scale·b and std(w) ≈ scale·b/√3)."""
    torch.manual_seed(0)
    net = build_denoiser(dataclasses.replace(TINY, channels=32, attn_resolutions=(4,))).backbone

    def check(conv, scale):
        w = conv.weight.detach().double()
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        b = scale * math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= b and w.std() == pytest.approx(b / math.sqrt(3), rel=0.1)
        assert conv.bias.abs().max() == 0

    check(net.conv_out, 1e-5)
    check(net.conv_in, 1.0)
    for block in [*net.enc, *net.mid, *net.dec]:
        check(block.conv0, 1.0)
        check(block.conv1, 1e-5)
        if block.attention:
            check(block.qkv, math.sqrt(0.2))
            check(block.proj, 1e-5)


@pytest.mark.parametrize("precond", sorted(PRECONDITIONERS))
def test_untrained_model_starts_near_c_skip_x(precond):
    # the output convolution starts near zero (Xavier × 1e-5), so an untrained D(x; σ) ≈ c_skip(σ)·x
    cfg = dataclasses.replace(TINY, precond=precond)
    D = build_denoiser(cfg)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    c_skip, c_out = (torch.as_tensor(c).reshape(-1, 1, 1, 1) for c in _closed_forms(precond, SIGMAS, cfg)[:2])
    dev = (D(x, torch.as_tensor(SIGMAS)) - c_skip * x).abs() / c_out.abs()
    assert 0 < dev.max() < 1e-3


def test_label_embedding_trains_like_a_one_hot_linear():
    """The label path must follow a Linear (with bias) on √L·one_hot(label) under Adam, not only at initialisation."""
    from diffmem.nn.unet import UNet

    L, C = 1000, 8
    net = UNet(dataclasses.replace(TINY, label_dim=L, channels=C))
    emb = net.map_label
    assert emb.weight.shape == (L, C) and emb.weight.abs().max() <= math.sqrt(6 / (L + C))  # Xavier bound
    ref = torch.nn.Linear(L, C)
    with torch.no_grad():
        ref.weight.copy_(emb.weight.detach().T)
        ref.bias.copy_(emb.bias.detach())
    labels = torch.tensor([3, 7, 3])
    target = torch.randn(3, C, generator=torch.Generator().manual_seed(0))

    def step(params, embed):
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-2)
        for _ in range(2):
            opt.zero_grad()
            ((embed() - target) ** 2).sum().backward()
            opt.step()
        return embed().detach()

    ours = step(list(emb.parameters()), lambda: emb(labels))
    onehot = torch.nn.functional.one_hot(labels, L).float() * math.sqrt(L)
    theirs = step(list(ref.parameters()), lambda: ref(onehot))
    assert torch.allclose(ours, theirs, atol=1e-6)
