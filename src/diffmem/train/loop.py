"""The training loop: Adam with warm-up, gradient accumulation, EMA, snapshots, resumable states, DDP.

Reproducibility: the data order of step s comes from (seed, epoch), the σ and noise draws of step s
from (seed, step) for the whole global batch (each process takes its slice), and dropout from
(seed, step, rank). A run is therefore a function of its config, and a resumed run continues with
exactly the draws the uninterrupted run would have made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from diffmem import artefacts, seeds
from diffmem.config import ModelConfig, TrainConfig
from diffmem.devices import exact_float32, resolve_device
from diffmem.errors import RunError
from diffmem.nn import build_denoiser, validate_model
from diffmem.progress import progress_bar
from diffmem.runtime import intra_op_threads, tune_allocator
from diffmem.train import distributed as dist
from diffmem.train.checkpoints import (
    FINAL_FILE,
    SNAPSHOT_DIR,
    STATE_FILE,
    load_state,
    save_denoiser,
    save_state,
    snapshot_name,
)
from diffmem.train.dataset import DataOrder, TrainingData, derive_seed, load_training_data
from diffmem.train.ema import EMAUpdater, ema_beta, make_ema
from diffmem.train.flat import FlatAdam, FlatEMA, flatten_parameters
from diffmem.train.losses import sample_sigma
from diffmem.train.schedule import learning_rate, step_crosses
from diffmem.train.step import TrainStep, compile_module, step_gflop, step_threads
from diffmem.train.validate import validate_train

log = logging.getLogger(__name__)

STATS_FILE = "stats.jsonl"
CONFIG_FILE = "config.json"
LOCK_FILE = artefacts.LOCK_FILE
_NOISE, _DROPOUT, _INIT = seeds.TRAIN_NOISE, seeds.TRAIN_DROPOUT, seeds.TRAIN_INIT  # purposes of derived seeds


def resolve_configs(data_path: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, processes: int = 1):
    """(training data, resolved model config, resolved run config dict): the model's shape from the data, both
    configs validated against it (``processes``: the processes the batch is split among)."""
    data = load_training_data(data_path)
    _, c, r, _ = data.images.shape
    model_cfg = dataclasses.replace(model_cfg, resolution=int(r), in_channels=int(c), label_dim=data.label_dim)
    validate_model(model_cfg)
    validate_train(train_cfg, len(data), processes=processes)
    resolved = {"model": model_cfg, "train": train_cfg,
                "data": {"path": str(data_path), "hash": data.data_hash, "images": len(data),
                         "label_dim": data.label_dim}}
    return data, model_cfg, resolved


def run_identity(resolved: dict) -> str:
    """Config hash deciding "same run": everything but the device and the data's path."""
    ident = artefacts.to_jsonable(resolved)
    ident["train"].pop("device", None)
    ident["data"].pop("path", None)
    return artefacts.config_hash(ident)


RUN_WHAT = "a training run"  # what a run directory is called in refusals


def check_run_dir(run: Path, resolved: dict, ident: str) -> dict | None:
    """The manifest of ``run`` when it holds this run (finished or not), None when it is new or empty (but for its
    lock and what a killed run was writing); anything else is refused (:func:`diffmem.artefacts.check_resumable`,
    naming the first field of another config)."""
    temps = tuple(p.name for p in run.iterdir() if artefacts.is_temporary(p.name)) if run.is_dir() else ()
    return artefacts.check_resumable(run, ident, RUN_WHAT, key="run_identity", stage="run", config=resolved,
                                     keep=(LOCK_FILE, *temps), option="run")


def prepare_run_dir(run: Path, resolved: dict, ident: str) -> bool:
    """Check ``run`` (:func:`check_run_dir`) and, when it is new, write its resolved config and a manifest that says
    running, before any work; returns True when it already holds the complete run."""
    m = check_run_dir(run, resolved, ident)
    if m is not None:
        return m.get("status") == "complete"
    artefacts.atomic_write_json(run / CONFIG_FILE, resolved)  # the resolved config, before any work
    artefacts.write_manifest(run, "run", resolved, status="running", run_identity=ident)
    return False


@contextlib.contextmanager
def locked_run_dir(run: Path) -> Iterator[None]:
    """Hold the lock on the run directory while the block runs (another process that asks for it is refused) and
    remove the temporaries a killed run left there first; a directory made only for the lock is removed again when
    the block fails before anything else was written into it."""
    made = not run.exists()
    try:
        with artefacts.dir_lock(run, "run"):
            artefacts.remove_stale_temps(run)  # what a killed run was writing; the lock says no one else writes here
            yield
    except BaseException:
        if made and run.is_dir() and [p.name for p in run.iterdir()] == [LOCK_FILE]:
            with contextlib.suppress(OSError):
                (run / LOCK_FILE).unlink()
                run.rmdir()
        raise


