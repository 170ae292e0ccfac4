"""The hot path of a training step: the forward and backward passes of its micro-batches, into the gradients.

The loop (``loop.py``) draws a step's images, σ and noise from (seed, step) and sets the learning
rate; :class:`TrainStep` turns them into the summed loss and the parameters' gradients; then the
optimizer and the EMA update run. Micro-batches (``batch_per_device``) run in one of two ways:

- **one after another**, each ``backward`` accumulating into ``.grad`` (gradient accumulation; the
  way under DDP, on GPUs, and whenever only one thread is to be used);
- **concurrently** on the CPU, one thread per micro-batch with one intra-op thread each, when more
  than one thread is available and the forward pass draws no random numbers (no dropout, whose draws
  would race on the global generator). Each thread computes its micro-batch's gradient alone; the
  gradients are summed in micro-batch order, which is exactly what sequential accumulation computes.

Both ways give bit-identical results (a test holds them to it), so the number of threads never
changes a run. A small model's step is mostly per-operator overhead that one team of intra-op threads
cannot spread over two cores; two independent micro-batches can.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from diffmem.config import ModelConfig, TrainConfig
from diffmem.io import to_model_scale
from diffmem.train.flat import views_of
from diffmem.train.losses import per_sample_loss

log = logging.getLogger(__name__)


def inductor_cache_dir() -> Path:
    """Where torch.compile keeps its compiled graphs: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else
    ``diffmem/inductor`` under the user's cache home, so the warm-up is paid once per machine."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "diffmem" / "inductor"


def compile_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(module)`` with inductor's on-disk caches in :func:`inductor_cache_dir` (C++ wrapper on
    the CPU); the module itself, with one warning, when the CPU has no C++ compiler for inductor."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # inductor raises its own error types for a missing or unusable compiler
            log.warning("train.compile: no C++ compiler for torch.compile on the CPU (%s); training eagerly",
                        " ".join(str(e).split())[:200])
            return module
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
    return torch.compile(module, options={"cpp_wrapper": device.type == "cpu"})


def concurrent_workers(model: ModelConfig, train: TrainConfig, device: torch.device, per_rank: int,
                       distributed: bool, threads: int) -> int:
    """How many micro-batches of a step run at once: 1 (one after another) unless every condition holds."""
    micro = train.batch_per_device or per_rank
    n_micro = per_rank // micro
    if n_micro < 2 or threads < 2 or distributed or device.type != "cpu" or model.dropout > 0:
        return 1
    return min(threads, n_micro)


class TrainStep:
    """Forward and backward of one step: ``step(images, labels, idx, sigma, noise)`` → the summed loss.

    ``images`` (uint8) and ``labels`` are the whole training set on the device, ``idx`` this process's
    indices of the step, ``sigma`` and ``noise`` its draws. Afterwards every parameter's ``.grad``
    holds Σ_micro-batches ∇(Σ per-sample loss / ``per_rank``).
    """

    def __init__(
        self,
        net: torch.nn.Module,                 # the module called for the loss (possibly DDP and/or compiled)
        params: list[torch.nn.Parameter],     # the trained parameters, in optimizer order
        model: ModelConfig,
        train: TrainConfig,
        device: torch.device,
        *,
        per_rank: int,                        # images per process and step
        distributed: bool,
        pool: ThreadPoolExecutor | None = None,  # threads for concurrent micro-batches (see concurrent_workers)
        grad_buffer: torch.Tensor | None = None,  # flat gradient buffer to sum into (FlatAdam.grad); else own
    ) -> None:
        self.net, self.params, self.model, self.train = net, params, model, train
        self.device, self.per_rank, self.distributed = device, per_rank, distributed
        self.micro = train.batch_per_device or per_rank
        self.pool = pool
        self._warm = not train.compile  # a compiled module is first called from this thread alone
        if pool is not None:
            self.grad = grad_buffer if grad_buffer is not None else torch.zeros(
                sum(p.numel() for p in params), dtype=params[0].dtype, device=device)
            for p, v in zip(params, views_of(self.grad, params)):
                p.grad = v  # the summed gradient is written into these views; never set to None
            log.debug("training step: %d micro-batches of %d, run concurrently", per_rank // self.micro, self.micro)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor | None, j: torch.Tensor, sigma: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
        y = to_model_scale(images[j])
        lab = labels[j] if labels is not None else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train.precision == "bf16"):
            loss = per_sample_loss(self.net, y, sigma, noise, lab, self.model)
        return loss.sum() / self.per_rank

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None, idx: torch.Tensor, sigma: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        parts = [(idx[k:k + self.micro], sigma[k:k + self.micro], noise[k:k + self.micro])
                 for k in range(0, self.per_rank, self.micro)]
        if self.pool is None:
            return self._sequential(images, labels, parts)
        return self._concurrent(images, labels, parts)

    def _sequential(self, images, labels, parts) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        loss_sum = torch.zeros((), device=self.device)
        for i, (j, s, n) in enumerate(parts):
            last = i == len(parts) - 1
            with _no_sync(self.net) if self.distributed and not last else contextlib.nullcontext():
                loss = self._loss(images, labels, j, s, n)
                loss.backward()
            loss_sum += loss.detach()
        return loss_sum

    def _micro_grad(self, images, labels, part) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self._loss(images, labels, *part)
        grads = torch.autograd.grad(loss, self.params)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    def _concurrent(self, images, labels, parts) -> torch.Tensor:
        run = lambda part: self._micro_grad(images, labels, part)  # noqa: E731
        if self._warm:
            results = list(self.pool.map(run, parts))
        else:  # the first call compiles: one thread, same arithmetic
            results = [run(part) for part in parts]
            self._warm = True
        # Σ over micro-batches in order: what accumulating into .grad one after another computes
        loss_sum = torch.zeros((), device=self.device)
        self.grad.copy_(results[0][1])
        loss_sum += results[0][0]
        for loss, g in results[1:]:
            self.grad.add_(g)
            loss_sum += loss
        return loss_sum


def _no_sync(module: torch.nn.Module):
    """DDP's ``no_sync`` (gradient accumulation without all-reduce), also through a compiled wrapper."""
    return getattr(module, "_orig_mod", module).no_sync()
