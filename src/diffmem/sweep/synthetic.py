"""A synthetic job: a known ratio curve with binomial sampling noise, for exercising the search and
the backends without training anything (tests, ``diffmem emm --synthetic``).

The expected ratio at size s after k of K kimg is p(s, k) = 1 / (1 + (1 − t)/t · (s / E_k)^slope) with
E_k = E · (k / K)^growth, so the final snapshot is the best one and p(E, K) = t exactly: E is the true
EMM at threshold t = 1 − ε. Each snapshot's count of memorized samples is Binomial(n, p) drawn with a
seed derived from (size, repeat, kimg, seed), or round(n·p) when ``noise`` is false.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SyntheticCurve:
    """The true curve of a synthetic job."""

    emm: float = 300.0  # true crossing of the final snapshot
    slope: float = 4.0  # steepness of the transition in log |D|
    threshold: float = 0.9  # 1 − ε at which ``emm`` is the crossing
    snapshots_kimg: tuple[float, ...] = (1.0, 2.0, 4.0)
    growth: float = 0.5  # how the crossing grows with training progress
    noise: bool = True
    seed: int = 0

    def expected(self, size: float, kimg: float) -> float:
        K = max(self.snapshots_kimg)
        E_k = self.emm * (kimg / K) ** self.growth
        return 1.0 / (1.0 + (1.0 - self.threshold) / self.threshold * (size / E_k) ** self.slope)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def synthetic_rows(spec) -> list[dict[str, Any]]:
    """Rows of a synthetic job (same keys as a training job's)."""
    from diffmem.sweep.estimate import wilson

    c = spec.config
    curve = SyntheticCurve(**{k: tuple(v) if isinstance(v, list) else v for k, v in c["curve"].items()})
    n = int(c["n_samples"])
    rows = []
    for kimg in curve.snapshots_kimg:
        p = curve.expected(spec.size, kimg)
        if curve.noise:
            k = int(np.random.default_rng(_seed(spec.size, spec.repeat, kimg, curve.seed)).binomial(n, p))
        else:
            k = int(round(n * p))
        lo, hi = wilson(k, n)
        rows.append({"kind": "train", "size": spec.size, "repeat": spec.repeat, "snapshot_kimg": float(kimg),
                     "ratio": k / n, "ci_low": lo, "ci_high": hi, "n_memorized": k, "n_samples": n,
                     "n_train": spec.size, "threshold": 1 / 3})
    return rows
