"""Exponential moving average of the weights: the per-step decay β of each EMA mode, and the updater.

Modes (``train.ema_mode``; the reference study's training script names them mode1 … mode4):

- ``constant``: β = ``ema_decay`` every step (0 = the EMA is the raw weights). diffmem's own.
- ``halflife`` (mode1; mode3 with a 500 kimg half-life and no ramp-up): β = 0.5^(B / h).
- ``compensated`` (mode2, the reference's default): β = 0.5^(512 / (h·ρ)), ρ = 50,000 / |D|. With the
  default half-life of 10 epochs, h·ρ = 500,000 images for every |D| (a multiple of 100) and β settles at
  0.5^(512 / 500,000) ≈ 0.99929 whatever the batch.
- ``final`` (mode4): β = ``ema_decay`` / 0.5^(B / 500,000) · 0.5^(B / (h·ρ)), which settles at ``ema_decay``
  (the per-step decay the study's EMA table varies).

h is the half-life in images, ramped up as min(h, ``ema_rampup_ratio`` · images seen before the step)
(EDM paper 2022, Appendix F), so the first step has β = 0. B is the batch.
"""

from __future__ import annotations

import copy

import torch

from diffmem.config import TrainConfig
from diffmem.train.schedule import duration_nimg

EMA_MODES = ("constant", "halflife", "compensated", "final")
HALFLIFE_MODES = ("halflife", "compensated", "final")
REFERENCE_SIZE = 50_000  # |D| at which the reference's schedules are stated (CIFAR-10's training set)
REFERENCE_BATCH = 512  # the literal batch of the compensated mode
FINAL_HALFLIFE_NIMG = 500_000  # half-life whose per-step decay the final mode divides out


def ema_halflife_nimg(cfg: TrainConfig, n_images: int) -> float:
    """The EMA half-life before ramp-up, in images (``ema_halflife_kimg``, or ``ema_halflife_epochs`` as whole kimg)."""
    return duration_nimg(cfg.ema_halflife_kimg, cfg.ema_halflife_epochs, n_images)


def ema_beta(cfg: TrainConfig, nimg: int, batch: int, n_images: int) -> float:
    """The decay β of the EMA update after the step that starts after ``nimg`` images (see the module doc)."""
    if cfg.ema_mode == "constant":
        return float(cfg.ema_decay or 0.0)
    h = ema_halflife_nimg(cfg, n_images)
    if cfg.ema_rampup_ratio is not None:
        h = min(h, nimg * cfg.ema_rampup_ratio)
    h = max(h, 1e-8)
    if cfg.ema_mode == "halflife":
        return 0.5 ** (batch / h)
    rho = REFERENCE_SIZE / n_images  # the data ratio
    if cfg.ema_mode == "compensated":
        return 0.5 ** (REFERENCE_BATCH / h / rho)
    if cfg.ema_mode == "final":
        return cfg.ema_decay / 0.5 ** (batch / FINAL_HALFLIFE_NIMG) * 0.5 ** (batch / h / rho)
    raise ValueError(f"ema_mode {cfg.ema_mode!r}")


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``model`` in eval mode."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


class EMAUpdater:
    """ema ← β·ema + (1 − β)·model for parameters, buffers copied; the tensor lists are gathered once.

    One fused ``_foreach`` call per step instead of a Python loop over every tensor (and a walk of
    the module tree): the same arithmetic as ``model.lerp(ema, β)`` per tensor, bit for bit.
    """

    def __init__(self, ema: torch.nn.Module, model: torch.nn.Module) -> None:
        self.ema_params = list(ema.parameters())
        self.model_params = list(model.parameters())
        self.ema_buffers = list(ema.buffers())
        self.model_buffers = list(model.buffers())

    @torch.no_grad()
    def __call__(self, beta: float) -> None:
        if self.ema_params:
            mixed = torch._foreach_lerp([p.detach() for p in self.model_params], self.ema_params, beta)
            torch._foreach_copy_(self.ema_params, mixed)
        for be, bm in zip(self.ema_buffers, self.model_buffers):
            be.copy_(bm)