def _truncate_stats(path: Path, step: int) -> None:
    """Drop stats lines past ``step`` (written after the state that is resumed)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line cut short by an interruption
    artefacts.atomic_write_text(path, "".join(x + "\n" for x in keep))


def train(
    data: str | Path,
    run: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    progress: bool = False,
    stop_after_steps: int | None = None,  # save the state and return early after this step (interruption)
    threads: int | None = None,           # CPU intra-op threads; None = 1 for a small step, else torch's setting
) -> Path:
    """Train a denoiser on the dataset at ``data`` into the run dir ``run`` (README.md, "Files"); returns ``run``.

    Resumes from ``run/state.safetensors`` when ``run`` holds an unfinished run of the same config,
    returns at once when it holds the finished run, and refuses a run dir of a different config (or anything
    else but a new or empty directory). The configs are validated before anything is written; ``model_cfg``'s
    ``resolution``, ``in_channels`` and ``label_dim`` are taken from the data. The run directory is locked while
    training (a second process is refused), and temporaries a killed run left there are removed.
    """
    data, run = Path(data), Path(run)
    rank, size, local_rank = dist.world()
    td, model_cfg, resolved = resolve_configs(data, model_cfg, train_cfg, processes=size)
    ident = run_identity(resolved)
    if rank != 0:  # torchrun: rank 0 holds the lock and writes the run directory; the others only train
        return _train_on_device(run, td, model_cfg, train_cfg, resolved, ident, progress, stop_after_steps, threads)
    check_run_dir(run, resolved, ident)  # refused before the directory is made for the lock
    with locked_run_dir(run):
        return _train_on_device(run, td, model_cfg, train_cfg, resolved, ident, progress, stop_after_steps, threads)


def _train_on_device(run: Path, td: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig, resolved: dict,
                  ident: str, progress: bool, stop_after_steps: int | None, threads: int | None) -> Path:
    _, size, local_rank = dist.world()
    device = resolve_device(train_cfg.device, "train.device")
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    tune_allocator()
    # training seeds torch's global generators (initial weights, dropout) and may set the intra-op threads;
    # the caller's states are restored
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), intra_op_threads(), \
            exact_float32(train_cfg.precision == "fp32"):  # no TF32, as the reference
        return _train(run, td, model_cfg, train_cfg, resolved, ident, device, progress, stop_after_steps, threads)


def _train(run: Path, td: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig, resolved: dict, ident: str,
           device: torch.device, progress: bool, stop_after_steps: int | None, threads: int | None) -> Path:
    rank, size, _ = dist.world()
    distributed = dist.init(device)
    done = prepare_run_dir(run, resolved, ident) if rank == 0 else False
    done = dist.broadcast_flag(done, device)
    if done:
        log.info("%s already holds the complete run; nothing to do", run)
        return run
    dist.barrier()

    B, N = train_cfg.batch, len(td)
    per_rank = B // size
    total_nimg = train_cfg.kimg * 1000 if train_cfg.kimg is not None else train_cfg.epochs * N
    total_steps = max(1, math.ceil(total_nimg / B - 1e-9))
    state_kimg = train_cfg.state_kimg or train_cfg.snapshot_kimg or max(B, total_steps * B // 10) / 1000

    torch.manual_seed(derive_seed(train_cfg.seed, _INIT))  # the initial weights come from the seed
    net = build_denoiser(model_cfg).to(device).train()
    ema = make_ema(net)
    if device.type == "cpu":  # one kernel per update, not one per tensor (bit-identical to the lines below)
        flat, ema_flat = flatten_parameters(net), flatten_parameters(ema)
        opt = FlatAdam(list(net.parameters()), flat, lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                       weight_decay=train_cfg.weight_decay)
        ema_update = FlatEMA(ema, ema_flat, net, flat)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                               weight_decay=train_cfg.weight_decay)  # coupled L2, as the reference study used
        ema_update = EMAUpdater(ema, net)
    step = nimg = 0
    state_path = run / STATE_FILE
    if state_path.exists():
        step, nimg = load_state(state_path, net, ema, opt, config_hash=ident)
        log.info("resuming %s at step %d (%.3f kimg)", run, step, nimg / 1000)
    if rank == 0:
        _truncate_stats(run / STATS_FILE, step)
    # the module called for the loss: the network, wrapped for DDP when distributed (and compiled when asked)
    loss_net = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    if device.type == "cpu":
        n_threads = step_threads(threads, step_gflop(net, model_cfg, per_rank), torch.get_num_threads())
        torch.set_num_threads(n_threads)  # train() restores the caller's count
        log.info("training on %d intra-op thread(s)", n_threads)
    if train_cfg.compile:
        loss_net = compile_module(loss_net, device)
    step_fn = TrainStep(loss_net, list(net.parameters()), model_cfg, train_cfg, device, per_rank=per_rank,
                        distributed=distributed)

    images = torch.as_tensor(td.images).to(device)
    labels = torch.as_tensor(td.labels).to(device) if td.labels is not None else None
    order = DataOrder(N, B, train_cfg.seed, train_cfg.data_order)
    log_kimg = train_cfg.log_kimg or max(B, total_steps * B // 100) / 1000
    bar = None
    if progress and rank == 0:
        bar = progress_bar(total_steps, "train", "step", enabled=True, initial=step, leave=True)

    def checkpoint(snapshot: bool) -> None:
        bad = [n for n, p in net.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise RunError(f"weights became non-finite ({bad[0]}) at step {step}; the last good state is kept in "
                           f"{state_path}; lower train.lr or set train.grad_clip")
        if rank == 0:
            if snapshot:
                save_denoiser(run / SNAPSHOT_DIR / snapshot_name(nimg / 1000), ema, model_cfg, kimg=nimg / 1000,
                              step=step)
            save_state(state_path, net, ema, opt, step=step, nimg=nimg, config_hash=ident)
        dist.barrier()

    log_loss, log_steps, t_log, nimg_log = 0.0, 0, time.perf_counter(), nimg
    while step < total_steps:
        # σ, noise and the batch of this step: all from (seed, step), for the global batch
        idx = torch.as_tensor(order.indices(step)[rank * per_rank:(rank + 1) * per_rank], device=device)
        g = torch.Generator(device=device).manual_seed(derive_seed(train_cfg.seed, _NOISE, step))
        u = torch.rand(B, generator=g, device=device, dtype=torch.float64)
        z = torch.randn(B, generator=g, device=device, dtype=torch.float64)
        noise = torch.randn((B, *td.images.shape[1:]), generator=g, device=device)
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        sigma, noise = sample_sigma(model_cfg, u[sl], z[sl]), noise[sl]
        _seed_dropout(derive_seed(train_cfg.seed, _DROPOUT, step, rank), device)
        lr = learning_rate(train_cfg, nimg, N)  # linear warm-up, on the images seen before this step
        for group in opt.param_groups:
            group["lr"] = lr

        loss_sum = step_fn(images, labels, idx, sigma, noise)  # forward and backward into the gradients
        loss_value = float(dist.mean(loss_sum))
        if not math.isfinite(loss_value):
            raise RunError(f"loss is {loss_value} at step {step} ({nimg / 1000:.3f} kimg); stopped, the last good "
                           f"state is kept in {state_path}; lower train.lr or set train.grad_clip")
        if train_cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), train_cfg.grad_clip)
        opt.step()
        ema_update(ema_beta(train_cfg, nimg, B, N))  # β from the images seen before this step, as the reference
        step += 1
        nimg += B
        log_loss, log_steps = log_loss + loss_value, log_steps + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", kimg=f"{nimg / 1000:.1f}", refresh=False)

        last = step == total_steps
        if rank == 0 and (step_crosses(nimg, B, log_kimg) or last):
            dt = time.perf_counter() - t_log
            rec = {"step": step, "kimg": nimg / 1000, "epoch": nimg / N, "loss": log_loss / log_steps, "lr": lr,
                   "images_per_s": (nimg - nimg_log) / max(dt, 1e-9), "sec_per_kimg": dt * 1000 / (nimg - nimg_log),
                   "time": time.time()}
            with open(run / STATS_FILE, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log_loss, log_steps, t_log, nimg_log = 0.0, 0, time.perf_counter(), nimg
        snap = step_crosses(nimg, B, train_cfg.snapshot_kimg) or (last and train_cfg.snapshot_kimg is not None)
        if snap or step_crosses(nimg, B, state_kimg) or last:
            checkpoint(snap)
        if stop_after_steps is not None and step >= stop_after_steps and not last:
            checkpoint(False)
            if bar is not None:
                bar.close()
            return run

    if bar is not None:
        bar.close()
    if rank == 0:
        save_denoiser(run / FINAL_FILE, ema, model_cfg, kimg=nimg / 1000, step=step)
        artefacts.write_manifest(run, "run", resolved, status="complete", run_identity=ident,
                                 steps=step, kimg=nimg / 1000, epochs=nimg / N)
    dist.barrier()
    return run


def _seed_dropout(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for the generators training draws from (the CPU's, and CUDA's on a GPU):
    the same states, without queueing a lazy seed call (and its stack trace) for each absent accelerator."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
