"""`diffmem train`: train (or resume) a denoiser on a dataset artefact; every knob is a flag."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffmem.artefacts import read_manifest
from diffmem.cli.common import (
    add_dry_run_argument,
    add_json_argument,
    add_progress_argument,
    add_threads_argument,
    print_json,
    show_progress,
)
from diffmem.cli.flags import flag
from diffmem.config import ModelConfig, TrainConfig, preset_names, resolve_preset, to_dict
from diffmem.errors import bad

HELP = "train a denoiser (U-Net + VP/VE/EDM) on a dataset; re-running the same command resumes"
EXAMPLES = """\
  diffmem train --data out/digits64 --out runs/d64 --preset digits          # minutes on 2 CPU cores
  diffmem train --data out/digits64 --out runs/d64c32 --preset digits --channels 32 --batch 128 \\
      --lr 1e-3 --ema-decay 0.999 --kimg 512 --snapshot-kimg 128
  diffmem train --data out/cifar1k --out runs/c1k --preset paper-basic --skip-mask 1,1,1,0,0,0,1,1,1
  diffmem train --data out/cifar1k --out runs/c1k-ema9 --preset paper-basic --ema-mode final --ema-decay 0.9
  diffmem train --data out/digits64 --out runs/x --preset digits --dry-run   # print the resolved config
  torchrun --nproc_per_node=4 -m diffmem train --data out/cifar1k --out runs/c1k --preset paper-basic
"""

_OPTIONS = {  # config path → (parser, help); the flag is the one the table of diffmem.cli.flags gives it
    "model.arch": (str, "backbone family: ddpmpp (box resampling) or ncsnpp (FIR [1,3,3,1], 2C noise channels, "
                        "residual encoder)"),
    "model.channels": (int, "base channel count (width)"),
    "model.channel_mult": ("ints", "channel multiplier per resolution level, e.g. 2,2,2"),
    "model.blocks": (int, "residual blocks per resolution (depth)"),
    "model.attn_resolutions": ("ints", "resolutions with self-attention, e.g. 16 or 'none'"),
    "model.dropout": (float, "dropout probability in the residual blocks"),
    "model.embedding": (str, "time embedding of c_noise: positional or fourier"),
    "model.encoder": (str, "standard, or residual (NCSN++ progressive input); default: the arch's"),
    "model.channel_mult_noise": (int, "noise-embedding channels ÷ channels; default: the arch's (ddpmpp 1, "
                                      "ncsnpp 2)"),
    "model.skip_mask": ("mask", "on/off per encoder→decoder skip, e.g. 1,0,1,1 ('all' = all on); "
                                "levels×(blocks+1) flags from the input conv down"),
    "model.precond": (str, "preconditioning and loss: vp, ve or edm"),
    "model.sigma_data": (float, "σ_data of EDM preconditioning"),
    "model.P_mean": (float, "EDM loss: mean of ln σ"),
    "model.P_std": (float, "EDM loss: standard deviation of ln σ"),
    "train.batch": (int, "total batch size (over all processes)"),
    "train.batch_per_device": (int, "per-process micro-batch; gradient accumulation down to it"),
    "train.lr": (float, "Adam learning rate"),
    "train.betas": ("floats", "Adam betas, e.g. 0.9,0.999"),
    "train.warmup_kimg": (float, "linear learning-rate warm-up, in kimg (0 = none)"),
    "train.warmup_epochs": (float, "or in epochs, as whole kimg rounded down (reference: 200)"),
    "train.weight_decay": (float, "Adam's coupled L2 weight decay (torch.optim.Adam weight_decay, as the reference "
                                  "study used; not AdamW)"),
    "train.loss_norm": (str, "an image's loss: sum over its pixels (the reference's) or mean"),
    "train.ema_mode": (str, "constant (--ema-decay), halflife, compensated (the reference's default: "
                            "0.5^(512/(h·50,000/|D|)) per step) or final (settles at --ema-decay)"),
    "train.ema_decay": (float, "per-step EMA decay: constant mode's (0 = no EMA), or final mode's last"),
    "train.ema_halflife_kimg": (float, "EMA half-life in kimg (half-life modes)"),
    "train.ema_halflife_epochs": (float, "or in epochs, as whole kimg rounded down (reference: 10)"),
    "train.ema_rampup_ratio": ("optfloat", "EDM's EMA ramp-up: half-life ≤ ratio × images seen ('none' = off)"),
    "train.data_order": (str, "fixed (one permutation from the seed, every epoch: the reference's) or reshuffle (a "
                              "new one per epoch)"),
    "train.snapshot_kimg": (float, "EMA snapshot every this many kimg"),
    "train.log_kimg": (float, "stats.jsonl line every this many kimg (default ~100 lines)"),
    "train.state_kimg": (float, "resumable state every this many kimg (default: at snapshots)"),
    "train.precision": (str, "fp32 (no TF32 on GPUs, as the reference), or bf16 autocast"),
    "train.grad_clip": (float, "clip the gradient norm to this value"),
    "train.seed": (int, "seed of the initial weights, data order, σ, noise and dropout"),
    "train.device": (str, "auto, cpu, cuda or cuda:N"),
}


def _dest(path: str) -> str:
    """The argparse attribute of a config path's flag (``train.ema_mode`` → ``ema_mode``)."""
    return flag("train", path).lstrip("-").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset artefact dir (or .npz / image folder)")
    parser.add_argument("--out", required=True, help="run directory; the same command on it again resumes")
    parser.add_argument("--preset", default="digits", help=f"recipe to start from: {', '.join(preset_names())} "
                                                           "(default digits)")
    dur = parser.add_mutually_exclusive_group()
    dur.add_argument(flag("train", "train.kimg"), type=float, help="training duration in thousands of images")
    dur.add_argument(flag("train", "train.epochs"), type=float, help="training duration in passes over the dataset")
    groups = {"model": parser.add_argument_group("model knobs (override the preset)"),
              "train": parser.add_argument_group("training knobs (override the preset)")}
    for path, (kind, text) in _OPTIONS.items():
        groups[path.split(".")[0]].add_argument(flag("train", path), dest=_dest(path), metavar=_metavar(kind),
                                                type=kind if callable(kind) else str, help=text)
    parser.add_argument(flag("train", "train.compile"), action="store_true",
                        help="torch.compile the denoiser (not bit-equal to eager): a warm-up the first time on a "
                             "machine (compiled graphs are cached under ~/.cache/diffmem/inductor), then somewhat "
                             "faster steps; see benchmarks/results/train.md")
    add_dry_run_argument(parser)
    add_json_argument(parser)
    add_progress_argument(parser)
    add_threads_argument(parser)


