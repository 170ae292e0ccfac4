"""`diffmem measure`: memorization ratio of generated samples against a training set."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from diffmem.cli.common import parse_fraction, print_json
from diffmem.cli.features import add_feature_arguments, feature_space, format_feature_lines, measure_in_space
from diffmem.config import MeasureConfig
from diffmem.devices import resolve_device
from diffmem.errors import UsageError

HELP = "memorization ratio of generated samples against a training set (exact NN₁/NN₂, Wilson interval)"
EXAMPLES = (
    "  diffmem measure --samples gen.npz --train out/data          # summary on the terminal\n"
    "  diffmem measure --samples gen/ --train train.npz --out m/   # + summary.json, table.npz, figures\n"
    "  diffmem measure --samples gen.npz --train train.npz --threshold 1/4 --json\n"
    "  diffmem measure --samples gen/ --train train/ --features sscd.onnx --out m/   # in an embedding space\n"
    "  diffmem measure --samples gen_emb.npz --train train_emb.npz --features precomputed --similarity 0.5\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MeasureConfig()
    parser.add_argument("--samples", required=True, metavar="PATH",
                        help="generated images: .npz, artefact directory or image folder")
    parser.add_argument("--train", required=True, metavar="PATH",
                        help="training images: .npz, dataset artefact directory or image folder")
    parser.add_argument("--threshold", default="1/3", metavar="T",
                        help="memorized when d1/d2 < T (default 1/3)")
    parser.add_argument("--out", metavar="DIR", help="write summary.json, table.npz, ratios.png, grid.png here")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--backend", default=d.backend, choices=("torch", "faiss"),
                        help="search backend (default torch; faiss needs the [faiss] extra)")
    parser.add_argument("--memory-mb", type=int, default=d.memory_mb, metavar="MB",
                        help=f"working-memory budget of the search in MiB (default {d.memory_mb})")
    parser.add_argument("--candidates", type=int, default=d.candidates, metavar="K",
                        help=f"rows kept per sample before the exact re-rank (default {d.candidates})")
    parser.add_argument("--confidence", type=float, default=d.confidence, metavar="C",
                        help=f"confidence level of the Wilson interval (default {d.confidence})")
    add_feature_arguments(parser)


def _config(args: argparse.Namespace) -> MeasureConfig:
    cfg = dataclasses.replace(MeasureConfig(), threshold=parse_fraction(args.threshold, "--threshold"),
                              device=args.device, backend=args.backend, memory_mb=args.memory_mb,
                              candidates=args.candidates, confidence=args.confidence)
    if cfg.memory_mb < 16:
        raise UsageError(f"--memory-mb: {cfg.memory_mb} is too small; expected at least 16")
    resolve_device(cfg.device)  # refuse an unavailable device before loading anything
    return cfg


def format_summary(s: dict) -> str:
    """The summary as labelled lines for the terminal."""
    lines = [
        f"memorization ratio:  {s['memorization_ratio']:.4f}  "
        f"({s['confidence']:.0%} Wilson interval {s['ci_low']:.4f} – {s['ci_high']:.4f})",
        f"memorized samples:   {s['n_memorized']:,} of {s['n_samples']:,} "
        f"(d1/d2 < threshold {s['threshold']:.4g}; {s['n_exact_copies']:,} exact copies, d1 = 0)",
        f"training images:     {s['n_train']:,} ({s['n_train_distinct']:,} distinct; "
        f"{s['duplicate_groups']:,} duplicate groups holding {s['duplicate_images']:,} extra copies)",
        f"median d1/d2:        {s['median_ratio']:.4f}",
        f"search:              {s['distance']}, item shape {'×'.join(map(str, s['item_shape']))}; "
        f"{s['backend']} on {s['device']}; {s['n_fallback']:,} samples needed the widened exact re-rank",
    ]
    return "\n".join(lines)


def _load(load_images, path: str, option: str):
    try:
        return load_images(path)
    except UsageError as e:
        raise UsageError(f"{option}: {e}") from e


def run(args: argparse.Namespace) -> int:
    from diffmem.io import load_images
    from diffmem.measure import measure, write_measurement

    cfg = _config(args)
    space = feature_space(args)  # None: pixels
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {str(out)!r} exists and is not empty; choose a new directory")
    if space is None:
        samples = _load(load_images, args.samples, "--samples")
        train = _load(load_images, args.train, "--train")
        m = measure(samples, train, cfg, progress=True)
    else:
        m, samples, train = measure_in_space(args, space, cfg, lambda path, opt: _load(load_images, path, opt))
    summary = dict(m.summary)
    if out is not None:
        inputs = {"samples": str(args.samples), "train": str(args.train)}
        if space is not None:
            inputs.update(features=args.features, samples_features=args.samples_features,
                          train_features=args.train_features)
        write_measurement(m, out, samples=samples, train=train, inputs=inputs, cfg=cfg)
        summary["out"] = str(out)
    if args.json:
        print_json(summary)
    else:
        sys.stdout.write(format_summary(summary) + "\n" + format_feature_lines(summary))
        if out is not None:
            files = ", ".join(sorted(p.name for p in out.iterdir() if p.name != "manifest.json"))
            sys.stdout.write(f"wrote:               {out}/ ({files})\n")
    return 0
