"""Reference parity: networks, preconditioners and losses against numbers computed with the reference
study's code (see tests/parity/README.md for how they were produced).

The weights come from a rule keyed by tensor name (tests/parity/rule.py), so the reference code is not
needed here: the same weights are rebuilt and must give the reference's outputs.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmem.config import TrainConfig
from diffmem.nn import build_denoiser
from diffmem.train.losses import per_sample_loss, sample_sigma
from parity.rule import CONFIGS, COUNT_ONLY, fill_weights, inputs

GOLDEN = Path(__file__).parent / "parity"
# the reference's top-level modules and the diffmem modules that hold the same tensors
TOP_LEVEL = {"map_noise": ("map_noise",), "map_label": ("map_label",), "map_layer0": ("map_layer0",),
             "map_layer1": ("map_layer1",), "enc": ("conv_in", "enc", "aux"),
             "dec": ("mid", "dec", "norm_out", "conv_out")}


def _golden(key: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{key}.npz", allow_pickle=False) as f:
        return dict(f)


def _backbone(cfg):
    D = build_denoiser(cfg).eval()
    fill_weights(D.backbone)
    return D


def _close(got: torch.Tensor, want: np.ndarray, tol: np.ndarray | float, what: str) -> None:
    err = np.abs(got.detach().double().numpy() - want.astype(np.float64))
    worst = float((err / tol).max())
    assert worst <= 1.0, f"{what}: |diffmem − reference| reaches {worst:.3g}× the tolerance (max error {err.max():.3g})"


@pytest.mark.parametrize("key", [*CONFIGS, *COUNT_ONLY])
def test_parameter_counts_per_top_level_module(key):
    want = json.loads((GOLDEN / "counts.json").read_text())["parameters_per_top_level_module"][key]
    net = build_denoiser({**CONFIGS, **COUNT_ONLY}[key]).backbone
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in net.named_children()}
    got = {ref: sum(n.get(m, 0) for m in ours) for ref, ours in TOP_LEVEL.items() if ref in want}
    assert got == want and sum(n.values()) == sum(want.values())


def test_the_basic_configs_have_the_reference_parameter_counts():
    total = lambda key: sum(json.loads((GOLDEN / "counts.json").read_text())  # noqa: E731
                            ["parameters_per_top_level_module"][key].values())
    assert (total("basic-ddpmpp"), total("basic-ddpmpp-4blocks"), total("basic-ncsnpp")) == \
        (35_125_251, 55_732_739, 35_788_035)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_backbone_output_matches_the_reference(key):
    cfg, inp, want = CONFIGS[key], inputs(key), _golden(key)
    D = _backbone(cfg)
    labels = torch.from_numpy(inp["labels"]) if cfg.label_dim else None
    with torch.no_grad():
        out = D.backbone(torch.from_numpy(inp["x"]), torch.from_numpy(inp["c_noise"]), labels)
    _close(out, want["backbone"], 1e-5, f"{key} backbone")


@pytest.mark.parametrize("precond", ["vp", "ve", "edm"])
@pytest.mark.parametrize("key", list(CONFIGS))
def test_preconditioned_output_and_training_loss_match_the_reference(key, precond):
    """The same draws give the reference's σ; at the reference's σ (and, for VP, its float32 c_noise) the
    denoiser output and the per-image loss (summed over pixels) agree to 1e-5 relative."""
    cfg = dataclasses.replace(CONFIGS[key], precond=precond)
    inp, want = inputs(key), _golden(key)
    g = lambda name: want[f"{precond}/{name}"]  # noqa: E731
    D = _backbone(cfg)
    u, z = torch.from_numpy(inp["u"]).double(), torch.from_numpy(inp["z"]).double()
    _close(sample_sigma(cfg, u, z), g("sigma"), 2e-6 * g("sigma"), f"{key} {precond} σ")

    sigma = torch.from_numpy(g("sigma")).double()
    c_skip, c_out, c_in, c_noise = D.coefficients(sigma)
    c_tol = 1e-6 * np.abs(g("c_noise")) + 1e-6
    if precond == "vp":  # the reference computes ln(1 + σ²) in float32: 2^-24 / σ² relative
        c_tol = c_tol + 2.0**-24 / sigma.numpy() ** 2 * np.abs(g("c_noise"))
    _close(c_noise, g("c_noise"), c_tol, f"{key} {precond} c_noise")

    seen = {}
    hooks = [D.register_forward_hook(lambda m, a, out: seen.update(D=out))]
    if precond == "vp":  # feed the backbone the reference's float32 c_noise (checked just above)
        ref_c = torch.from_numpy(g("c_noise"))
        hooks.append(D.backbone.register_forward_pre_hook(lambda m, a: (a[0], ref_c, *a[2:])))
    images = torch.from_numpy(inp["images"]).float() / 127.5 - 1
    labels = torch.from_numpy(inp["labels"]) if cfg.label_dim else None
    with torch.no_grad():
        loss = per_sample_loss(D, images, sigma, torch.from_numpy(inp["noise"]), labels, cfg, norm="sum")
    for h in hooks:
        h.remove()
    scale = np.maximum(1.0, np.abs(c_out.numpy())).reshape(-1, 1, 1, 1)
    _close(seen["D"], g("D"), 1e-5 * scale, f"{key} {precond} D(y + σn; σ)")
    _close(loss, g("loss_per_image"), 1e-5 * g("loss_per_image"), f"{key} {precond} loss per image")
    assert float(loss.mean()) == pytest.approx(float(g("loss")), rel=1e-5)  # summed over pixels, mean over batch


# ----------------------------------------------------------------------------------------------
# Schedules: the reference training loop's lr and EMA β per step, its data order


def _schedules() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "schedules.npz", allow_pickle=False) as f:
        return dict(f)


# the reference's --ema_mode values as diffmem training configs (batch 64, lr 2e-4, the other defaults:
# warm-up 200 epochs, half-life 10 epochs, ramp-up 0.05)
EMA_MODES = {
    "mode1": dict(ema_mode="halflife"),
    "mode2": dict(ema_mode="compensated"),
    "mode3": dict(ema_mode="halflife", ema_halflife_kimg=500.0, ema_halflife_epochs=None, ema_rampup_ratio=None),
    "mode4": dict(ema_mode="final", ema_decay=0.9),
}


@pytest.mark.parametrize("n", [250, 1000])
@pytest.mark.parametrize("mode", list(EMA_MODES))
def test_learning_rate_and_ema_decay_per_step_match_the_reference(mode, n):
    from diffmem.train.ema import ema_beta
    from diffmem.train.schedule import learning_rate
    from diffmem.train.validate import validate_train

    want = _schedules()
    B = int(want["batch"])
    t = TrainConfig(epochs=1.0, batch=B, lr=2e-4, **EMA_MODES[mode])
    validate_train(t, n)
    steps, nimg = want[f"{n}/{mode}/step"], want[f"{n}/{mode}/nimg"]
    assert np.array_equal(nimg, steps * B)  # images counted before each step
    lr = np.array([learning_rate(t, int(k), n) for k in nimg])
    beta = np.array([ema_beta(t, int(k), B, n) for k in nimg])
    np.testing.assert_allclose(lr, want[f"{n}/{mode}/lr"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(beta, want[f"{n}/{mode}/beta"], rtol=1e-12, atol=1e-300)


def test_the_fixed_data_order_is_the_reference_samplers():
    from diffmem.train.dataset import DataOrder

    want = _schedules()
    for n in (10, 250):
        order = DataOrder(n, 7, seed=1024, order="fixed")
        got = np.concatenate([order.indices(s) for s in range(len(want[f"order/{n}"]) // 7 + 1)])
        assert np.array_equal(got[:len(want[f"order/{n}"])], want[f"order/{n}"])


@pytest.mark.slow
def test_the_training_loop_applies_the_reference_schedules(tmp_path):
    """Through diffmem's loop: the logged lr of the first steps and the EMA β of steps 0 and 1 (recovered from
    the raw and EMA weights of the resumable states) are the reference's, for |D| = 250 in the default mode."""
    from safetensors.torch import load_file

    from diffmem.config import ModelConfig
    from diffmem.io import ImageSet, save_image_set
    from diffmem.train import train

    want = _schedules()
    B = int(want["batch"])
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    save_image_set(data, ImageSet(images=rng.integers(0, 256, (250, 1, 8, 8), dtype=np.uint8), labels=None))
    model = ModelConfig(channels=8, channel_mult=(1,), blocks=1, attn_resolutions=(), dropout=0.0, precond="vp")
    # the reference's defaults, at lr 1 so that the first steps move the weights far beyond float32 rounding
    t = TrainConfig(kimg=B * 3 / 1000, batch=B, lr=1.0, log_kimg=B / 1000, device="cpu")
    run = tmp_path / "run"
    states = []
    for stop in (1, 2):
        train(data, run, model, t, stop_after_steps=stop)
        s = load_file(str(run / "state.safetensors"))
        states.append(({k[6:]: v for k, v in s.items() if k.startswith("model.")},
                       {k[4:]: v for k, v in s.items() if k.startswith("ema.")}))
    (p1, e1), (p2, e2) = states
    assert all(torch.equal(e1[k], p1[k]) for k in p1)  # β of step 0 is 0: the EMA is the raw weights
    num = sum(float(((e2[k] - p2[k]).double() * (p1[k] - p2[k]).double()).sum()) for k in p1)
    den = sum(float(((p1[k] - p2[k]).double() ** 2).sum()) for k in p1)
    assert num / den == pytest.approx(float(want["250/mode2/beta"][1]), rel=1e-4)
    lrs = [json.loads(line)["lr"] for line in (run / "stats.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(lrs, want["250/mode2/lr"][:2] / 2e-4, rtol=1e-12, atol=0)  # golden at lr 2e-4
