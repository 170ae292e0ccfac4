"""The one table from the library's names to the command line's flags, and the translation of error messages.

The library names what it refuses by its config path (``train.ema_mode``, ``model.channels``) or by its
argument (``run``, ``data``); a command whose flags set that field shows its flag instead
(``--ema-mode``), wherever the name stands in the message. A command that has no such flag (``study``
and ``emm`` read their configs from JSON files) shows the config path unchanged. :data:`FLAGS` holds, for
each command, the names its flags set; ``diffmem train`` builds its model and training options from
its rows.
"""

from __future__ import annotations

import re

FLAGS: dict[str, dict[str, str]] = {  # command → {config path or argument name: the flag that sets it}
    "data": {
        "data.source": "--source", "data.size": "--size", "data.classes": "--classes", "data.labels": "--labels",
        "data.label_classes": "--label-classes", "data.resolution": "--resolution", "data.resample": "--resample",
        "data.mix": "--mix", "data.mix_rate": "--mix-rate", "data.seed": "--seed",
        "data.near_dup_threshold": "--near-threshold",
    },
    "train": {
        "data": "--data", "run": "--out", "preset": "--preset",
        "model.arch": "--arch", "model.channels": "--channels", "model.channel_mult": "--channel-mult",
        "model.blocks": "--blocks", "model.attn_resolutions": "--attn-resolutions", "model.dropout": "--dropout",
        "model.embedding": "--embedding", "model.encoder": "--encoder",
        "model.channel_mult_noise": "--channel-mult-noise", "model.skip_mask": "--skip-mask",
        "model.precond": "--precond", "model.sigma_data": "--sigma-data", "model.P_mean": "--P-mean",
        "model.P_std": "--P-std",
        "train.kimg": "--kimg", "train.epochs": "--epochs", "train.batch": "--batch",
        "train.batch_per_device": "--batch-per-device", "train.lr": "--lr", "train.betas": "--betas",
        "train.warmup_kimg": "--warmup-kimg", "train.warmup_epochs": "--warmup-epochs",
        "train.weight_decay": "--weight-decay", "train.loss_norm": "--loss-norm", "train.ema_mode": "--ema-mode",
        "train.ema_decay": "--ema-decay", "train.ema_halflife_kimg": "--ema-halflife-kimg",
        "train.ema_halflife_epochs": "--ema-halflife-epochs", "train.ema_rampup_ratio": "--ema-rampup-ratio",
        "train.data_order": "--data-order", "train.snapshot_kimg": "--snapshot-kimg", "train.log_kimg": "--log-kimg",
        "train.state_kimg": "--state-kimg", "train.precision": "--precision", "train.compile": "--compile",
        "train.grad_clip": "--grad-clip", "train.seed": "--seed", "train.device": "--device",
    },
    "sample": {
        "run": "--run", "snapshot_kimg": "--snapshot",
        "sample.solver": "--solver", "sample.steps": "--steps", "sample.sigma_min": "--sigma-min",
        "sample.sigma_max": "--sigma-max", "sample.rho": "--rho", "sample.S_churn": "--churn",
        "sample.S_min": "--s-min", "sample.S_max": "--s-max", "sample.S_noise": "--s-noise",
        "sample.batch": "--batch", "sample.device": "--device",
    },
    "emm": {"preset": "--preset", "config": "--config"},
    "study": {"config": "--config"},
    "measure": {
        "measure.threshold": "--threshold", "measure.confidence": "--confidence", "measure.backend": "--backend",
        "measure.device": "--device", "measure.memory_mb": "--memory-mb", "measure.candidates": "--candidates",
        "measure.copying_cells": "--cells", "measure.copying_tau": "--tau", "measure.copying_seed": "--cells-seed",
    },
}

_CONFIG_PATH = re.compile(r"(?<![\w./-])(?:data|model|train|sample|measure)\.[A-Za-z_]\w*")


def flag(command: str, name: str) -> str:
    """The flag of ``command`` that sets the config path or argument ``name``."""
    return FLAGS[command][name]


def to_flags(message: str, command: str) -> str:
    """``message`` as ``command`` shows it: the name it starts with (``train.ema_mode: …``, ``run: …``) and every
    config path in it replaced by the command's flag for it; names the command has no flag for are left as
    they are."""
    names = FLAGS.get(command)
    if not names:
        return message
    head, sep, rest = message.partition(": ")
    if sep and head in names:
        message = names[head] + sep + rest
    return _CONFIG_PATH.sub(lambda m: names.get(m.group(0), m.group(0)), message)
