"""Execution backends: run a batch of jobs here (``local``) or as Ray tasks (``ray``).

Both backends write the same job directories (see :mod:`diffmem.sweep.jobs`) and return the same
rows; a complete job is read back without being submitted. The Ray backend needs the sweep
directory on a file system every node sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diffmem.errors import RunError, UsageError, bad
from diffmem.extras import require
from diffmem.sweep.jobs import JobSpec, job_dir, read_result, run_job

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
BACKENDS = ("local", "ray")


class Backend:
    """Runs batches of jobs; ``on_done(spec, rows, reused)`` is called as each job finishes."""

    name = "base"

    def run(self, specs: Sequence[JobSpec], root: Path,
            on_done: Callable[[JobSpec, Rows, bool], None] | None = None) -> dict[str, Rows]:
        out: dict[str, Rows] = {}
        todo: list[JobSpec] = []
        for spec in specs:
            rows = read_result(job_dir(root, spec), spec)
            if rows is None:
                todo.append(spec)
            else:
                out[spec.key] = rows
                if on_done:
                    on_done(spec, rows, True)
        if todo:
            out.update(self._run(todo, root, on_done))
        return out

    def _run(self, specs: Sequence[JobSpec], root: Path,
             on_done: Callable[[JobSpec, Rows, bool], None] | None) -> dict[str, Rows]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalBackend(Backend):
    """One job after another in this process."""

    name = "local"

    def _run(self, specs, root, on_done):
        out = {}
        for spec in specs:
            log.info("running job %s", spec.dirname)
            out[spec.key] = rows = run_job(spec, job_dir(root, spec))
            if on_done:
                on_done(spec, rows, False)
        return out


def _ray_job(spec: JobSpec, directory: str) -> Rows:
    """The body of one Ray task (a module-level function so workers import it by name)."""
    return run_job(spec, directory)


class RayBackend(Backend):
    """Each job a Ray task (one GPU each where the cluster has GPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        ray = require("ray", "ray", "--backend ray")
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RunError(f"--ray-address: cannot connect to Ray at {address or 'a new local instance'} "
                               f"({e})") from e
            self._started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        self._task = ray.remote(num_gpus=1 if gpus > 0 else 0, max_retries=0)(_ray_job)
        log.info("ray backend: %s CPUs, %s GPUs", ray.cluster_resources().get("CPU", 0), gpus)

    def _run(self, specs, root, on_done):
        ray = self._ray
        pending = {self._task.remote(spec, str(job_dir(root, spec))): spec for spec in specs}
        out = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(ready[0])
                try:
                    rows = ray.get(ready[0])
                except Exception as e:  # a task's own error arrives wrapped by Ray
                    cause = getattr(e, "cause", None) or e
                    raise RunError(f"job {spec.dirname} failed on Ray: {cause.__class__.__name__}: {cause}") from e
                out[spec.key] = rows
                if on_done:
                    on_done(spec, rows, False)
        except BaseException:  # an error or an interrupt: no task may go on writing into the sweep
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return out

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_backend(name: str, ray_address: str | None = None) -> Backend:
    if name == "local":
        if ray_address:
            raise UsageError("--ray-address: only used with --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(ray_address)
    raise bad("--backend", name, f"one of {list(BACKENDS)}")
