"""`diffmem sample`: samples of a trained run or of the closed-form optimum, written as a uint8 .npz or as
a directory of PNGs named by seed."""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from diffmem.artefacts import check_new_dir, check_new_file
from diffmem.cli.common import (
    add_json_argument,
    add_progress_argument,
    add_threads_argument,
    print_json,
    show_progress,
)
from diffmem.cli.sample_diffusers import add_diffusers_arguments, check_options, sample_diffusers
from diffmem.config import SampleConfig
from diffmem.data import load_dataset
from diffmem.errors import UsageError, bad
from diffmem.io import sample_file_name, save_image_folder, save_image_set

log = logging.getLogger(__name__)

HELP = ("generate samples with the EDM Heun sampler from a trained run or the closed-form optimum, or sample a "
        "diffusers model")
EXAMPLES = """\
  diffmem sample --optimal data/digits-64 --n 1000 --seed 0 --out gen/optimal.npz
  diffmem sample --run runs/digits-64 --snapshot 256 --n 1000 --out gen/kimg256.npz
  diffmem sample --run runs/cond --n 100 --label 3 --steps 32 --out gen/three.npz --json
  diffmem sample --run runs/digits-64 --n 10000 --out gen/pngs/     # one PNG per sample (FID tools read it)
  diffmem sample --diffusers my-ddpm/ --scheduler ddim --steps 50 --n 1000 --out gen/ddpm.npz
"""

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SampleConfig()
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN", help="a training run directory or a .safetensors checkpoint")
    src.add_argument("--optimal", metavar="DIR", help="a dataset (artefact dir or .npz) whose closed-form optimum "
                                                      "is sampled")
    src.add_argument("--diffusers", metavar="DIR", help="a locally saved diffusers UNet2DModel with its scheduler "
                                                        "config (the [diffusers] extra; never fetched from a hub)")
    parser.add_argument("--snapshot", type=float, metavar="KIMG", help="with --run: the snapshot closest to KIMG "
                                                                        "(default: the final weights)")
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="sample k uses seed S+k (default 0)")
    parser.add_argument("--out", required=True, metavar="FILE.npz|DIR/",
                        help="output: a .npz (images uint8, labels, seeds), or a new directory (a path ending in / "
                             "or without a suffix) of PNGs named by seed: seed-000123.png, plus manifest.json")
    parser.add_argument("--label", type=int, metavar="L", help="conditional models: give every sample label L "
                                                               "(default: uniform per sample, from its seed)")
    g = parser.add_argument_group("sampler")
    g.add_argument("--solver", choices=("heun", "euler"), default=d.solver, help=f"ODE solver (default {d.solver})")
    g.add_argument("--steps", type=int, help=f"noise levels (default {d.steps}; Heun evaluates the denoiser "
                                             "2·steps−1 times); with --diffusers: scheduler steps (default 50)")
    g.add_argument("--sigma-min", type=float, default=d.sigma_min,
                   help=f"smallest noise level σ_min (default {d.sigma_min})")
    g.add_argument("--sigma-max", type=float, default=d.sigma_max,
                   help=f"largest noise level σ_max (default {d.sigma_max:g})")
    g.add_argument("--rho", type=float, default=d.rho, help=f"schedule exponent ρ (default {d.rho})")
    g.add_argument("--churn", type=float, default=d.S_churn, help="stochastic churn S_churn (default 0: ODE)")
    g.add_argument("--s-min", type=float, default=d.S_min, help=f"churn only for σ ≥ S_min (default {d.S_min})")
    g.add_argument("--s-max", type=float, default=d.S_max, help="churn only for σ ≤ S_max (default inf)")
    g.add_argument("--s-noise", type=float, default=d.S_noise, help=f"churn noise scale (default {d.S_noise})")
    g.add_argument("--batch", type=int, default=d.batch, help=f"samples per pass (default {d.batch}; does not "
                                                              "change any sample)")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--unconditional", action="store_true",
                   help="with --optimal: ignore the dataset's labels (default: conditional when it has label classes)")
    g.add_argument("--dtype", choices=("float64", "float32"),
                   help="with --optimal: compute dtype of the optimum (default float64); with --diffusers: the UNet's "
                        "(default float32; float64 makes every sample bit-identical whatever --batch)")
    add_diffusers_arguments(parser)
    add_json_argument(parser)
    add_progress_argument(parser)
    add_threads_argument(parser)


def _config(args: argparse.Namespace) -> SampleConfig:
    from diffmem.sample import validate_sample  # the sampler imports torch: only when sampling

    steps = SampleConfig().steps if args.steps is None or args.diffusers is not None else args.steps
    cfg = SampleConfig(solver=args.solver, steps=steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                       rho=args.rho, S_churn=args.churn, S_min=args.s_min, S_max=args.s_max, S_noise=args.s_noise,
                       batch=args.batch, device=args.device)
    validate_sample(cfg)
    return cfg


def _optimal(args: argparse.Namespace, cfg: SampleConfig):
    import torch  # with the sampler: only when sampling

    from diffmem.devices import resolve_device
    from diffmem.sample.optimal import dataset_optimum

    train_set, label_classes = load_dataset(args.optimal)
    if args.unconditional:
        label_classes = 0
    device = resolve_device(cfg.device, "sample.device")
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    denoiser, classes = dataset_optimum(train_set, label_classes, dtype=dtype, device=device)
    kind = f"{label_classes} classes" if label_classes else "unconditional"
    what = f"closed-form optimum of {len(train_set)} training images ({kind}, {args.dtype or 'float64'}, {device})"
    return denoiser, what, classes