def _metavar(kind) -> str | None:
    return {"ints": "N,N,…", "floats": "X,X", "mask": "0/1,…", "optfloat": "X|none"}.get(kind) \
        if isinstance(kind, str) else None


def _parse(option: str, kind, text: str):
    if kind == "ints" and text.strip().lower() in ("none", ""):
        return ()
    if kind == "mask":
        if text.strip().lower() == "all":
            return None
        parts = [p.strip() for p in text.split(",")]
        if not all(p in ("0", "1") for p in parts):
            raise bad(option, text, "comma-separated 0/1 flags such as 1,0,1,1")
        return tuple(p == "1" for p in parts)
    if kind == "optfloat":
        if text.strip().lower() == "none":
            return None
        try:
            return float(text)
        except ValueError as e:
            raise bad(option, text, "a number or 'none'") from e
    try:
        conv = int if kind == "ints" else float
        return tuple(conv(p) for p in text.split(","))
    except ValueError as e:
        raise bad(option, text, "comma-separated numbers") from e


def resolve(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The preset with every given flag applied (:func:`diffmem.config.resolve_preset`)."""
    changes: dict[str, dict] = {"model": {}, "train": {}}
    for path, (kind, _) in _OPTIONS.items():
        group, field = path.split(".")
        v = getattr(args, _dest(path))
        if v is not None:
            changes[group][field] = _parse(flag("train", path), kind, v) if isinstance(kind, str) else v
    if args.compile:
        changes["train"]["compile"] = True
    for field in ("kimg", "epochs"):
        if getattr(args, field) is not None:
            changes["train"][field] = getattr(args, field)
    return resolve_preset(args.preset, changes["model"], changes["train"])


def run(args: argparse.Namespace) -> int:
    from diffmem.train import list_snapshots, train  # torch: only when the command runs
    from diffmem.train.distributed import world
    from diffmem.train.loop import resolve_configs

    model_cfg, train_cfg = resolve(args)
    data, out = Path(args.data), Path(args.out)
    if args.dry_run:
        _, _, resolved = resolve_configs(data, model_cfg, train_cfg, processes=world()[1])
        print_json(resolved) if args.json else sys.stdout.write(json.dumps(to_dict(resolved), indent=2) + "\n")
        return 0
    train(data, out, model_cfg, train_cfg, progress=show_progress(args), threads=args.threads)
    if world()[0] != 0:  # torchrun: rank 0 reports
        return 0
    summary = _summary(out)
    if args.json:
        print_json(summary)
    else:
        last = summary["last_stats"] or {}
        print(f"trained {summary['steps']} steps of batch {summary['batch']} = {summary['kimg']:.3f} kimg "
              f"({summary['epochs']:.1f} epochs over {summary['images']} images)")
        if last:
            print(f"loss (mean of the last logged interval, ending at step {last['step']}): {last['loss']:.4f}; "
                  f"speed {last['images_per_s']:.0f} images/s")
        print(f"final EMA weights: {summary['final']}; snapshots: {len(list_snapshots(out))} in {out / 'checkpoints'}")
    return 0


def _summary(out: Path) -> dict:
    from diffmem.train.checkpoints import FINAL_FILE, list_snapshots  # torch: only after training

    m = read_manifest(out) or {}
    lines = (out / "stats.jsonl").read_text().splitlines() if (out / "stats.jsonl").exists() else []
    return {"run": str(out), "final": str(out / FINAL_FILE), "steps": m.get("steps"), "kimg": m.get("kimg"),
            "epochs": m.get("epochs"), "batch": m.get("config", {}).get("train", {}).get("batch"),
            "images": m.get("config", {}).get("data", {}).get("images"),
            "snapshots_kimg": [k for k, _ in list_snapshots(out)],
            "last_stats": json.loads(lines[-1]) if lines else None}
