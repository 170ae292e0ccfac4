"""Schedules of training that scale with the dataset: the learning-rate warm-up and the units they use.

The reference study's training script states its schedules per dataset size: a warm-up of |D|/5 kimg
(200 epochs), an EMA half-life of |D|/100 kimg (10 epochs), each truncated to whole kimg. Durations
given here in epochs are converted the same way; durations in kimg are used as they are.
"""

from __future__ import annotations

import dataclasses
import math

from diffmem.config import TrainConfig
from diffmem.errors import UsageError


def epochs_to_nimg(epochs: float, n_images: int) -> int:
    """``epochs`` passes over ``n_images`` images as whole kimg, rounded down (the reference's int(kimg)), in images."""
    return 1000 * math.floor(epochs * n_images / 1000 + 1e-9)


def warmup_nimg(train: TrainConfig, n_images: int) -> float:
    """Length of the linear learning-rate warm-up, in images."""
    if train.warmup_kimg is not None:
        return train.warmup_kimg * 1000
    return float(epochs_to_nimg(train.warmup_epochs or 0.0, n_images))


def learning_rate(train: TrainConfig, nimg: int, n_images: int) -> float:
    """Learning rate of the step that starts after ``nimg`` images: lr · min(nimg / warm-up, 1).

    As in the reference code the images are counted before the step, so the first step has lr 0
    (Adam's moments still take it in).
    """
    return train.lr * min(nimg / max(warmup_nimg(train, n_images), 1e-8), 1.0)


def validate_schedules(t: TrainConfig, n_images: int) -> None:
    """Refuse a loss normalization, weight decay, warm-up, EMA or data order that cannot run (or a field set
    that its mode ignores), naming the field and its flag."""
    from diffmem.train.dataset import DATA_ORDERS
    from diffmem.train.ema import EMA_MODES, HALFLIFE_MODES, ema_beta
    from diffmem.train.losses import LOSS_NORMS

    def bad(field: str, value, expected: str) -> UsageError:
        return UsageError(f"train.{field} (--{field.replace('_', '-')}): {value!r} is not valid; expected {expected}")

    if t.loss_norm not in LOSS_NORMS:
        raise bad("loss_norm", t.loss_norm, "sum (over an image's pixels, as the reference) or mean")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise bad("weight_decay", t.weight_decay, "a finite coefficient ≥ 0 (Adam's coupled L2)")
    if t.data_order not in DATA_ORDERS:
        raise bad("data_order", t.data_order, "fixed (one permutation, as the reference) or reshuffle")
    if t.data_order == "fixed" and not 0 <= t.seed < 2**32:
        raise bad("seed", t.seed, "an integer in [0, 2³²) for data_order fixed")
    for kimg, epochs in (("warmup_kimg", "warmup_epochs"), ("ema_halflife_kimg", "ema_halflife_epochs")):
        for name in (kimg, epochs):
            v = getattr(t, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise bad(name, v, "a finite duration ≥ 0")
    if (t.warmup_kimg is None) == (t.warmup_epochs is None):
        raise UsageError(f"train.warmup_kimg / warmup_epochs: {t.warmup_kimg}, {t.warmup_epochs}; expected exactly "
                         "one of them (the other null)")
    if t.ema_mode not in EMA_MODES:
        raise bad("ema_mode", t.ema_mode, "one of " + ", ".join(EMA_MODES))
    uses_decay = t.ema_mode in ("constant", "final")
    if uses_decay and (t.ema_decay is None or not 0 <= t.ema_decay < 1):
        raise bad("ema_decay", t.ema_decay, f"a decay in [0, 1) for ema_mode {t.ema_mode}"
                  + (" (0 = no EMA)" if t.ema_mode == "constant" else " (the reference's default: 0.99929)"))
    if not uses_decay and t.ema_decay is not None:
        raise bad("ema_decay", t.ema_decay, f"null: ema_mode {t.ema_mode} does not use it (set ema_mode to "
                  "constant or final)")
    halflife = (t.ema_halflife_kimg, t.ema_halflife_epochs)
    if t.ema_mode == "constant" and halflife != (None, None):
        field = "ema_halflife_kimg" if t.ema_halflife_kimg is not None else "ema_halflife_epochs"
        raise bad(field, getattr(t, field), "null: ema_mode constant does not use a half-life (set ema_mode to "
                  "halflife, compensated or final)")
    if t.ema_mode in HALFLIFE_MODES and (halflife.count(None) != 1):
        raise UsageError(f"train.ema_halflife_kimg / ema_halflife_epochs: {halflife[0]}, {halflife[1]}; expected "
                         f"exactly one of them for ema_mode {t.ema_mode} (the other null)")
    if t.ema_rampup_ratio is not None and not (math.isfinite(t.ema_rampup_ratio) and t.ema_rampup_ratio > 0):
        raise bad("ema_rampup_ratio", t.ema_rampup_ratio, "a positive ratio, or null for no ramp-up")
    if t.ema_mode == "final":
        late = ema_beta(dataclasses.replace(t, ema_rampup_ratio=None), 0, t.batch, n_images)
        if not late < 1:
            raise bad("ema_decay", t.ema_decay, f"a final decay that keeps β < 1 (it gives β = {late:.6g} with "
                      f"this half-life at |D| = {n_images:,})")
