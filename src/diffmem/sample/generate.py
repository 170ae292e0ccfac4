"""``generate``: n samples of a denoiser with the EDM sampler, one seed per sample, as uint8 images."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from diffmem.config import SampleConfig
from diffmem.devices import check_device_name, resolve_device
from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet, to_uint8
from diffmem.progress import progress_bar
from diffmem.sample.labels import as_classes, as_labels, draw_labels
from diffmem.sample.noise import SEED_MAX, SeedNoise
from diffmem.sample.schedule import schedule_for
from diffmem.sample.solvers import SOLVERS

log = logging.getLogger(__name__)

DEFAULT_CONFIG = SampleConfig()

def validate_sample(cfg: SampleConfig, *, where: str = "sample") -> None:
    """Refuse the first setting of a sampler config that cannot run, in one line naming it by its config path
    (``sample.steps``; ``where`` is the prefix)."""
    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            raise bad(f"{where}.{field}", getattr(cfg, field), expected)

    need(cfg.solver in SOLVERS, "solver", f"one of {sorted(SOLVERS)}")
    need(isinstance(cfg.steps, int) and cfg.steps >= 1, "steps", "an integer >= 1")
    need(0 < cfg.sigma_min < math.inf, "sigma_min", "a finite number > 0")
    need(cfg.sigma_min <= cfg.sigma_max < math.inf, "sigma_max",
         f"a finite number >= {where}.sigma_min ({cfg.sigma_min})")
    need(0 < cfg.rho < math.inf, "rho", "a finite number > 0")
    need(0 <= cfg.S_churn < math.inf, "S_churn", "a finite number >= 0")
    need(cfg.S_min >= 0, "S_min", "a number >= 0")
    need(cfg.S_max >= cfg.S_min, "S_max", f"a number >= {where}.S_min ({cfg.S_min})")
    need(0 <= cfg.S_noise < math.inf, "S_noise", "a finite number >= 0")
    need(isinstance(cfg.batch, int) and cfg.batch >= 1, "batch", "an integer >= 1")
    check_device_name(cfg.device, f"{where}.device")


def _denoiser_device(denoiser, fallback: str) -> torch.device:
    if isinstance(denoiser, torch.nn.Module):
        for t in (*denoiser.parameters(), *denoiser.buffers()):
            return t.device
    return resolve_device(fallback, "sample.device")


def _image_shape(denoiser) -> tuple[int, int, int]:
    try:
        return int(denoiser.in_channels), int(denoiser.resolution), int(denoiser.resolution)
    except AttributeError as e:
        raise UsageError(f"denoiser: {type(denoiser).__name__} has no {e.name!r} attribute; expected "
                         "in_channels, resolution and label_dim") from e


def sample_seeds(
    denoiser,
    seeds: np.ndarray | torch.Tensor,
    cfg: SampleConfig = DEFAULT_CONFIG,
    *,
    labels: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
    callback=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch: the float64 final states (model scale) of the samples with these seeds, and their labels.

    Sample k's initial noise, label (drawn uniformly from ``classes``, by default all
    ``denoiser.label_dim`` classes, unless ``labels`` is given) and churn noise all come from a
    generator seeded with ``seeds[k]``, in that order, so the result for one seed does not depend on
    the other seeds in the batch.
    """
    validate_sample(cfg)
    shape = _image_shape(denoiser)
    device = _denoiser_device(denoiser, cfg.device)
    noise = SeedNoise(seeds)
    sigmas = schedule_for(denoiser, cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    # EDM Alg. 2 line 1: the initial state x ~ N(0, σ_0² I) at the schedule's first level
    x = noise.randn(shape, device=device) * float(sigmas[0])
    labels = draw_labels(noise, int(getattr(denoiser, "label_dim", 0) or 0), classes, labels)
    labels = labels.to(device) if labels is not None else None
    solve = SOLVERS[cfg.solver]
    with torch.no_grad():
        x0 = solve(denoiser, x, sigmas, labels=labels, randn_like=noise.randn_like, S_churn=cfg.S_churn,
                   S_min=cfg.S_min, S_max=cfg.S_max, S_noise=cfg.S_noise, callback=callback)
    return x0, (labels.cpu() if labels is not None else None)


def check_request(
    n: int, seed: int, label_dim: int, labels: np.ndarray | torch.Tensor | int | None,
    classes: np.ndarray | torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate a request for ``n`` samples from ``seed``: (labels, one per sample, or None; classes or None)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise bad("n", n, "an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX - n:
        raise bad("seed", seed, "an integer in [0, 2**63 - 1 - n]")
    if labels is not None and label_dim > 0:
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        labels = as_labels(labels.expand(n) if labels.numel() == 1 else labels, n, label_dim)  # one for all, or each
    elif labels is not None:
        log.info("labels ignored: the model is unconditional (label_dim=0)")
        labels = None
    if classes is not None and label_dim > 0:
        classes = as_classes(classes, label_dim)
    return labels, classes  # type: ignore[return-value]


def run_batches(
    n: int,
    seed: int,
    shape: tuple[int, ...],  # C×H×W of one sample
    batch: int,  # samples per pass
    steps: int,  # progress-bar steps per batch (one per ``callback`` call)
    sample_batch,  # (seeds, lo, hi, callback) -> (float model-scale states in [-1, 1], labels or None)
    *,
    progress: bool = False,
) -> ImageSet:
    """The batching loop of every sampler: seeds ``seed + arange(n)``, batches of ``batch``, uint8 images."""
    seeds = int(seed) + np.arange(n, dtype=np.int64)
    images = np.empty((n, *shape), dtype=np.uint8)
    out_labels = np.full(n, -1, dtype=np.int64)
    n_batches = -(-n // batch)
    bar = progress_bar(n_batches * steps, f"sampling {n} images ({n_batches} batches × {steps} steps)",
                       "step", enabled=progress)
    try:
        for b in range(n_batches):
            lo, hi = b * batch, min(n, (b + 1) * batch)
            x0, lab = sample_batch(seeds[lo:hi], lo, hi, lambda *_: bar.update(1))
            images[lo:hi] = to_uint8(x0).cpu().numpy()
            if lab is not None:
                out_labels[lo:hi] = lab.numpy()
            log.debug("sampled images %d..%d of %d", lo, hi - 1, n)
    finally:
        bar.close()
    return ImageSet(images=images, labels=out_labels, seeds=seeds)


def generate(
    denoiser,
    n: int,
    seed: int,
    cfg: SampleConfig = DEFAULT_CONFIG,
    *,
    labels: np.ndarray | torch.Tensor | int | None = None,  # per-sample labels, one label for all, or None (drawn)
    classes: np.ndarray | torch.Tensor | None = None,        # classes drawn labels come from; None = all label_dim
    progress: bool = False,                                  # tqdm bar on stderr (per denoiser step)
) -> ImageSet:
    """``n`` samples with seeds ``seed + arange(n)`` in batches of ``cfg.batch``, quantised to uint8.

    The denoiser runs on its own device (that of its first parameter or buffer, else ``cfg.device``).
    Returned labels are the ones sampled with (−1 for an unconditional denoiser). Sample k depends
    only on its seed and ``cfg`` (not on ``cfg.batch``).
    """
    validate_sample(cfg)
    shape = _image_shape(denoiser)
    labels, classes = check_request(n, seed, int(getattr(denoiser, "label_dim", 0) or 0), labels, classes)

    def sample_batch(seeds, lo, hi, callback):
        return sample_seeds(denoiser, seeds, cfg, labels=None if labels is None else labels[lo:hi], classes=classes,
                            callback=callback)

    return run_batches(n, seed, shape, cfg.batch, cfg.steps, sample_batch, progress=progress)
