"""Training losses of VP, VE and EDM (EDM paper 2022, Table 1): σ distribution and weight λ(σ).

Both come from the model config (``model.precond`` and the parameters beside it, :class:`~diffmem.config.ModelConfig`).

Each loss is E_{σ, y, n} λ(σ) ‖D(y + σn; σ) − y‖². Per image it is summed over the pixels (``sum``,
as the reference study's code does, so that Adam's ε and the coupled L2 weight decay mean what they
mean there) or averaged over them (``mean``: numbers comparable across resolutions, and a weight
decay C·H·W times stronger); the caller averages over the batch.
"""

from __future__ import annotations

import math

import torch

from diffmem.config import ModelConfig
from diffmem.nn.precond import vp_sigma

LOSS_NORMS = ("sum", "mean")  # over the pixels of an image


def sample_sigma(model: ModelConfig, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Training σ from uniform draws ``u`` ~ U(0, 1) and normal draws ``z`` ~ N(0, 1) (float64).

    EDM: ln σ = P_mean + P_std·z; VP: σ = σ(t), t = 1 − (1 − ε_t)·u ~ U(ε_t, 1); VE: ln σ = ln σ_min +
    u·(ln σ_max − ln σ_min). The same draws give the same σ as the reference study's code.
    """
    if model.precond == "edm":
        return torch.exp(model.P_mean + model.P_std * z)
    if model.precond == "vp":
        t = 1 - (1 - model.vp_epsilon_t) * u
        return vp_sigma(t, model.vp_beta_d, model.vp_beta_min)
    if model.precond == "ve":
        lo, hi = math.log(model.ve_sigma_min), math.log(model.ve_sigma_max)
        return torch.exp(lo + (hi - lo) * u)
    raise ValueError(f"precond {model.precond!r}")


def loss_weight(model: ModelConfig, sigma: torch.Tensor) -> torch.Tensor:
    """λ(σ): EDM (σ² + σ_d²)/(σ σ_d)²; VP and VE 1/σ²."""
    if model.precond == "edm":
        sd = model.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
    return 1 / sigma**2


def per_sample_loss(
    denoiser: torch.nn.Module,
    y: torch.Tensor,  # clean images, model scale, N×C×H×W
    sigma: torch.Tensor,  # float64 (N,)
    n: torch.Tensor,  # unit normal noise shaped like y
    labels: torch.Tensor | None,
    model: ModelConfig,
    norm: str = "sum",  # over the pixels of an image: sum (the reference study's) | mean
) -> torch.Tensor:
    """λ(σ)·Σ_pixels (D(y + σn; σ) − y)² (or the mean over pixels), one value per sample (float32)."""
    s = sigma.to(y.dtype).reshape(-1, 1, 1, 1)
    D = denoiser(y + s * n, sigma.to(y.dtype), labels)
    w = loss_weight(model, sigma).to(torch.float32)
    sq = (D.float() - y.float()).square()
    return w * (sq.sum(dim=(1, 2, 3)) if norm == "sum" else sq.mean(dim=(1, 2, 3)))
