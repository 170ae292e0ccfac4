"""Probability-flow ODE solvers over an explicit σ schedule (the EDM paper 2022, Algorithms 1–2).

Both solvers are pure functions with one signature::

    x0 = heun(denoiser, x, sigmas, *, labels=None, randn_like=torch.randn_like, S_churn=0, ...)

``x`` is the initial state at noise level ``sigmas[0]`` (noise already scaled by σ₀), ``sigmas`` a
decreasing schedule ending in 0 (see :func:`diffmem.sample.edm_sigmas`). The state is integrated in
float64 whatever the denoiser computes in; the denoiser is called as ``denoiser(x, sigma, labels)``
with ``sigma`` of shape (N,). Optional stochastic churn follows EDM's Algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffmem.errors import UsageError, bad
from diffmem.sample.schedule import denoiser_sigma_range

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]  # (step, σ, x, denoised)


def _check_schedule(denoiser, sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise bad("sigmas", sigmas, "a 1-D schedule of >= 2 levels", shown=f"shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or not bool((sigmas[:-1] > 0).all()) or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise bad("sigmas", sigmas, "positive, strictly decreasing levels ending in 0", shown="the schedule")
    lo, hi = denoiser_sigma_range(denoiser)
    if float(sigmas[:-1].min()) < lo * (1 - 1e-12) or float(sigmas[0]) > hi * (1 + 1e-12):
        raise UsageError(f"sigmas: [{float(sigmas[-2])}, {float(sigmas[0])}] leaves the denoiser's supported "
                         f"range [{lo}, {hi}]; expected a schedule inside it (see schedule_for)")
    return sigmas


def _denoise(denoiser, x: torch.Tensor, sigma: float, labels: torch.Tensor | None) -> torch.Tensor:
    s = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
    return denoiser(x, s, labels).to(torch.float64)


def _solve(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    second_order: bool,
    labels: torch.Tensor | None,
    randn_like: Callable[[torch.Tensor], torch.Tensor],
    S_churn: float,
    S_min: float,
    S_max: float,
    S_noise: float,
    callback: Callback | None,
) -> torch.Tensor:
    sigmas = _check_schedule(denoiser, sigmas)
    _, sigma_hi = denoiser_sigma_range(denoiser)
    steps = len(sigmas) - 1
    x = x.to(torch.float64)
    for i in range(steps):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        # EDM Alg. 2 lines 4–6: churn raises σ from t_i to t̂ = (1 + γ) t_i and adds matching noise
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = min(t_cur + gamma * t_cur, sigma_hi)
        x_hat = x
        if t_hat > t_cur:
            x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * randn_like(x)
        # EDM Alg. 2 lines 7–8: Euler step with d = (x̂ − D(x̂; t̂)) / t̂
        denoised = _denoise(denoiser, x_hat, t_hat, labels)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # EDM Alg. 2 lines 9–11: second-order (trapezoidal) correction unless t_{i+1} = 0
        if second_order and t_next > 0:
            denoised_next = _denoise(denoiser, x_next, t_next, labels)
            d_prime = (x_next - denoised_next) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
        if callback is not None:
            callback(i, t_cur, x, denoised)
    return x


def heun(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,                  # class labels (N,) for conditional denoisers
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,  # churn noise source
    S_churn: float = 0.0,                                # total churn; 0 = deterministic ODE
    S_min: float = 0.0,                                  # churn only for σ in [S_min, S_max]
    S_max: float = math.inf,
    S_noise: float = 1.0,                                # churn noise scale
    callback: Callback | None = None,                    # called after each step
) -> torch.Tensor:
    """EDM's second-order Heun sampler (Algorithm 2; 2·steps − 1 denoiser calls). Returns float64 x₀."""
    return _solve(denoiser, x, sigmas, True, labels, randn_like, S_churn, S_min, S_max, S_noise, callback)


def euler(
    denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """First-order Euler sampler (EDM Algorithm 1, with the same optional churn; steps denoiser calls)."""
    return _solve(denoiser, x, sigmas, False, labels, randn_like, S_churn, S_min, S_max, S_noise, callback)


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {"heun": heun, "euler": euler}
