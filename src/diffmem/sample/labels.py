"""Class labels of conditional sampling: the one check of a label list, each sample's label drawn from its own
seed, and the classes a training set actually holds."""

from __future__ import annotations

import numpy as np
import torch

from diffmem.errors import UsageError, bad
from diffmem.sample.noise import SeedNoise


def as_labels(
    labels: np.ndarray | torch.Tensor | int,  # one label per item
    n: int,                                   # items
    label_dim: int,                           # classes: labels lie in 0..label_dim − 1
    *,
    what: str = "labels",                     # what the message calls them
    per: str = "sample",                      # what each label belongs to, for the message
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``labels`` as an int64 vector of ``n`` labels in 0..label_dim − 1, or a one-line UsageError."""
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    lab = lab.to(device=device, dtype=torch.int64).reshape(-1)
    if lab.shape[0] != n:
        raise UsageError(f"{what}: {lab.shape[0]} labels for {n} {per}s; expected one per {per}")
    check_range(lab, label_dim, what)
    return lab


def check_range(labels: torch.Tensor, label_dim: int, what: str = "labels") -> None:
    """Every label in 0..label_dim − 1 (the label rule of every denoiser), or a one-line UsageError."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= label_dim):
        lo, hi = int(labels.min()), int(labels.max())
        shown = f"{lo} is" if lo == hi else f"values in [{lo}, {hi}] are"
        raise UsageError(f"{what}: {shown} not valid; expected 0..{label_dim - 1} (label_dim {label_dim})")


def check_label(label: int | None, label_dim: int, what: str = "label") -> None:
    """One label asked of every sample: none, or a label in 0..label_dim − 1 of a conditional denoiser."""
    if label is None:
        return
    if label_dim <= 0:
        raise bad(what, label, f"no {what} (the denoiser is unconditional)")
    check_range(torch.tensor([int(label)]), label_dim, what)


def as_classes(classes: np.ndarray | torch.Tensor, label_dim: int) -> torch.Tensor:
    """The classes labels are drawn from: a non-empty int64 vector of labels in 0..label_dim − 1."""
    c = torch.as_tensor(np.asarray(classes), dtype=torch.int64).reshape(-1)
    if c.numel() == 0:
        raise bad("classes", [], f"a non-empty list of labels in 0..{label_dim - 1}")
    check_range(c, label_dim, "classes")
    return c


def draw_labels(
    noise: SeedNoise,
    label_dim: int,                      # classes the model takes (0: unconditional, returns None)
    classes: torch.Tensor | None = None,  # labels to draw from; None = all label_dim
    labels: torch.Tensor | None = None,   # given labels (one per sample): the draw is still made, then replaced
) -> torch.Tensor | None:
    """Each sample's label, drawn uniformly from ``classes`` by its own generator (right after its initial
    noise), unless ``labels`` are given; int64 on the CPU. The draw always happens, so the generators
    are in the same state afterwards whether labels were given or not."""
    if label_dim <= 0:
        return None
    pool = torch.arange(label_dim) if classes is None else torch.as_tensor(classes, dtype=torch.int64)
    drawn = pool[noise.randint(len(pool))]
    return drawn if labels is None else as_labels(torch.as_tensor(labels).cpu(), len(noise), label_dim)


def present_classes(labels: np.ndarray | None) -> np.ndarray | None:
    """The sorted labels that occur in a training set (−1 = unlabeled is left out); None when none do.

    Conditional samples are drawn over these, so a class that has no training image (possible with
    random labels on a small set) is never asked for.
    """
    if labels is None:
        return None
    present = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    return present if present.size else None
