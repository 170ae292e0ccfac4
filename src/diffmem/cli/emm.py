"""`diffmem emm`: find the EMM (effective model memorization) of one recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from diffmem import fmt
from diffmem.artefacts import to_jsonable
from diffmem.cli.common import (
    add_dry_run_argument,
    add_json_argument,
    add_progress_argument,
    add_threads_argument,
    from_config_file,
    print_json,
    show_progress,
)
from diffmem.config import EMMConfig, emm_preset, load_json_config
from diffmem.errors import UsageError, bad
from diffmem.fmt import pct, size
from diffmem.report import render_report
from diffmem.sweep import make_backend, run_emm
from diffmem.sweep.backends import BACKENDS
from diffmem.sweep.emm import max_trainings, validate_emm
from diffmem.sweep.frontier import frontier_budgets, frontier_table, max_budget_searches
from diffmem.sweep.law import law_lines
from diffmem.sweep.search import grid_measurements
from diffmem.sweep.synthetic import SyntheticCurve

HELP = "find the EMM of one recipe: the largest |D| whose memorization ratio is still ≥ 1 − ε"
EXAMPLES = """\
  diffmem emm --preset digits --out out/digits-emm          # the embedded default (tens of minutes on 2 cores)
  diffmem emm --config my-emm.json --out out/emm --json     # one JSON object on stdout
  diffmem emm --preset cifar10 --out out/c10 --backend ray --ray-address auto
  diffmem emm --preset digits --out out/dry --synthetic 300 # the search on a known curve, no training
  diffmem emm --preset digits-frontier --out out/digits-frontier --dry-run  # EMM at every budget: the plan
  diffmem emm --preset digits-frontier --out out/sim --synthetic 450         # the frontier search, simulated
  rerunning the same command on the same --out resumes and never redoes a finished run
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="P",
                     help="an EMM preset: digits (embedded default, CPU), digits-frontier (its EMM at every budget "
                          "up to 4× its own, CPU) or cifar10 (GPU)")
    src.add_argument("--config", metavar="FILE", help="an EMMConfig JSON file (see docs/EMM.md)")
    add_run_arguments(parser)
    parser.add_argument("--n-samples", type=int, metavar="N",
                        help="generated samples per measurement (overrides the config)")
    parser.add_argument("--repeats", type=int, metavar="R",
                        help="independent dataset draws and training seeds per size")
    parser.add_argument("--parallel", type=int, metavar="K", help="sizes measured per search round (Ray: run at once)")
    parser.add_argument("--frontier", action="store_true",
                        help="bracket the EMM at every snapshot budget up to train.kimg, not only at the final one "
                             "(sets frontier: true; see docs/EMM.md)")
    parser.add_argument("--synthetic", type=float, metavar="EMM",
                        help="run the search on a synthetic ratio curve crossing 1 − ε at EMM (no training); with "
                             "--frontier, EMM at the final budget and growing linearly with the budget")
    add_dry_run_argument(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``emm`` and ``study``."""
    parser.add_argument("--out", required=True, metavar="DIR", help="the sweep directory (rerun on it to resume)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="run jobs here one after another (local) or as Ray tasks (ray)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="an existing Ray cluster (e.g. auto or ray://host:10001); default: a local Ray instance")
    parser.add_argument("--no-report", action="store_true", help="do not render the report at the end")
    add_json_argument(parser)
    add_progress_argument(parser)
    add_threads_argument(parser)


def resolve_config(args: argparse.Namespace):
    cfg = emm_preset(args.preset) if args.preset else load_json_config(EMMConfig, args.config)
    for opt, field in (("--n-samples", "n_samples"), ("--repeats", "repeats"), ("--parallel", "parallel")):
        value = getattr(args, field)
        if value is not None:
            if value < 1:
                raise bad(opt, value, "an integer ≥ 1")
            cfg = dataclasses.replace(cfg, **{field: value})
    if getattr(args, "frontier", False):
        cfg = dataclasses.replace(cfg, frontier=True)
    return cfg


def print_result(res, out: Path, file=None) -> None:
    """The human-readable result: every number says what it is."""
    file = file or sys.stdout
    cfg, e, t = res.config, res.estimate, res.threshold
    conf = pct(cfg.measure.confidence)
    lo, hi = e.bracket
    w = file.write
    if e.emm is not None:
        w(f"EMM ≈ {e.emm:,.0f} training images (ratio crosses {pct(t)}, log-size interpolation); "
          f"{conf} interval [{size(e.ci[0])}, {size(e.ci[1])}]\n")
    elif e.below_range:
        w(f"EMM < {size(hi)}: even the smallest size measured does not memorize ≥ {pct(t)}\n")
    elif e.above_range:
        w(f"EMM ≥ {size(lo)}: even the largest size measured memorizes ≥ {pct(t)}\n")
    w(f"bracket: |D| = {size(lo)} memorizes, |D| = {size(hi)} does not (a size memorizes when ≥ {pct(t)} "
      f"of its samples have d1/d2 < {cfg.measure.threshold:.4g})\n")
    held = {q["size"]: q for q in res.summary()["points"] if "heldout_ratio" in q}
    extra = f" {'held-out':>9} {'C_T':>7}" if held else ""
    w(f"{'|D|':>7} {'ratio':>7} {conf + ' interval':>17} {'best kimg':>10} {'samples':>8} {'optimum':>8}{extra}\n")
    partial = res.frontier[-1].partial if cfg.frontier and res.frontier else ()
    for p in res.points:
        flag = "  straddles" if p.straddles(t) else ""
        if p.size in partial:
            flag = "  lower bound: its run stopped once it memorized"
        opt = res.optimal.get(p.size)
        h = held.get(p.size)
        cols = ""
        if held:
            ct = "—" if h is None or h["c_t"] is None else f"{h['c_t']:+.2f}"
            cols = f" {'—' if h is None else format(h['heldout_ratio'], '.3f'):>9} {ct:>7}"
        w(f"{p.size:>7,} {p.ratio:>7.3f} [{p.ci[0]:.3f}, {p.ci[1]:.3f}] {p.best_snapshot_kimg or 0:>10.1f} "
          f"{p.n_samples:>8,} {'—' if opt is None else f'{opt:.3f}':>8}{cols}{flag}\n")
    if held:
        n_h = max(q["n_heldout"] for q in held.values())
        w(f"held-out: the ratio of up to {n_h:,} images of the source outside the subset (the rule's false-positive "
          f"rate); C_T: the data-copying statistic at the best snapshot (≪ 0 copying, ≈ 0 matching, ≫ 0 "
          "underfitting)\n")
    if len(res.frontier) > 1:
        print_frontier(res, file)
    if cfg.frontier:
        runs = len({(r["size"], r["repeat"]) for r in res.rows if r["kind"] == "train"})
        bound, kimg = _baseline(cfg)
        w(f"trainings: {res.n_trainings} jobs ({res.n_trained_now} run now, the rest reused) over {runs} runs "
          f"(sizes × repeats; a longer job extends its size's shorter run), {fmt.kimg(res.training_kimg)} kimg of "
          f"training in all; one EMM search per budget would need up to {bound} trainings and {fmt.kimg(kimg)} kimg\n")
    elif not cfg.sizes:
        grid = grid_measurements(cfg.size_min, cfg.size_max, cfg.bracket_factor) * cfg.repeats
        w(f"trainings: {res.n_trainings} ({res.n_trained_now} run now, the rest reused); a plain grid at "
          f"factor {cfg.bracket_factor} over {cfg.size_min:,}–{cfg.size_max:,} would need {grid}\n")
    w(f"wall time: {res.wall_s:,.1f} s; results: {out / 'results.csv'}\n")


def print_frontier(res, file) -> None:
    """The EMM at every snapshot budget and the law fitted to it."""
    w = file.write
    header, rows = frontier_table([b.summary(points=False) for b in res.frontier], res.config.measure.confidence)
    w(f"frontier: the EMM at each training budget (each size's best snapshot up to the budget, ratio ≥ "
      f"{pct(res.threshold)}):\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    w("  ".join(h.rjust(wd) for h, wd in zip(header, widths)) + "\n")
    for r in rows:
        w("  ".join(c.rjust(wd) for c, wd in zip(r, widths)) + "\n")
    for line in law_lines(res.law, res.threshold):
        w(line + "\n")


def _baseline(cfg) -> tuple[int, float]:
    """The frontier's baseline: one EMM search per budget, at most (trainings, kimg)."""
    per_search = max_trainings(dataclasses.replace(cfg, frontier=False))
    return max_budget_searches(frontier_budgets(cfg.train), per_search)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    out = Path(args.out)
    with from_config_file(args.config):
        validate_emm(cfg)
    if args.dry_run:
        bound = max_trainings(cfg)
        plan = {"config": to_jsonable(cfg), "max_trainings": bound, "out": str(out)}
        text = f"at most {bound} trainings\n"
        if cfg.frontier:
            budgets = frontier_budgets(cfg.train)
            base, base_kimg = _baseline(cfg)
            plan.update({"budgets_kimg": budgets, "baseline_max_trainings": base, "baseline_max_kimg": base_kimg})
            text = (f"frontier search: the EMM bracketed at {len(budgets)} budgets, {budgets[0]:g} to {budgets[-1]:g} "
                    f"kimg every {cfg.train.snapshot_kimg:g}; sizes {cfg.size_min:,}–{cfg.size_max:,}; at most {bound} "
                    f"runs (sizes × repeats), each trained at most to {budgets[-1]:g} kimg and extended in at most "
                    f"{math.ceil(math.log2(len(budgets))) + 1} jobs; one EMM search per budget would need up to {base} "
                    f"trainings and {fmt.kimg(base_kimg)} kimg. Simulate it on a known surface with --synthetic EMM.\n")
        if args.json:
            print_json(plan)
        else:
            sys.stdout.write(json.dumps(plan, indent=2) + "\n" + text)
        return 0
    synthetic = None
    if args.synthetic is not None:
        if not (math.isfinite(args.synthetic) and args.synthetic > 0):
            raise bad("--synthetic", args.synthetic, "a positive EMM (a number of training images)")
        synthetic = SyntheticCurve(emm=args.synthetic, threshold=1 - cfg.epsilon)
        if cfg.frontier:
            synthetic = dataclasses.replace(synthetic, snapshots_kimg=tuple(frontier_budgets(cfg.train)), growth=1.0)
    res, report = run_sweep(args, out, lambda backend: run_emm(cfg, out, backend=backend, synthetic=synthetic,
                                                              progress=show_progress(args)))
    if args.json:
        print_json(res.summary())
    else:
        print_result(res, out)
        if report:
            sys.stdout.write(f"report: {report}\n")
    return 0


def run_sweep(args: argparse.Namespace, out: Path, go):
    """``go(backend)`` on the backend the options name (closed whatever happens), then the report
    unless ``--no-report``; returns the result and the report's path (or None)."""
    if args.threads is not None and args.backend != "local":
        raise UsageError(f"--threads: {args.threads} sets the threads of jobs run in this process; expected "
                         "--backend local, or no --threads with --backend ray (Ray gives each task its CPU threads)")
    backend = make_backend(args.backend, args.ray_address)
    try:
        res = go(backend)
    finally:
        backend.close()
    report = None
    if not args.no_report:
        report = render_report(out)
    return res, report
