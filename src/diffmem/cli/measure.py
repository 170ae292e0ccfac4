"""`diffmem measure`: memorization ratio of generated samples against a training set."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from diffmem.artefacts import check_new_dir
from diffmem.cli.common import (
    add_json_argument,
    add_progress_argument,
    add_threads_argument,
    parse_fraction,
    print_json,
    show_progress,
)
from diffmem.cli.features import add_feature_arguments, feature_space, format_feature_lines, measure_in_space
from diffmem.config import MeasureConfig
from diffmem.data.convert import Conversion
from diffmem.errors import UsageError
from diffmem.io import load_images

HELP = "memorization ratio of generated samples against a training set (exact NN₁/NN₂, Wilson interval)"
EXAMPLES = (
    "  diffmem measure --samples gen.npz --train out/data          # summary on the terminal\n"
    "  diffmem measure --samples gen/ --train train_pngs/ --heldout test_pngs/ --out audit/\n"
    "  diffmem measure --samples gen32/ --train dataset.zip --resize 8 --channels 1 --out audit/\n"
    "  diffmem measure --samples gen.npz --train train.npz --threshold 1/4 --json\n"
    "  diffmem measure --samples gen/ --train train/ --features sscd.onnx --out m/   # in an embedding space\n"
    "  diffmem measure --samples gen_emb.npz --train train_emb.npz --features precomputed --similarity 0.5\n"
)
SHAPE_FLAGS = "pass --resize R and/or --channels 1|3 to convert every image on the fly"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MeasureConfig()
    where = ".npz, artefact directory, image folder or image zip (zip:PATH or PATH.zip, EDM-style or plain)"
    parser.add_argument("--samples", required=True, metavar="PATH", help=f"generated images: {where}")
    parser.add_argument("--train", required=True, metavar="PATH", help=f"training images: {where}")
    parser.add_argument("--heldout", metavar="PATH",
                        help="images of the same distribution the model never saw: adds their own ratio (the "
                             "rule's false-positive rate) and the data-copying statistic C_T")
    parser.add_argument("--threshold", default="1/3", metavar="T",
                        help="memorized when d1/d2 < T (default 1/3)")
    parser.add_argument("--out", metavar="DIR", help="write summary.json, table.csv, copies.csv, figures here")
    add_json_argument(parser)
    add_progress_argument(parser)
    add_threads_argument(parser)
    g = parser.add_argument_group("inputs as you have them (applied to samples, training and held-out images)")
    g.add_argument("--resize", type=int, metavar="R",
                   help="downsample every image to R×R first (the resampling of 'diffmem data --resolution')")
    g.add_argument("--channels", type=int, metavar="C", help="1: grayscale (ITU-R BT.601 luma), 3: RGB")
    g.add_argument("--resample", default="box", metavar="F", help="filter of --resize: box (default) or lanczos")
    g = parser.add_argument_group("data-copying test (with --heldout)")
    g.add_argument("--cells", type=int, default=d.copying_cells, metavar="K",
                   help="k-means cells of the training set (default 0: about 50 held-out images per cell, 1–50)")
    g.add_argument("--tau", metavar="T", help="fraction of the samples a cell needs to count (default 20/samples)")
    g.add_argument("--cells-seed", type=int, default=d.copying_seed, metavar="S", help="seed of the k-means cells")
    g = parser.add_argument_group("search")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--backend", default=d.backend, choices=("torch", "faiss"),
                   help="search backend (default torch; faiss needs the [faiss] extra)")
    g.add_argument("--memory-mb", type=int, default=d.memory_mb, metavar="MB",
                   help=f"working-memory budget of the search in MiB (default {d.memory_mb})")
    g.add_argument("--candidates", type=int, default=d.candidates, metavar="K",
                   help=f"rows kept per sample before the exact re-rank (default {d.candidates})")
    g.add_argument("--confidence", type=float, default=d.confidence, metavar="C",
                   help=f"confidence level of the Wilson interval (default {d.confidence})")
    add_feature_arguments(parser)


def _config(args: argparse.Namespace) -> MeasureConfig:
    from diffmem.devices import resolve_device  # the measurement's modules import torch: only when measuring
    from diffmem.measure import validate_measure

    tau = parse_fraction(args.tau, "--tau") if args.tau is not None else None
    cfg = dataclasses.replace(MeasureConfig(), threshold=parse_fraction(args.threshold, "--threshold"),
                              device=args.device, backend=args.backend, memory_mb=args.memory_mb,
                              candidates=args.candidates, confidence=args.confidence, copying_cells=args.cells,
                              copying_tau=tau, copying_seed=args.cells_seed)
    validate_measure(cfg)
    if args.heldout is None:
        for flag, value, default in (("--cells", args.cells, 0), ("--tau", args.tau, None),
                                     ("--cells-seed", args.cells_seed, 0)):
            if value != default:
                raise UsageError(f"{flag}: {value} applies to the data-copying test; add --heldout PATH")
    resolve_device(cfg.device, "measure.device")  # refuse an unavailable device before loading anything
    return cfg


def _conversion(args: argparse.Namespace) -> Conversion:
    conv = Conversion(resize=args.resize, channels=args.channels, resample=args.resample)
    conv.check()
    return conv


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def format_summary(s: dict) -> str:
    """The summary as labelled lines for the terminal."""
    lines = [
        f"memorization ratio:  {s['memorization_ratio']:.4f}  "
        f"({s['confidence']:.0%} Wilson interval {s['ci_low']:.4f} – {s['ci_high']:.4f})",
        f"memorized samples:   {s['n_memorized']:,} of {s['n_samples']:,} "
        f"(d1/d2 < threshold {s['threshold']:.4g}; {s['n_exact_copies']:,} exact copies, d1 = 0)",
        f"training images:     {s['n_train']:,} ({s['n_train_distinct']:,} distinct; "
        f"{s['duplicate_groups']:,} duplicate groups holding {s['duplicate_images']:,} extra copies)",
    ]
    if "n_train_copied" in s and not s["n_memorized"]:
        lines.append("copied images:       none (no sample is memorized)")
    elif "n_train_copied" in s:
        k = s["top1pct_images"]
        lines.append(f"copied images:       {s['n_train_copied']:,} of {s['n_train_distinct']:,} distinct training "
                     f"images are the NN1 of a memorized sample; the top 1 % ({k:,} image{'s' if k != 1 else ''}) "
                     f"account for {_pct(s['top1pct_share'])} of the memorized samples")
        if s.get("most_copied"):
            top = ", ".join(f"{c['name'] or '#' + str(c['train_index'])} ×{c['copies']:,}"
                            for c in s["most_copied"][:5])
            lines.append(f"most copied:         {top}  (memorized samples per training image)")
    h = s.get("heldout")
    if h:
        lines.append(f"held-out baseline:   {h['n_memorized']:,} of {h['n_heldout']:,} held-out images flagged by the "
                     f"rule: false-positive rate {h['memorization_ratio']:.4f} ({h['confidence']:.0%} Wilson "
                     f"interval {h['ci_low']:.4f} – {h['ci_high']:.4f})")
        if h["n_exact_copies"]:
            lines.append(f"warning:             {h['n_exact_copies']:,} held-out images are exact copies of training "
                         "images: the held-out set overlaps the training set")
    c = s.get("data_copying")
    if c:
        ct = "—" if c["c_t"] is None else f"{c['c_t']:+.2f}"
        lines.append(f"data-copying test:   C_T = {ct} over {c['cells_kept']} of {c['cells']} k-means cells "
                     f"(cells with ≥ {c['min_samples_per_cell']} samples; {c['heldout_mass_kept']:.0%} of the "
                     f"held-out images): {c['reading']}")
    lines += [
        f"median d1/d2:        {s['median_ratio']:.4f}",
        f"search:              {s['distance']}, item shape {'×'.join(map(str, s['item_shape']))}; "
        f"{s['backend']} on {s['device']}; {s['n_fallback']:,} samples needed the widened exact re-rank",
    ]
    conv = s.get("conversion")
    if conv:
        parts = ([f"--channels {conv['channels']}"] if conv["channels"] else []) + \
                ([f"--resize {conv['resize']} ({conv['resample']})"] if conv["resize"] else [])
        lines.append(f"converted:           {', '.join(parts)} applied to every image")
    return "\n".join(lines)


def _load(path: str, option: str, conv: Conversion):
    try:
        return load_images(path, None if conv.identity else conv, hint=SHAPE_FLAGS)
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(option) else f"{option}: {msg}") from e


def _check_shapes(option: str, shape: tuple[int, ...], train_shape: tuple[int, ...]) -> None:
    """Samples (or held-out images) and training images must have one shape; name the flags that convert them."""
    if shape == train_shape:
        return
    fix = []
    if shape[1:] != train_shape[1:]:
        fix.append(f"--resize {min(shape[1], train_shape[1])}")
    if shape[0] != train_shape[0]:
        fix.append(f"--channels {1 if 1 in (shape[0], train_shape[0]) else 3}")
    raise UsageError(f"{option}: images are {'×'.join(map(str, shape))} (C×H×W) but --train images are "
                     f"{'×'.join(map(str, train_shape))}; expected one shape: add {' '.join(fix)} "
                     "(applied to every image on the fly)")


def run(args: argparse.Namespace) -> int:
    from diffmem.measure import measure, prepare_train, write_measurement  # torch: only when measuring
    from diffmem.measure.heldout import prepare_heldout
    from diffmem.measure.outputs import full_summary
    from diffmem.measure.tables import TableNames

    cfg = _config(args)
    space = feature_space(args)  # None: pixels
    conv = _conversion(args)
    if space is not None and args.heldout:
        raise UsageError("--heldout: the held-out baseline is measured in pixels only; expected --features pixels "
                         "(or measure the held-out images as --samples in a second run)")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_new_dir(out)
    ref = copying = heldout = None
    if space is None:
        samples = _load(args.samples, "--samples", conv)
        train = _load(args.train, "--train", conv)
        heldout = _load(args.heldout, "--heldout", conv) if args.heldout else None
        _check_shapes("--samples", samples.shape, train.shape)
        if heldout is not None:
            _check_shapes("--heldout", heldout.shape, train.shape)
        index = prepare_train(train)
        progress = show_progress(args)
        m = measure(samples, index, cfg, progress=progress)
        ref = prepare_heldout(index, heldout, cfg, len(samples), progress=progress) if heldout is not None else None
        copying = ref.copying(samples, m.d1) if ref is not None else None
    else:
        m, samples, train = measure_in_space(args, space, cfg, lambda path, option: _load(path, option, conv),
                                             progress=show_progress(args))
    names = TableNames.of(samples, train, m.nn1.shape[0], m.train_canonical.shape[0])
    extra = {} if conv.identity else {"conversion": conv.describe()}
    summary = full_summary(m, names, ref, copying, **extra)
    if out is not None:
        inputs = {"samples": str(args.samples), "train": str(args.train)}
        if args.heldout:
            inputs["heldout"] = str(args.heldout)
        if space is not None:
            inputs.update(features=args.features, samples_features=args.samples_features,
                          train_features=args.train_features)
        heldout_names = TableNames.of(heldout, train, len(heldout), len(train)) if heldout is not None else None
        write_measurement(m, out, samples=samples, train=train, names=names, heldout=ref, copying=copying,
                          heldout_names=heldout_names, summary=summary, inputs=inputs, cfg=cfg)
        summary["out"] = str(out)
    if args.json:
        print_json(summary)
    else:
        sys.stdout.write(format_summary(summary) + "\n" + format_feature_lines(summary))
        if out is not None:
            files = sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
            sys.stdout.write(f"wrote:               {out}/ ({', '.join(files)})\n")
    return 0
