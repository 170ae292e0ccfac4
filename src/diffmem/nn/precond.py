"""Preconditioners VP, VE and EDM (EDM paper 2022, Table 1) wrapping a backbone into D(x; σ, labels).

D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ), labels). The coefficients are computed in
float64 and applied in the input's dtype; the backbone runs in its own parameter dtype (float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffmem.config import ModelConfig
from diffmem.errors import bad


def vp_sigma(t: torch.Tensor | float, beta_d: float, beta_min: float) -> torch.Tensor:
    """VP noise level σ(t) = √(exp(½β_d t² + β_min t) − 1) (Table 1, VP schedule)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma: torch.Tensor, beta_d: float, beta_min: float) -> torch.Tensor:
    """Inverse of :func:`vp_sigma`: t = (√(β_min² + 2β_d·ln(σ² + 1)) − β_min) / β_d."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)) - beta_min) / beta_d


class Denoiser(nn.Module):
    """D(x; σ, labels) around a backbone F; subclasses define :meth:`coefficients`.

    Attributes: ``sigma_min``, ``sigma_max`` (supported σ range), ``label_dim`` (0 = unconditional),
    ``resolution``, ``in_channels`` and ``config`` (the resolved :class:`ModelConfig`).
    """

    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __init__(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = cfg
        self.label_dim = cfg.label_dim
        self.resolution = cfg.resolution
        self.in_channels = cfg.in_channels

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for float64 σ."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float64)
        if sigma.numel() == 1:
            sigma = sigma.reshape(1).expand(n)
        if sigma.shape != (n,):
            raise bad("sigma", sigma, f"({n},) or a scalar", shown=f"shape {tuple(sigma.shape)}")
        if self.label_dim:
            if labels is None:
                raise bad("labels", None, f"a LongTensor of shape ({n},): the model is conditional on "
                          f"{self.label_dim} classes")
            labels = torch.as_tensor(labels, device=x.device).long().reshape(n)
        else:
            labels = None  # an unconditional model ignores labels
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.coefficients(sigma.reshape(-1, 1, 1, 1)))
        wdtype = next(self.backbone.parameters()).dtype
        F_x = self.backbone((c_in * x).to(wdtype), c_noise.reshape(n).to(wdtype), labels)
        # Eq. 7: D(x; σ) = c_skip x + c_out F(c_in x; c_noise)
        return c_skip * x + c_out * F_x.to(x.dtype)


class EDMPrecond(Denoiser):
    """EDM (Table 1): c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ ln σ."""

    def __init__(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        super().__init__(backbone, cfg)
        self.sigma_data = cfg.sigma_data

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        c_in = 1 / torch.sqrt(sigma**2 + sd**2)
        c_noise = torch.log(sigma) / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(Denoiser):
    """VP (Table 1): c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = (M−1)·σ⁻¹(σ)."""

    def __init__(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        super().__init__(backbone, cfg)
        self.beta_d, self.beta_min, self.M = cfg.vp_beta_d, cfg.vp_beta_min, cfg.vp_M
        self.sigma_min = float(vp_sigma(cfg.vp_epsilon_t, self.beta_d, self.beta_min))
        self.sigma_max = float(vp_sigma(1.0, self.beta_d, self.beta_min))

    def coefficients(self, sigma: torch.Tensor):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / torch.sqrt(sigma**2 + 1)
        c_noise = (self.M - 1) * vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(Denoiser):
    """VE (Table 1): c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(½σ)."""

    def __init__(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        super().__init__(backbone, cfg)
        self.sigma_min, self.sigma_max = cfg.ve_sigma_min, cfg.ve_sigma_max

    def coefficients(self, sigma: torch.Tensor):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), torch.log(sigma / 2)


PRECONDITIONERS: dict[str, type[Denoiser]] = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}
