"""Exponential moving average of the weights: a constant per-step decay, or EDM's half-life with ramp-up."""

from __future__ import annotations

import copy

import torch

from diffmem.config import TrainConfig


def ema_beta(train: TrainConfig, nimg: int, batch: int) -> float:
    """The decay β applied after a step that ends at ``nimg`` images (0 = EMA equals the raw weights).

    Constant: β = ``ema_decay``. Half-life (EDM): h = min(halflife, ramp·nimg) images, β = 0.5^(batch / h).
    """
    if train.ema_decay is not None:
        return float(train.ema_decay)
    if train.ema_halflife_kimg is None:
        return 0.0
    h = train.ema_halflife_kimg * 1000
    if train.ema_rampup_ratio is not None:
        h = min(h, nimg * train.ema_rampup_ratio)
    return 0.5 ** (batch / max(h, 1e-8))


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

