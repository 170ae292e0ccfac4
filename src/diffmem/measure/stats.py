"""Confidence interval of a proportion."""

from __future__ import annotations

import math
from statistics import NormalDist

from diffmem.errors import bad


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials: the interval of the score test ("Probable inference,
    the law of succession, and statistical inference", Journal of the American Statistical Association, 1927).

    centre = (p̂ + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²).
    """
    if n <= 0:
        raise bad("n", n, "at least one sample", shown=f"{n} samples")
    if not 0 <= k <= n:
        raise bad("k", k, f"a count between 0 and n = {n}", shown=str(k))
    if not 0.0 < confidence < 1.0:
        raise bad("confidence", confidence, "a number between 0 and 1", shown=str(confidence))
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high
