"""Sweeps: plan → execute (local or Ray) → measure → decide → results; resumable.

- :func:`run_emm` finds the EMM of one recipe (adaptive bracketing and bisection on log |D|).
- :func:`run_study` runs an EMM search (or a ratio table at fixed sizes) per factor value.
- :func:`next_sizes` / :func:`estimate` are the pure search and estimation steps underneath.
"""

from diffmem.sweep.backends import Backend, LocalBackend, RayBackend, make_backend
from diffmem.sweep.emm import EMMResult, job_spec, run_emm
from diffmem.sweep.estimate import Estimate, Point, RepeatResult, crossing, estimate, pool
from diffmem.sweep.jobs import JobSpec, run_job
from diffmem.sweep.search import Bracket, find_bracket, geometric_grid, max_measurements, next_sizes
from diffmem.sweep.synthetic import SyntheticCurve

__all__ = [
    "Backend", "Bracket", "EMMResult", "Estimate", "JobSpec", "LocalBackend", "Point", "RayBackend",
    "RepeatResult", "SyntheticCurve", "crossing", "estimate", "find_bracket", "geometric_grid", "job_spec",
    "make_backend", "max_measurements", "next_sizes", "pool", "run_emm", "run_job",
]
