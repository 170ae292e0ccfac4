"""Sampling: the EDM σ schedule, Euler/Heun solvers (float64 state), per-sample seeds, ``generate``,
and the closed-form optimal denoiser of a training set."""

from diffmem.sample.generate import generate, sample_seeds, validate_sample
from diffmem.sample.noise import SeedNoise
from diffmem.sample.optimal import OptimalDenoiser
from diffmem.sample.schedule import denoiser_sigma_range, edm_sigmas, schedule_for
from diffmem.sample.solvers import SOLVERS, euler, heun

__all__ = [
    "OptimalDenoiser",
    "SOLVERS",
    "SeedNoise",
    "denoiser_sigma_range",
    "edm_sigmas",
    "euler",
    "generate",
    "heun",
    "sample_seeds",
    "schedule_for",
    "validate_sample",
]
