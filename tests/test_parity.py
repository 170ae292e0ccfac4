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
    _close(sample_sigma(cfg, TrainConfig(), u, z), g("sigma"), 2e-6 * g("sigma"), f"{key} {precond} σ")

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
