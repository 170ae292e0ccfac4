"""The U-Net backbone and the VP / VE / EDM preconditioners against closed forms."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffmem.config import ModelConfig, TrainConfig
from diffmem.errors import UsageError
from diffmem.nn import build_denoiser, num_skips, vp_sigma, vp_sigma_inv
from diffmem.nn.layers import PositionalEmbedding, Resample
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
    t = TrainConfig(P_mean=-1.2, P_std=1.2)
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(sample_sigma(TINY, t, u, z).numpy(), np.exp(-1.2 + 1.2 * z.numpy()), rtol=1e-12)
    ve = dataclasses.replace(TINY, precond="ve")
    np.testing.assert_allclose(sample_sigma(ve, t, u, z).numpy(), [0.02, math.sqrt(0.02 * 100), 100], rtol=1e-12)
    vp = dataclasses.replace(TINY, precond="vp")
    s = sample_sigma(vp, t, u, z).numpy()
    assert s[0] == pytest.approx(build_denoiser(vp).sigma_min, rel=1e-12)
    assert s[2] == pytest.approx(build_denoiser(vp).sigma_max, rel=1e-12)


SHAPE_CASES = [  # every knob the study varies, on tiny models
    dict(),
    dict(arch="ncsnpp", embedding="fourier", encoder="residual"),
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


def test_bad_configs_are_refused_with_the_option_named():
    with pytest.raises(UsageError, match="--skip-mask: 3 flags"):
        build_denoiser(dataclasses.replace(TINY, skip_mask=(True,) * 3))
    with pytest.raises(UsageError, match="--precond: 'vx'"):
        build_denoiser(dataclasses.replace(TINY, precond="vx"))
    with pytest.raises(UsageError, match="divisible by 4"):
        build_denoiser(dataclasses.replace(TINY, resolution=6, channel_mult=(1, 1, 1)))
    D = build_denoiser(dataclasses.replace(TINY, label_dim=4))
    with pytest.raises(UsageError, match="labels: None"):
        D(torch.zeros(1, 1, 8, 8), 1.0)


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
    e = PositionalEmbedding(8)(torch.tensor([0.0, 2.0]))
    freqs = (1 / 10_000) ** (np.arange(4) / 4)
    np.testing.assert_allclose(e[1].numpy(), np.concatenate([np.cos(2 * freqs), np.sin(2 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(e[0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("precond", sorted(PRECONDITIONERS))
def test_zero_initialised_model_starts_at_c_skip_x(precond):
    # the output convolution starts at zero, so an untrained D(x; σ) = c_skip(σ)·x
    cfg = dataclasses.replace(TINY, precond=precond)
    D = build_denoiser(cfg)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    c_skip = torch.as_tensor(_closed_forms(precond, SIGMAS, cfg)[0]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(D(x, torch.as_tensor(SIGMAS)), c_skip * x, rtol=0, atol=0)


def test_label_embedding_trains_like_a_one_hot_linear():
    """The label path must follow a Linear on √L·one_hot(label) under Adam, not only at initialisation."""
    from diffmem.nn.unet import UNet

    L, C = 1000, 8
    net = UNet(dataclasses.replace(TINY, label_dim=L, channels=C))
    table = net.map_label.weight  # L×C
    assert table.abs().max() <= math.sqrt(6 / (L + C))  # Xavier bound of the Linear
    ref = torch.nn.Linear(L, C, bias=False)
    with torch.no_grad():
        ref.weight.copy_(table.detach().T)
    labels = torch.tensor([3, 7, 3])
    target = torch.randn(3, C, generator=torch.Generator().manual_seed(0))

    def step(params, embed):
        opt = torch.optim.Adam(params, lr=1e-3)
        loss = ((embed() - target) ** 2).sum()
        loss.backward()
        opt.step()
        return embed().detach()

    ours = step([table], lambda: net.map_label(labels) * net.label_scale)
    onehot = torch.nn.functional.one_hot(labels, L).float() * math.sqrt(L)
    theirs = step(list(ref.parameters()), lambda: ref(onehot))
    assert torch.allclose(ours, theirs, atol=1e-6)
