"""What a training config can run: every rule of a :class:`~diffmem.config.TrainConfig`, checked at once.

:func:`validate_train` refuses the first field that cannot run, in one line that names it by its config
path (``train.ema_mode``), the bad value and what is expected; the command line shows its flags instead
(``--ema-mode``). Without the dataset size it checks everything but the rule that depends on |D| (the
``final`` EMA mode's decay), so a sweep can refuse a bad config before any work starts; the training loop
checks again with the size.
"""

from __future__ import annotations

import dataclasses
import math

from diffmem.config import TrainConfig
from diffmem.devices import check_device_name
from diffmem.errors import bad
from diffmem.train.dataset import DATA_ORDERS
from diffmem.train.ema import EMA_MODES, HALFLIFE_MODES, ema_beta
from diffmem.train.losses import LOSS_NORMS
from diffmem.train.step import PRECISIONS


def validate_train(cfg: TrainConfig, n_images: int | None = None, *, where: str = "train", processes: int = 1) -> None:
    """Refuse a training config that cannot run (see the module docstring).

    n_images:  the dataset size |D| (None: not known yet; the |D|-dependent rule is left to the loop)
    where:     the config path of ``cfg`` in messages (``train``; a study's base: ``base.train``)
    processes: the processes training runs on (the batch is split among them)
    """
    def p(name: str) -> str:
        return f"{where}.{name}"

    def one_of_two(a: str, b: str, expected: str) -> None:
        if (getattr(cfg, a) is None) == (getattr(cfg, b) is None):
            raise bad(p(a), getattr(cfg, a), f"exactly one of {p(a)} and {p(b)} {expected}(the other null); "
                      f"{p(b)} is {getattr(cfg, b)!r}")

    one_of_two("kimg", "epochs", "")
    name = "kimg" if cfg.kimg is not None else "epochs"
    if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
        raise bad(p(name), getattr(cfg, name), "a positive, finite duration")
    if cfg.batch < 1 or cfg.batch % processes:
        raise bad(p("batch"), cfg.batch, f"a positive multiple of the {processes} processes")
    per_process = cfg.batch // processes
    if cfg.batch_per_device is not None and (cfg.batch_per_device < 1 or per_process % cfg.batch_per_device):
        raise bad(p("batch_per_device"), cfg.batch_per_device, f"a divisor of the {per_process} images per process "
                  f"({p('batch')} {cfg.batch} / {processes} processes)")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad(p("lr"), cfg.lr, "a positive, finite learning rate")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise bad(p("betas"), list(cfg.betas), "Adam's two betas, each in [0, 1)")
    if not (math.isfinite(cfg.eps) and cfg.eps >= 0):
        raise bad(p("eps"), cfg.eps, "Adam's ε, finite and ≥ 0")
    if cfg.precision not in PRECISIONS:
        raise bad(p("precision"), cfg.precision, " or ".join(PRECISIONS))
    for every in ("snapshot_kimg", "log_kimg", "state_kimg"):
        v = getattr(cfg, every)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise bad(p(every), v, "a positive number of kimg, or null")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):
        raise bad(p("grad_clip"), cfg.grad_clip, "a positive gradient norm, or null for no clipping")
    check_device_name(cfg.device, p("device"))
    _validate_schedules(cfg, n_images, p)


def _validate_schedules(cfg: TrainConfig, n_images: int | None, p) -> None:
    """The loss normalization, weight decay, data order, seed, warm-up and EMA (and fields a mode ignores)."""
    if cfg.loss_norm not in LOSS_NORMS:
        raise bad(p("loss_norm"), cfg.loss_norm, "sum (over an image's pixels, as the reference) or mean")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise bad(p("weight_decay"), cfg.weight_decay, "a finite coefficient ≥ 0 (Adam's coupled L2)")
    if cfg.data_order not in DATA_ORDERS:
        raise bad(p("data_order"), cfg.data_order, "fixed (one permutation, as the reference) or reshuffle")
    if cfg.seed < 0 or (cfg.data_order == "fixed" and cfg.seed >= 2**32):
        raise bad(p("seed"), cfg.seed, f"an integer in [0, 2³²) for {p('data_order')} fixed" if
                  cfg.data_order == "fixed" else "an integer ≥ 0")
    for name in ("warmup_kimg", "warmup_epochs", "ema_halflife_kimg", "ema_halflife_epochs"):
        v = getattr(cfg, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise bad(p(name), v, "a finite duration ≥ 0")
    if (cfg.warmup_kimg is None) == (cfg.warmup_epochs is None):
        raise bad(p("warmup_kimg"), cfg.warmup_kimg, f"exactly one of {p('warmup_kimg')} and {p('warmup_epochs')} "
                  f"(the other null); {p('warmup_epochs')} is {cfg.warmup_epochs!r}")
    mode = p("ema_mode")
    if cfg.ema_mode not in EMA_MODES:
        raise bad(mode, cfg.ema_mode, "one of " + ", ".join(EMA_MODES))
    uses_decay = cfg.ema_mode in ("constant", "final")
    if uses_decay and (cfg.ema_decay is None or not 0 <= cfg.ema_decay < 1):
        raise bad(p("ema_decay"), cfg.ema_decay, f"a decay in [0, 1) for {mode} {cfg.ema_mode}"
                  + (" (0 = no EMA)" if cfg.ema_mode == "constant" else " (the reference's default: 0.99929)"))
    if not uses_decay and cfg.ema_decay is not None:
        raise bad(p("ema_decay"), cfg.ema_decay, f"null: {mode} {cfg.ema_mode} does not use it (set {mode} to "
                  "constant or final)")
    halflife = (cfg.ema_halflife_kimg, cfg.ema_halflife_epochs)
    if cfg.ema_mode == "constant" and halflife != (None, None):
        name = "ema_halflife_kimg" if cfg.ema_halflife_kimg is not None else "ema_halflife_epochs"
        raise bad(p(name), getattr(cfg, name), f"null: {mode} constant does not use a half-life (set {mode} to "
                  "halflife, compensated or final)")
    if cfg.ema_mode in HALFLIFE_MODES and halflife.count(None) != 1:
        raise bad(p("ema_halflife_kimg"), cfg.ema_halflife_kimg, f"exactly one of {p('ema_halflife_kimg')} and "
                  f"{p('ema_halflife_epochs')} for {mode} {cfg.ema_mode} (the other null); "
                  f"{p('ema_halflife_epochs')} is {cfg.ema_halflife_epochs!r}")
    if cfg.ema_rampup_ratio is not None and not (math.isfinite(cfg.ema_rampup_ratio) and cfg.ema_rampup_ratio > 0):
        raise bad(p("ema_rampup_ratio"), cfg.ema_rampup_ratio, "a positive ratio, or null for no ramp-up")
    if cfg.ema_mode == "final" and n_images is not None:
        late = ema_beta(dataclasses.replace(cfg, ema_rampup_ratio=None), 0, cfg.batch, n_images)
        if not late < 1:
            raise bad(p("ema_decay"), cfg.ema_decay, f"a final decay that keeps β < 1 (it gives β = {late:.6g} "
                      f"with this half-life at |D| = {n_images:,})")
