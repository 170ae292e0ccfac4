"""`diffmem study`: EMM (or the memorization ratio at fixed sizes) across the values of one or more factors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffmem.artefacts import to_jsonable
from diffmem.cli.common import add_dry_run_argument, from_config_file, print_json, show_progress
from diffmem.cli.emm import add_run_arguments, run_sweep
from diffmem.config import StudyConfig, load_json_config
from diffmem.fmt import pct, size
from diffmem.sweep.emm import max_trainings
from diffmem.sweep.study import derived_fields, derived_text, run_study, validate_study, value_label

HELP = "EMM (or the ratio at fixed sizes) across the values of one or more factors"
EXAMPLES = """\
  diffmem study --config studies/width.json --out out/width          # ratio per model.channels value
  diffmem study --config studies/conditioning.json --out out/cond --json
  diffmem study --config studies/width.json --out out/width --dry-run  # the plan, nothing run
  a config: {"name": "width", "mode": "ratio", "factors": {"model.channels": [8, 16, 32]},
             "base": {"preset": "digits", "sizes": [128, 256]}}
  mode "emm" searches the EMM per value instead of measuring base.sizes; see docs/EMM.md
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="a StudyConfig JSON file (see docs/EMM.md)")
    add_run_arguments(parser)
    add_dry_run_argument(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_json_config(StudyConfig, args.config)
    out = Path(args.out)
    with from_config_file(args.config):
        plan = validate_study(cfg)  # every value's config, before anything is written
    if args.dry_run:
        return _dry_run(cfg, plan, out, args.json)
    res, report = run_sweep(args, out, lambda backend: run_study(cfg, out, backend=backend,
                                                                progress=show_progress(args)))
    if args.json:
        print_json(res.summary())
        return 0
    w = sys.stdout.write
    w(f"study {cfg.name!r} ({cfg.mode} mode), factors: {', '.join(cfg.factors) or '(none)'}\n")
    for factors, r in res.values:
        e, conf = r.estimate, pct(r.config.measure.confidence)
        label = value_label(factors)
        ratios = ", ".join(f"|D|={p.size:,}: {p.ratio:.3f} [{p.ci[0]:.3f}, {p.ci[1]:.3f}] of {p.n_samples:,}"
                           for p in r.points)
        if cfg.mode == "ratio":
            w(f"  {label}: memorization ratio ({conf} interval, samples) {ratios}\n")
        else:
            w(f"  {label}: EMM {size(e.emm)} [{conf} interval {size(e.ci[0])}–{size(e.ci[1])}], "
              f"bracket [{size(e.bracket[0])}, {size(e.bracket[1])}], {r.n_trainings} trainings; "
              f"ratios {ratios}\n")
    s = res.summary()
    w(f"trainings: {s['n_trainings']} ({s['n_trained_now']} run now); wall time {res.wall_s:,.1f} s; "
      f"results: {out / 'results.csv'}\n")
    if report:
        w(f"report: {report}\n")
    return 0


def _dry_run(cfg, plan, out: Path, as_json: bool) -> int:
    """The resolved config of every factor value (with the fields it changes without naming them, such as the lr
    scaled with the batch) and the number of trainings (at most, for mode emm)."""
    values, notes = [], []
    for factors, c in plan:
        values.append({"value": value_label(factors), "max_trainings": max_trainings(c), "config": to_jsonable(c),
                       "derived": derived_fields(cfg, factors)})
        notes.append(f"; {derived_text(cfg, factors)}" if values[-1]["derived"] else "")
    total = sum(v["max_trainings"] for v in values)
    plan = {"name": cfg.name, "mode": cfg.mode, "out": str(out), "values": values, "max_trainings": total}
    if as_json:
        print_json(plan)
        return 0
    w = sys.stdout.write
    w(f"study {cfg.name!r} ({cfg.mode} mode): {len(values)} factor values, at most {total} trainings\n")
    for v, note in zip(values, notes):
        w(f"  {v['value']}: at most {v['max_trainings']} trainings{note}\n")
    w("(--dry-run --json prints the resolved config of every value)\n")
    return 0
