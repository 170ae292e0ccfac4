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


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema ← β·ema + (1 − β)·model for parameters; buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.copy_(pm.detach().lerp(pe, beta))
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
