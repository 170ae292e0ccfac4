"""From per-run measurements to points of the ratio-vs-|D| curve and the EMM estimate with its interval.

One *point* per measured size pools its repeats. Each repeat contributes its best snapshot (the
highest ratio over training, the reference protocol). The point's interval is the Wilson interval
of the pooled counts; with several repeats it is widened to the Student-t interval of the repeat
ratios when that is wider, so the spread across dataset draws and training seeds counts too.

The EMM estimate interpolates the ratio linearly in log |D| between the bracket's sizes at 1 − ε.
Its interval interpolates the interval bounds the same way: the crossing of the lower-bound curve
and of the upper-bound curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from diffmem.errors import bad
from diffmem.sweep.search import find_bracket


def student_t_quantile(confidence: float, df: int) -> float:
    """Two-sided quantile of Student's t: P(|T| ≤ q) = confidence with ``df`` degrees of freedom."""
    from scipy.stats import t  # scipy.stats takes a second to import: only with repeats to pool

    if not 0 < confidence < 1:
        raise bad("confidence", confidence, "a number in (0, 1)")  # a UsageError, which is a ValueError
    return float(t.ppf(0.5 + confidence / 2, df))


def wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    from diffmem.measure import wilson_interval  # diffmem.measure imports torch: only when intervals are computed

    return wilson_interval(int(k), int(n), confidence)


@dataclass(frozen=True)
class RepeatResult:
    """One training run at one size: its best snapshot."""

    repeat: int
    ratio: float
    n_memorized: int
    n_samples: int
    best_snapshot_kimg: float | None


@dataclass(frozen=True)
class Point:
    """The pooled measurement at one size."""

    size: int
    ratio: float
    ci: tuple[float, float]
    n_memorized: int
    n_samples: int
    best_snapshot_kimg: float | None
    repeats: tuple[RepeatResult, ...] = field(default=())

    def straddles(self, threshold: float) -> bool:
        """True when the interval holds values on both sides of the threshold."""
        return straddles(self.ci, threshold)


def straddles(ci: Sequence[float], threshold: float) -> bool:
    """An interval ``(low, high)`` straddles the threshold when it holds a ratio below it and one at or above it:
    the measurement cannot tell whether the size memorizes (such sizes are flagged and may be refined)."""
    return ci[0] < threshold <= ci[1]


def pool(size: int, runs: Sequence[RepeatResult], confidence: float) -> Point:
    """Pool the repeats at one size into a point with its interval."""
    if not runs:
        raise ValueError(f"size {size}: no runs to pool")
    k = sum(r.n_memorized for r in runs)
    n = sum(r.n_samples for r in runs)
    lo, hi = wilson(k, n, confidence)
    if len(runs) >= 2:
        rs = [r.ratio for r in runs]
        mean = sum(rs) / len(rs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in rs) / (len(rs) - 1))
        t = student_t_quantile(confidence, len(rs) - 1)
        half = t * sd / math.sqrt(len(rs))
        lo, hi = min(lo, max(0.0, mean - half)), max(hi, min(1.0, mean + half))
    best = max(runs, key=lambda r: r.ratio).best_snapshot_kimg
    return Point(size=size, ratio=k / n, ci=(lo, hi), n_memorized=k, n_samples=n, best_snapshot_kimg=best,
                 repeats=tuple(runs))


def crossing(sizes: Sequence[int], values: Sequence[float], threshold: float) -> float | None:
    """Size where the curve crosses ``threshold``: log-linear interpolation at the first drop below it.

    Returns None when the curve is below the threshold at the smallest size or never drops below it
    (the crossing lies outside the measured sizes).
    """
    for i, (s, v) in enumerate(zip(sizes, values)):
        if v < threshold:
            if i == 0:
                return None
            s0, v0 = sizes[i - 1], values[i - 1]
            # log-size linear interpolation of the ratio at threshold
            w = (v0 - threshold) / (v0 - v) if v0 != v else 0.5
            return float(math.exp(math.log(s0) + w * (math.log(s) - math.log(s0))))
    return None


def _bound(sizes: Sequence[int], values: Sequence[float], threshold: float, *, upper: bool) -> float | None:
    """Crossing of an interval-bound curve; outside the measured sizes the data bound it on one side only."""
    c = crossing(sizes, values, threshold)
    if c is not None or not sizes:
        return c
    if values[0] < threshold:  # below the threshold from the smallest size on
        return float(sizes[0]) if upper else None
    return None if upper else float(sizes[-1])  # never drops below it


@dataclass(frozen=True)
class Estimate:
    """The EMM: bracket, interpolated estimate and its interval (None = outside the measured sizes)."""

    emm: float | None
    bracket: tuple[int | None, int | None]
    ci: tuple[float | None, float | None]
    below_range: bool  # even the smallest measured size does not memorize
    above_range: bool  # even the largest measured size memorizes


def estimate(points: Sequence[Point], threshold: float) -> Estimate:
    """EMM estimate from the measured points (any order)."""
    pts = sorted(points, key=lambda p: p.size)
    sizes = [p.size for p in pts]
    br = find_bracket({p.size: p.ratio for p in pts}, threshold)
    emm = crossing(sizes, [p.ratio for p in pts], threshold)
    lo = _bound(sizes, [p.ci[0] for p in pts], threshold, upper=False)
    hi = _bound(sizes, [p.ci[1] for p in pts], threshold, upper=True)
    return Estimate(emm=emm, bracket=(br.low, br.high), ci=(lo, hi),
                    below_range=bool(pts) and br.low is None, above_range=bool(pts) and br.high is None)
