"""``diffmem sample --diffusers DIR``: the options, their checks and the output lines (the sampling itself
lives in :mod:`diffmem.sample.diffusers`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from diffmem.cli.common import show_progress
from diffmem.errors import UsageError
from diffmem.io import ImageSet

DEFAULT_STEPS = 50
# options of the EDM sampler (--run / --optimal) and their defaults: a diffusers model ignores them
EDM_ONLY = {"solver": ("--solver", "heun"), "sigma_min": ("--sigma-min", 0.002), "sigma_max": ("--sigma-max", 80.0),
            "rho": ("--rho", 7.0), "churn": ("--churn", 0.0), "s_min": ("--s-min", 0.0),
            "s_max": ("--s-max", float("inf")), "s_noise": ("--s-noise", 1.0), "snapshot": ("--snapshot", None),
            "unconditional": ("--unconditional", False)}


def add_diffusers_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("diffusers models (with --diffusers DIR; the [diffusers] extra)")
    g.add_argument("--scheduler", choices=("saved", "ddpm", "ddim", "edm-euler"), metavar="S",
                   help="saved (default: the scheduler saved with the model), ddpm, ddim or edm-euler, built from "
                        "the saved scheduler config")
    g.add_argument("--eta", type=float, metavar="ETA", help="DDIM's η (default 0: deterministic)")


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that do not apply: diffusers-only ones without --diffusers, EDM ones with it."""
    if args.diffusers is None:
        for name in ("scheduler", "eta"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name}: applies to --diffusers only; expected --diffusers DIR")
        return
    for name, (option, default) in EDM_ONLY.items():
        value = getattr(args, name)
        if value != default:
            raise UsageError(f"{option}: {value!r} applies to --run and --optimal only; a diffusers model is "
                             "sampled by its scheduler (see --scheduler, --steps, --eta)")


def sample_diffusers(args: argparse.Namespace) -> tuple[ImageSet, Any, dict[str, Any], list[str]]:
    """Load, sample and describe: (samples, the sampler settings, the JSON summary's fields, the terminal lines)."""
    from diffmem.sample.diffusers import (  # torch and the [diffusers] extra: only when sampling
        DiffusersConfig,
        generate_diffusers,
        load_diffusers_model,
    )
    from diffmem.sample.labels import check_label

    cfg = DiffusersConfig(scheduler=args.scheduler or "saved", steps=args.steps or DEFAULT_STEPS,
                          eta=args.eta or 0.0, batch=args.batch, device=args.device, dtype=args.dtype or "float32")
    model = load_diffusers_model(args.diffusers, cfg.scheduler, cfg.device, cfg.dtype)
    check_label(args.label, model.label_dim, "--label")
    t0 = time.perf_counter()
    samples = generate_diffusers(model, args.n, args.seed, cfg, labels=args.label, progress=show_progress(args))
    seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.unet.parameters())
    counts = {int(k): int(v) for k, v in zip(*np.unique(samples.labels, return_counts=True)) if k >= 0}
    what = (f"diffusers UNet2DModel {args.diffusers} ({n_params:,} parameters, "
            f"{f'{model.label_dim} classes' if model.label_dim else 'unconditional'}, {cfg.dtype}, {model.device})")
    summary = {"out": args.out, "n_samples": args.n, "seed_first": args.seed, "seed_last": args.seed + args.n - 1,
               "image_shape": list(samples.shape), "label_dim": model.label_dim, "label_counts": counts,
               "denoiser": what, "scheduler": model.scheduler_class, "steps": cfg.steps, "dtype": cfg.dtype,
               "unet_evaluations_per_sample": cfg.steps, "eta": cfg.eta, "seconds": round(seconds, 3)}
    shape = "×".join(str(s) for s in samples.shape)
    labels = (f"labels from {model.label_dim} classes ({len(counts)} used)" if model.label_dim
              else "unlabeled (label −1)")
    lines = [f"wrote {args.n} samples (uint8 {shape}; seeds {args.seed}..{args.seed + args.n - 1}; {labels}) "
             f"to {args.out}",
             f"model: {what}",
             f"sampler: {model.scheduler_class}, {cfg.steps} steps ({cfg.steps} UNet evaluations per sample)"
             + (f", η={cfg.eta:g}" if model.scheduler_class == "DDIMScheduler" else "") + f"; {seconds:.2f} s"]
    return samples, cfg, summary, lines
