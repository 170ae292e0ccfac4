"""The training images as the loop sees them: pixels, labels, the label count, and the data order.

The data order is a stream of per-epoch permutations, so the images of step s are known from s alone:
resuming and DDP need no hidden sampler state. ``fixed`` (the reference study's order: its sampler
with a window of 0) repeats one permutation, NumPy's ``RandomState(seed).permutation(N)``, every epoch;
``reshuffle`` draws each epoch's from (seed, epoch).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.artefacts import array_hash
from diffmem.data import load_dataset
from diffmem.errors import UsageError
from diffmem.seeds import TRAIN_DATA_ORDER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    images: np.ndarray  # uint8 N×C×H×W
    labels: np.ndarray | None  # int64 N in [0, label_dim) when conditional, else None
    label_dim: int  # 0 = unconditional
    data_hash: str  # content hash of images and labels

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_training_data(path: str | Path) -> TrainingData:
    """Images and labels of a dataset artefact (or any image set ``diffmem.io.load_images`` reads).

    The model is conditional iff the data has labels: ``label_classes`` > 0 in the manifest, or, where
    no manifest says so, labels ≥ 0 (then max(label) + 1 classes).
    """
    path = Path(path)
    s, label_classes = load_dataset(path)
    images, labels = s.images, s.labels
    n, c, h, w = images.shape
    if h != w:
        raise UsageError(f"data: {path} holds {h}×{w} images; expected square images")
    label_dim = int(label_classes)
    if label_dim:
        if labels is None or labels.min() < 0 or labels.max() >= label_dim:
            bad = "none" if labels is None else f"{int(labels.min())}..{int(labels.max())}"
            raise UsageError(f"data: {path} has labels {bad}; expected every label in 0..{label_dim - 1}")
        labels = labels.astype(np.int64)
    else:
        labels = None
    data_hash = hashlib.sha256((array_hash(images) + (array_hash(labels) if labels is not None else "")).encode())
    log.info("data %s: %d images %dx%dx%d, %d label classes", path, n, c, h, w, label_dim)
    return TrainingData(images=images, labels=labels, label_dim=label_dim, data_hash=data_hash.hexdigest()[:16])


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (seed, purpose, step, rank…), independent across keys."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


DATA_ORDERS = ("fixed", "reshuffle")


class DataOrder:
    """Global indices of training step ``s``: positions s·B … (s+1)·B − 1 of the epoch-permutation stream."""

    def __init__(self, n: int, batch: int, seed: int, order: str) -> None:
        self.n, self.batch, self.seed, self.order = n, batch, seed, order
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``: drawn from (seed, epoch), or the seed's one fixed permutation."""
        if self.order == "fixed":
            if not self._perms:
                self._perms[0] = np.random.RandomState(self.seed).permutation(self.n)
            return self._perms[0]
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, TRAIN_DATA_ORDER, epoch]))
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch
        if start // self.n == (start + self.batch - 1) // self.n:  # within one epoch: a slice of its order
            offset = start % self.n
            return self.permutation(start // self.n)[offset:offset + self.batch].astype(np.int64)
        pos = np.arange(start, start + self.batch, dtype=np.int64)
        epoch, offset = pos // self.n, pos % self.n
        out = np.empty_like(pos)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self.permutation(int(e))[offset[sel]]
        return out
