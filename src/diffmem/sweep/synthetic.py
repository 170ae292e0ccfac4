"""A synthetic job: a known ratio curve with binomial sampling noise, for exercising the search and
the backends without training anything (tests, ``diffmem emm --synthetic``).

The expected ratio at size s after k of K kimg is p(s, k) = 1 / (1 + (1 − t)/t · (s / E_k)^slope) with
E_k = E · (k / K)^growth, so the final snapshot is the best one and p(E, K) = t exactly: E is the true
EMM at threshold t = 1 − ε. Each snapshot's count of memorized samples is Binomial(n, p) drawn with a
seed derived from (size, repeat, kimg, seed), or round(n·p) when ``noise`` is false.

The curve is a surface over (|D|, budget): at budget k the crossing is E_k, a power law of the budget,
so a size s first reaches t at τ_mem(s) = K · (s / E)^(1 / growth) — the memorization frontier of
:mod:`diffmem.sweep.frontier` with exponent α = 1 / growth is known exactly. A job whose config
holds ``kimg`` (a run of that length, as the frontier search asks for) has the snapshots up to it only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffmem.sweep.estimate import wilson


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
        return 1.0 / (1.0 + (1.0 - self.threshold) / self.threshold * (size / self.emm_at(kimg)) ** self.slope)

    def emm_at(self, kimg: float) -> float:
        """The true EMM at budget ``kimg``: E_k = E · (k / K)^growth."""
        return self.emm * (kimg / max(self.snapshots_kimg)) ** self.growth

    def onset(self, size: float) -> float:
        """The true τ_mem(size): the budget at which the expected ratio reaches t, K · (s / E)^(1 / growth)."""
        return max(self.snapshots_kimg) * (size / self.emm) ** (1.0 / self.growth)


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def synthetic_rows(spec) -> list[dict[str, Any]]:
    """Rows of a synthetic job (same keys as a training job's)."""
    c = spec.config
    curve = SyntheticCurve(**{k: tuple(v) if isinstance(v, list) else v for k, v in c["curve"].items()})
    n = int(c["n_samples"])
    length = c.get("kimg")  # the run's length; None = every snapshot of the curve
    rows = []
    for kimg in curve.snapshots_kimg:
        if length is not None and kimg > float(length) + 1e-9:
            continue
        p = curve.expected(spec.size, kimg)
        if curve.noise:
            k = int(np.random.default_rng(_seed(spec.size, spec.repeat, kimg, curve.seed)).binomial(n, p))
        else:
            k = int(round(n * p))
        lo, hi = wilson(k, n, float(c.get("confidence", 0.95)))
        rows.append({"kind": "train", "size": spec.size, "repeat": spec.repeat, "snapshot_kimg": float(kimg),
                     "ratio": k / n, "ci_low": lo, "ci_high": hi, "n_memorized": k, "n_samples": n,
                     "n_train": spec.size, "threshold": 1 / 3})
    return rows
