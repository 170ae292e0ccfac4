"""The EDM noise-level schedule and the σ range a denoiser supports."""

from __future__ import annotations

import math

import torch

from diffmem.errors import UsageError, bad


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM's ρ-schedule of ``steps`` noise levels from ``sigma_max`` down to ``sigma_min``, then 0.

    Returns a float64 tensor of length ``steps + 1`` (the last entry is exactly 0). With one step
    the schedule is ``[sigma_max, 0]``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise bad("steps", steps, "an integer >= 1")
    if not (0 < sigma_min <= sigma_max < math.inf):
        raise UsageError(f"sigma_min, sigma_max: ({sigma_min!r}, {sigma_max!r}) are not valid; "
                         "expected 0 < sigma_min <= sigma_max < inf")
    if not (rho > 0 and math.isfinite(rho)):
        raise bad("rho", rho, "a finite number > 0")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / (steps - 1) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    # EDM eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, σ_N = 0
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def denoiser_sigma_range(denoiser) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` a denoiser supports: its attributes, or ``(0, inf)`` when it has none."""
    lo = float(getattr(denoiser, "sigma_min", 0.0) or 0.0)
    hi = getattr(denoiser, "sigma_max", math.inf)
    hi = math.inf if hi is None else float(hi)
    return lo, hi


def schedule_for(denoiser, steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The EDM schedule with its ends pulled into the denoiser's supported σ range (as EDM's sampler does)."""
    lo, hi = denoiser_sigma_range(denoiser)
    s_min, s_max = max(sigma_min, lo), min(sigma_max, hi)
    if s_min > s_max:
        raise UsageError(f"sigma range: the sampler's [{sigma_min}, {sigma_max}] and the denoiser's [{lo}, {hi}] "
                         "do not overlap; expected overlapping σ ranges")
    return edm_sigmas(steps, s_min, s_max, rho)
