"""`diffmem data`: build a dataset artefact (dataset.npz + manifest.json) from a source."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffmem.artefacts import is_complete, read_manifest
from diffmem.cli.common import add_json_argument, add_progress_argument, add_threads_argument, print_json, show_progress
from diffmem.config import DataConfig
from diffmem.data import build_dataset
from diffmem.data.build import LABEL_MODES
from diffmem.data.resize import RESAMPLE_FILTERS
from diffmem.data.sources import SOURCE_FORMS

HELP = "build a dataset artefact (class-balanced, nested subsets; labels; resolution; mixing; duplicates)"
EXAMPLES = """\
  diffmem data --source digits --size 64 --seed 0 --out data/digits-64
  diffmem data --source cifar10:cifar-10-python.tar.gz --size 1000 --resolution 16 --out data/c10-1k-16
  diffmem data --source cifar10:cifar-10-python.tar.gz --size 2000 --classes 2 --labels true --out data/c10-2c
  diffmem data --source digits --size 512 --labels random --label-classes 10 --out data/digits-rand
  diffmem data --source "shapes:res=16,classes=10,diversity=0.5,n=5000" --size 1000 --out data/shapes
  diffmem data --source zip:edm-dataset.zip --mix folder:extra/ --mix-rate 0.3 --size 500 --out data/mixed
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DataConfig()  # the single source of defaults: the CLI and the library hash the same config
    parser.add_argument("--source", required=True, metavar="SRC", help=f"where the images come from: {SOURCE_FORMS}")
    parser.add_argument("--size", type=int, metavar="N", help="images to keep, class-balanced (default: all)")
    parser.add_argument("--classes", type=int, metavar="C", help="keep only the first C classes of the source")
    parser.add_argument("--labels", default=d.labels, choices=LABEL_MODES,
                        help="true labels, none, random labels from K classes, or one label per image "
                             f"(default: {d.labels})")
    parser.add_argument("--label-classes", type=int, metavar="K", help="K for --labels random")
    parser.add_argument("--resolution", type=int, metavar="R", help="downsample to R×R (antialiased)")
    parser.add_argument("--resample", default=d.resample, choices=RESAMPLE_FILTERS,
                        help=f"antialiasing filter for --resolution (default: {d.resample})")
    parser.add_argument("--mix", metavar="SRC2", help="a second source to mix in (intra-class diversity)")
    parser.add_argument("--mix-rate", type=float, default=d.mix_rate, metavar="A",
                        help="fraction of each class taken from --mix, in (0, 1]")
    parser.add_argument("--seed", type=int, default=d.seed, metavar="S", help="seed of the subset and label draws")
    parser.add_argument("--independent", action="store_true",
                        help="draw each size independently (default: nested across sizes for one seed)")
    parser.add_argument("--near-threshold", type=float, default=d.near_dup_threshold, metavar="T",
                        help=f"near duplicates: RMS pixel distance ≤ T on the 0..255 scale (default: "
                             f"{d.near_dup_threshold:g})")
    parser.add_argument("--out", required=True, metavar="DIR", help="the artefact directory to write")
    add_json_argument(parser)
    add_progress_argument(parser)
    add_threads_argument(parser)


def _lines(m: dict, out: Path, reused: bool) -> list[str]:
    shape = "×".join(str(s) for s in m["shape"])
    cfg = m["config"]
    lines = [f"dataset: {m['n_images']} images of {shape} (C×H×W) from {cfg['source']!r}, seed {cfg['seed']}"
             f" ({'nested' if cfg['nested'] else 'independent'} draw; {m['available_images']} images available)"]
    counts = m.get("class_counts") or []
    if counts:
        lines.append(f"classes: {len(counts)} kept; images per class {min(counts)}–{max(counts)}")
    if m.get("from_mix"):
        lines.append(f"mix: {m['from_mix']} of {m['n_images']} images from {cfg['mix']!r} "
                     f"(rate {cfg['mix_rate']:g})")
    lines.append(f"labels: {m['label_mode']} (label_classes {m['label_classes']})")
    d = m["duplicates"]
    ex, near = d["exact"], d["near"]
    lines.append(f"duplicates: {ex['images']} images with an exact copy ({ex['groups']} groups, {ex['redundant']} "
                 f"redundant); {near['images']} images within RMS pixel distance ≤ {near['threshold_rms']:g} "
                 "of another (0..255 scale)")
    lines.append(f"{'reused' if reused else 'written'}: {out}")
    return lines


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """The :class:`~diffmem.config.DataConfig` of parsed ``diffmem data`` arguments."""
    return DataConfig(
        source=args.source, size=args.size, classes=args.classes, labels=args.labels,
        label_classes=args.label_classes, resolution=args.resolution, resample=args.resample, mix=args.mix,
        mix_rate=args.mix_rate, seed=args.seed, nested=not args.independent, near_dup_threshold=args.near_threshold,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out)
    reused = is_complete(out, "dataset", cfg)
    build_dataset(cfg, out, progress=show_progress(args))
    m = read_manifest(out) or {}
    if args.json:
        print_json({**m, "out": str(out), "reused": reused})
    else:
        print("\n".join(_lines(m, out, reused)))
    return 0
