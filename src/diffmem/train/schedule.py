"""Schedules of training: the learning-rate warm-up and the units of the durations that scale with the dataset;
the steps at which the loop logs, snapshots and saves its state.

The reference study's training script states its schedules per dataset size: a warm-up of |D|/5 kimg
(200 epochs), an EMA half-life of |D|/100 kimg (10 epochs), each truncated to whole kimg. Durations
given here in epochs are converted the same way; durations in kimg are used as they are.
"""

from __future__ import annotations

import math

from diffmem.config import TrainConfig


def epochs_to_nimg(epochs: float, n_images: int) -> int:
    """``epochs`` passes over ``n_images`` images as whole kimg, rounded down (the reference's int(kimg)), in images."""
    return 1000 * math.floor(epochs * n_images / 1000 + 1e-9)


def duration_nimg(kimg: float | None, epochs: float | None, n_images: int) -> float:
    """A duration given in kimg (as it is) or else in epochs (whole kimg, rounded down; none = 0), in images."""
    if kimg is not None:
        return kimg * 1000
    return float(epochs_to_nimg(epochs or 0.0, n_images))


def warmup_nimg(cfg: TrainConfig, n_images: int) -> float:
    """Length of the linear learning-rate warm-up, in images."""
    return duration_nimg(cfg.warmup_kimg, cfg.warmup_epochs, n_images)


def learning_rate(cfg: TrainConfig, nimg: int, n_images: int) -> float:
    """Learning rate of the step that starts after ``nimg`` images: lr · min(nimg / warm-up, 1).

    As in the reference code the images are counted before the step, so the first step has lr 0
    (Adam's moments still take it in).
    """
    return cfg.lr * min(nimg / max(warmup_nimg(cfg, n_images), 1e-8), 1.0)


def step_crosses(nimg: int, batch: int, every_kimg: float | None) -> bool:
    """Whether the step of ``batch`` images that ends after ``nimg`` images passes a multiple of ``every_kimg``
    kimg (never when it is None): the steps after which the loop logs, writes a snapshot or saves its state."""
    if every_kimg is None:
        return False
    every = every_kimg * 1000
    return math.floor(nimg / every + 1e-9) > math.floor((nimg - batch) / every + 1e-9)