def _trained(args: argparse.Namespace, cfg: SampleConfig):
    from diffmem.devices import resolve_device  # torch: only when sampling
    from diffmem.train.checkpoints import load_denoiser

    device = resolve_device(cfg.device, "sample.device")
    denoiser, model_cfg = load_denoiser(args.run, snapshot_kimg=args.snapshot, device=str(device))
    denoiser.eval()
    which = "final weights" if args.snapshot is None else f"snapshot nearest {args.snapshot:g} kimg"
    return denoiser, f"trained denoiser {args.run} ({which}, {model_cfg.precond}, {device})"


def _out_is_dir(out: str) -> bool:
    """``--out``: a ``.npz`` file, or a new (or empty) directory; anything else is refused before sampling."""
    p = Path(out)
    if out.endswith(".npz") and not p.is_dir():
        check_new_file(out, expected="a file name ending in .npz")
        return False
    if not (out.endswith(("/", os.sep)) or p.is_dir() or p.suffix == ""):
        raise bad("--out", out, "a file name ending in .npz, or a directory (DIR/) for one PNG per sample")
    check_new_dir(out, expected="a new or empty directory for one PNG per sample")
    return True


def run(args: argparse.Namespace) -> int:
    from diffmem.sample import generate  # torch: only when sampling
    from diffmem.sample.labels import check_label

    cfg = _config(args)
    if args.n < 1:
        raise bad("--n", args.n, "an integer >= 1")
    if args.seed < 0:
        raise bad("--seed", args.seed, "an integer >= 0")
    to_dir = _out_is_dir(args.out)
    if args.snapshot is not None and args.run is None:
        raise UsageError(f"--snapshot: {args.snapshot:g} given without --run; expected --run RUN")
    if args.snapshot is not None and not (args.snapshot >= 0 and math.isfinite(args.snapshot)):
        raise bad("--snapshot", args.snapshot, "a number of kimg >= 0")
    if args.unconditional and args.optimal is None:
        raise UsageError("--unconditional: applies to --optimal only; expected --optimal DIR")
    check_options(args)
    if args.diffusers is not None:
        samples, dcfg, summary, lines = sample_diffusers(args)
        if to_dir:
            save_image_folder(args.out, samples, dcfg, denoiser=summary["denoiser"], label=args.label,
                              inputs={"diffusers": args.diffusers})
        else:
            save_image_set(args.out, samples)
        summary["format"] = "png directory" if to_dir else "npz"
        if args.json:
            print_json(summary)
        else:
            print("\n".join(lines))
        return 0
    if args.dtype is not None and args.optimal is None:
        raise UsageError(f"--dtype: {args.dtype!r} applies to --optimal only; a trained model computes in its own "
                         "dtype")
    denoiser, what, classes = _optimal(args, cfg) if args.optimal is not None else (*_trained(args, cfg), None)
    label_dim = int(getattr(denoiser, "label_dim", 0) or 0)
    check_label(args.label, label_dim, "--label")

    t0 = time.perf_counter()
    if args.label is not None and classes is not None and args.label not in classes:
        raise bad("--label", args.label, f"a class with training images in {args.optimal} (classes present: "
                  f"{classes.tolist()[:20]})")
    samples = generate(denoiser, args.n, args.seed, cfg, labels=args.label, classes=classes,
                       progress=show_progress(args))
    seconds = time.perf_counter() - t0
    if to_dir:
        save_image_folder(args.out, samples, cfg, denoiser=what, label=args.label,
                          inputs={"run": args.run, "optimal": args.optimal})
    else:
        save_image_set(args.out, samples)

    evals = (2 * cfg.steps - 1) if cfg.solver == "heun" else cfg.steps
    counts = {int(k): int(v) for k, v in zip(*np.unique(samples.labels, return_counts=True)) if k >= 0}
    summary = {
        "out": args.out, "format": "png directory" if to_dir else "npz", "n_samples": args.n,
        "seed_first": args.seed, "seed_last": args.seed + args.n - 1,
        "image_shape": list(samples.shape), "label_dim": label_dim, "label_counts": counts, "denoiser": what,
        "solver": cfg.solver, "steps": cfg.steps, "denoiser_evaluations_per_sample": evals,
        "sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max, "rho": cfg.rho, "S_churn": cfg.S_churn,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print_json(summary)
        return 0
    shape = "×".join(str(s) for s in samples.shape)
    labels = (f"labels from {label_dim} classes ({len(counts)} used)" if label_dim else "unlabeled (label −1)")
    where = (f"{args.out.rstrip('/')}/ as PNG files {sample_file_name(args.seed)} … "
             f"{sample_file_name(args.seed + args.n - 1)} (+ manifest.json)" if to_dir else args.out)
    print(f"wrote {args.n} samples (uint8 {shape}; seeds {args.seed}..{args.seed + args.n - 1}; {labels}) "
          f"to {where}")
    print(f"denoiser: {what}")
    print(f"sampler: {cfg.solver}, {cfg.steps} steps ({evals} denoiser evaluations per sample), "
          f"σ from {cfg.sigma_max:g} to {cfg.sigma_min:g}, ρ={cfg.rho:g}, churn S_churn={cfg.S_churn:g}; "
          f"{seconds:.2f} s")
    return 0
