"""The hot path of a training step: the forward and backward passes of its micro-batches, into the gradients.

The loop (``loop.py``) draws a step's images, σ and noise from (seed, step) and sets the learning
rate; :class:`TrainStep` turns them into the summed loss and the parameters' gradients (micro-batches
of ``batch_per_device`` one after another, each ``backward`` accumulating into ``.grad``; under DDP
without all-reduce until the last); then the optimizer and the EMA update run.

Also here: how many intra-op threads a CPU step gets (:func:`step_threads`) and ``torch.compile`` of
the denoiser with its caches on disk (:func:`compile_module`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from diffmem.config import ModelConfig, TrainConfig
from diffmem.io import to_model_scale
from diffmem.train.losses import per_sample_loss

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")  # train.precision: float32 (no TF32 on GPUs), or bfloat16 autocast
SMALL_STEP_GFLOP = 10.0  # a CPU step below this many GFLOP runs on one intra-op thread by default


def step_gflop(net: torch.nn.Module, model: ModelConfig, batch: int) -> float:
    """Floating-point work of one training step in GFLOP: 3 × the forward pass of one image × ``batch``
    (the backward pass costs about twice the forward), counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(net.parameters()).device
    x = torch.zeros(1, model.in_channels, model.resolution, model.resolution, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if model.label_dim else None
    was_training = net.training
    net.eval()  # no dropout draws
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, torch.ones(1, device=device), labels)
    finally:
        net.train(was_training)
    return 3 * counter.get_total_flops() * batch / 1e9


def step_threads(requested: int | None, gflop: float, available: int) -> int:
    """Intra-op threads for a CPU training step: ``requested`` when given; else 1 for a step under
    :data:`SMALL_STEP_GFLOP` and ``available`` for a larger one.

    A small model's step is a few hundred operators of a few microseconds each; a second intra-op
    thread adds a fork and a join to every one of them and gains at most ~25 % (on the 2-vCPU machines
    the embedded default targets, the two vCPUs share one core), and when another process holds the
    other CPU every join waits for it: the digits preset ran 3–20× slower on two threads than on one
    while other jobs shared the machine (benchmarks/results/train.md). Since the thread count changes
    the last bits of some kernels, the default also makes a small run's results independent of the
    machine's core count.
    """
    if requested is not None:
        return requested
    return 1 if gflop < SMALL_STEP_GFLOP else available


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


class TrainStep:
    """Forward and backward of one step: ``step(images, labels, idx, sigma, noise)`` → the summed loss.

    ``images`` (uint8) and ``labels`` are the whole training set on the device, ``idx`` this process's
    indices of the step, ``sigma`` and ``noise`` its draws. Afterwards every parameter's ``.grad``
    holds Σ_micro-batches ∇(Σ per-sample loss / ``per_rank``).
    """

    def __init__(
        self,
        net: torch.nn.Module,                 # the module called for the loss (possibly DDP and/or compiled)
        params: list[torch.nn.Parameter],     # the trained parameters
        model: ModelConfig,
        train_cfg: TrainConfig,
        device: torch.device,
        *,
        per_rank: int,                        # images per process and step
        distributed: bool,
    ) -> None:
        self.net, self.params, self.model, self.train_cfg = net, params, model, train_cfg
        self.device, self.per_rank, self.distributed = device, per_rank, distributed
        self.micro = train_cfg.batch_per_device or per_rank

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None, idx: torch.Tensor, sigma: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        loss_sum = torch.zeros((), device=self.device)
        for k in range(0, self.per_rank, self.micro):
            j = idx[k:k + self.micro]
            y = to_model_scale(images[j])
            lab = labels[j] if labels is not None else None
            last = k + self.micro >= self.per_rank
            with _no_sync(self.net) if self.distributed and not last else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.train_cfg.precision == "bf16"):
                    loss = per_sample_loss(self.net, y, sigma[k:k + self.micro], noise[k:k + self.micro], lab,
                                           self.model, self.train_cfg.loss_norm)
                loss = loss.sum() / self.per_rank
                loss.backward()
            loss_sum += loss.detach()
        return loss_sum


def _no_sync(module: torch.nn.Module):
    """DDP's ``no_sync`` (gradient accumulation without all-reduce), also through a compiled wrapper."""
    return getattr(module, "_orig_mod", module).no_sync()
