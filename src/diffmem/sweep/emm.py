"""``diffmem emm``: find the EMM of one recipe (plan → execute → measure → decide → results).

Directory of an EMM search::

    config.json      the resolved EMMConfig          manifest.json   stage "emm", status
    plan.json        the jobs in the order run       emm.json        the result (see EMMResult.summary)
    results.jsonl    one row per run × snapshot      results.csv     the same table
    jobs/<job>/      one content-addressed job each (see diffmem.sweep.jobs)

Rerunning on the same directory replays the search against the finished jobs and continues where it
stopped; a directory holding an EMM of another config is refused.

Every search also reports its frontier (the EMM at each snapshot budget, :mod:`diffmem.sweep.frontier`)
and the law fitted to it (:mod:`diffmem.sweep.law`); ``frontier: true`` runs the search that brackets
the EMM at every budget instead of at the final one only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_write_json, check_resumable, config_hash, dir_lock, to_jsonable, write_manifest
from diffmem.config import EMMConfig, to_dict
from diffmem.data.build import validate_data
from diffmem.data.sources import absolute_spec
from diffmem.errors import bad
from diffmem.progress import progress_bar
from diffmem.sweep.backends import Backend, LocalBackend
from diffmem.sweep.estimate import Estimate, Point, RepeatResult, estimate, pool
from diffmem.sweep.frontier import BudgetEMM, frontier, frontier_budgets, next_runs, training_kimg
from diffmem.sweep.jobs import JobSpec
from diffmem.sweep.law import law_report
from diffmem.sweep.search import find_bracket, max_measurements, next_sizes, reachable_sizes
from diffmem.sweep.synthetic import SyntheticCurve
from diffmem.sweep.table import write_table

log = logging.getLogger(__name__)
EMM_STAGE = "emm"


@dataclass
class EMMResult:
    """Outcome of an EMM search (or of a fixed-size ratio table when ``config.sizes`` is set)."""

    config: EMMConfig
    estimate: Estimate
    points: list[Point]
    optimal: dict[int, float]
    n_trainings: int  # training runs the plan needed (reused ones included)
    n_trained_now: int  # of those, run by this invocation
    wall_s: float
    rows: list[dict[str, Any]]
    flagged: list[int]  # sizes whose interval straddles 1 − ε
    frontier: list[BudgetEMM] = field(default_factory=list)  # EMM at every snapshot budget
    law: dict[str, Any] = field(default_factory=dict)  # τ_mem = a·|D|^α fitted to the frontier (law_report)
    training_kimg: float = 0.0  # kimg of training behind the rows (extended runs counted once)

    @property
    def threshold(self) -> float:
        return 1.0 - self.config.epsilon

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object: emm, bracket, ci, points, optimal, n_trainings, wall_s (+ frontier, law
        and training_kimg in frontier mode)."""
        e = self.estimate
        out = {
            "emm": e.emm,
            "bracket": list(e.bracket),
            "ci": list(e.ci),
            "points": [{"size": p.size, "ratio": p.ratio, "ci": list(p.ci), "best_snapshot_kimg": p.best_snapshot_kimg,
                        "n_samples": p.n_samples, **heldout_point(p, self.rows, self.config.measure.confidence)}
                       for p in self.points],
            "optimal": {str(s): r for s, r in sorted(self.optimal.items())},
            "n_trainings": self.n_trainings,
            "wall_s": round(self.wall_s, 3),
        }
        if self.config.frontier:
            out.update(self._frontier(points=False))
            for p in out["points"]:  # its run stopped once it memorized: the ratio at the final budget is at least this
                p["lower_bound"] = p["size"] in self.frontier[-1].partial
        return out

    def _frontier(self, points: bool) -> dict[str, Any]:
        return {"frontier": [b.summary(points) for b in self.frontier], "law": self.law,
                "training_kimg": self.training_kimg}

    def details(self) -> dict[str, Any]:
        """``emm.json``: the summary plus the threshold, flags, per-repeat numbers, the frontier and the law."""
        d = self.summary()
        d.update(self._frontier(points=True))
        d.update({
            "threshold": self.threshold, "epsilon": self.config.epsilon, "confidence": self.config.measure.confidence,
            "flagged": self.flagged,
            "below_range": self.estimate.below_range, "above_range": self.estimate.above_range,
            "n_trained_now": self.n_trained_now,
            "points_detail": [{"size": p.size, "ratio": p.ratio, "ci": list(p.ci), "n_memorized": p.n_memorized,
                               "n_samples": p.n_samples, "straddles": p.straddles(self.threshold),
                               "repeats": [dataclasses.asdict(r) for r in p.repeats]} for p in self.points],
        })
        return d


def heldout_point(p: Point, rows: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
    """A size's held-out numbers: the held-out ratio pooled over its runs (the 1/3 rule's false-positive rate
    on held-out images of this size's source) with its Wilson interval, and C_T at each run's best snapshot
    (the mean over runs); nothing when the runs have no held-out baseline."""
    from diffmem.measure import wilson_interval  # diffmem.measure imports torch: only when a row has held-out data

    k = n = 0
    c_t = []
    for r in p.repeats:
        mine = [row for row in rows if row.get("kind") == "train" and row.get("size") == p.size
                and row.get("repeat") == r.repeat]
        best = next((row for row in mine if row.get("snapshot_kimg") == r.best_snapshot_kimg), None)
        if not mine or mine[0].get("n_heldout") is None:
            continue
        k, n = k + int(mine[0]["heldout_memorized"]), n + int(mine[0]["n_heldout"])
        if best is not None and best.get("c_t") is not None:
            c_t.append(float(best["c_t"]))
    if n == 0:
        return {}
    return {"heldout_ratio": k / n, "heldout_ci": list(wilson_interval(k, n, confidence)), "n_heldout": n,
            "c_t": sum(c_t) / len(c_t) if c_t else None}


def job_spec(cfg: EMMConfig, size: int, repeat: int, synthetic: SyntheticCurve | None = None,
             kimg: float | None = None) -> JobSpec:
    """The resolved, content-addressed job for one size and repeat of ``cfg`` (``kimg``: a run of that
    length instead of ``cfg.train``'s, as the frontier search asks for)."""
    if synthetic is not None:
        c = {"size": size, "repeat": repeat, "n_samples": cfg.n_samples, "curve": to_dict(synthetic),
             "confidence": cfg.measure.confidence}
        return JobSpec("synthetic", size, repeat, c if kimg is None else {**c, "kimg": kimg})
    data = dataclasses.replace(cfg.data, size=size, seed=cfg.data.seed + repeat, source=absolute_spec(cfg.data.source),
                               mix=absolute_spec(cfg.data.mix) if cfg.data.mix else None)
    train = dataclasses.replace(cfg.train, seed=cfg.train.seed + repeat)
    if kimg is not None:
        train = dataclasses.replace(train, kimg=kimg)
    return JobSpec("train", size, repeat, {
        "data": to_dict(data), "model": to_dict(cfg.model), "train": to_dict(train), "sample": to_dict(cfg.sample),
        "measure": to_dict(cfg.measure), "n_samples": cfg.n_samples, "sample_seed": cfg.sample_seed,
        "optimal": bool(cfg.optimal and repeat == 0), **({"heldout": cfg.heldout} if cfg.heldout > 0 else {}),
    })


def best_of_run(rows: list[dict[str, Any]], repeat: int) -> RepeatResult:
    """The run's best snapshot: the highest ratio (earliest on ties), the reference protocol."""
    train_rows = [r for r in rows if r["kind"] == "train"]
    best = max(train_rows, key=lambda r: (r["ratio"], -(r["snapshot_kimg"] or 0.0)))
    return RepeatResult(repeat=repeat, ratio=best["ratio"], n_memorized=best["n_memorized"],
                        n_samples=best["n_samples"], best_snapshot_kimg=best["snapshot_kimg"])


def _check_out(out: Path, cfg: EMMConfig, synthetic: SyntheticCurve | None) -> dict[str, Any]:
    ident = {"emm": to_dict(cfg), "synthetic": to_dict(synthetic) if synthetic else None}
    check_resumable(out, config_hash(ident), "an EMM search", keep=("jobs", ".lock"))
    return ident


def max_trainings(cfg: EMMConfig) -> int:
    """Trainings the search can need at most, repeats and refinements included.

    Table mode: each of ``sizes`` × ``repeats``. Search: ``repeats`` for each size the worst sequence of
    outcomes visits (:func:`~diffmem.sweep.search.max_measurements`, ``parallel`` and ``measure_ends``
    included). With ``refine_repeats`` m, a refined repeat can move the bracket and the search resumes, so
    the bound is every size the search can reach (:func:`~diffmem.sweep.search.reachable_sizes`; all of
    ``sizes`` in table mode) with repeats + m runs each. Frontier mode: runs (sizes × repeats) at most, each
    of which may be extended in several jobs.
    """
    grid = (cfg.size_min, cfg.size_max, cfg.grid_factor, cfg.bracket_factor)
    if cfg.refine_repeats > 0:
        sizes = len(cfg.sizes) if cfg.sizes else reachable_sizes(*grid, parallel=cfg.parallel)
        return sizes * (cfg.repeats + cfg.refine_repeats)
    bound = len(cfg.sizes) if cfg.sizes else max_measurements(*grid, parallel=cfg.parallel, ends=cfg.measure_ends)
    if cfg.frontier:
        _validate_frontier(cfg)
        bound = min(bound * len(frontier_budgets(cfg.train)), cfg.size_max - cfg.size_min + 1)
    return bound * cfg.repeats


def run_emm(
    cfg: EMMConfig,
    out: str | Path,
    *,
    backend: Backend | None = None,   # where jobs run (default: this process)
    jobs_root: str | Path | None = None,  # job directories (default out/jobs; a study shares one)
    synthetic: SyntheticCurve | None = None,  # a known curve instead of training (tests, dry runs)
    progress: bool = False,           # a progress bar of the whole plan on stderr
    on_job: Callable[[JobSpec, bool], None] | None = None,  # called after each job (spec, reused)
) -> EMMResult:
    """Find the EMM of ``cfg`` (or the ratios at ``cfg.sizes``), resuming whatever ``out`` already holds."""
    t0 = time.perf_counter()
    out = Path(out)
    validate_emm(cfg)
    ident = _check_out(out, cfg, synthetic)
    with dir_lock(out):
        return _run(cfg, out, ident, t0, backend=backend, jobs_root=jobs_root, synthetic=synthetic,
                    progress=progress, on_job=on_job)


def _run(cfg: EMMConfig, out: Path, ident: dict[str, Any], t0: float, *, backend: Backend | None,
         jobs_root: str | Path | None, synthetic: SyntheticCurve | None, progress: bool,
         on_job: Callable[[JobSpec, bool], None] | None) -> EMMResult:
    jobs_root = Path(jobs_root) if jobs_root is not None else out / "jobs"
    atomic_write_json(out / "config.json", to_dict(cfg))
    write_manifest(out, EMM_STAGE, ident, status="running", jobs_root=os.path.relpath(jobs_root, out))
    backend = backend or LocalBackend()
    threshold = 1.0 - cfg.epsilon

    plan: list[JobSpec] = []
    rows_by_job: dict[str, list[dict[str, Any]]] = {}
    runs: dict[int, dict[int, RepeatResult]] = {}
    optimal: dict[int, float] = {}
    budgets = frontier_budgets(cfg.train) if cfg.frontier else None
    longest: dict[tuple[int, int], str] = {}  # frontier: (size, repeat) → the job of its longest run
    trained_now = 0
    bar = progress_bar(None if cfg.frontier else max_trainings(cfg), "emm jobs", "job", enabled=progress)

    def done(spec: JobSpec, rows: list[dict[str, Any]], reused: bool) -> None:
        nonlocal trained_now
        trained_now += 0 if reused else 1
        if bar.total is not None and bar.n >= bar.total:
            bar.total = bar.n + 1
        bar.update(1)
        bar.set_postfix_str(f"|D|={spec.size} repeat {spec.repeat}{' (reused)' if reused else ''}")
        if on_job:
            on_job(spec, reused)

    confidence = cfg.measure.confidence  # the level of every interval the search reports
    try:
        while True:
            if cfg.frontier:
                todo = next_runs(_rows_of(longest, rows_by_job), budgets, size_min=cfg.size_min,
                                 size_max=cfg.size_max, threshold=threshold, grid_factor=cfg.grid_factor,
                                 bracket_factor=cfg.bracket_factor, parallel=cfg.parallel, ends=cfg.measure_ends)
                specs = [job_spec(cfg, s, r, synthetic, kimg=todo[s]) for s in todo for r in range(cfg.repeats)]
            else:
                specs = [job_spec(cfg, s, r, synthetic) for s, r in next_trainings(cfg, runs)]
            if not specs:
                break
            plan.extend(specs)
            atomic_write_json(out / "plan.json", {"jobs": [s.dirname for s in plan]})
            results = backend.run(specs, jobs_root, done)
            for spec in specs:
                rows_by_job[spec.key] = rows = results[spec.key]
                runs.setdefault(spec.size, {})[spec.repeat] = best_of_run(rows, spec.repeat)
                if cfg.frontier:  # a size is only ever extended, so the newest job is its longest
                    longest[(spec.size, spec.repeat)] = spec.key
                for r in rows:
                    if r["kind"] == "optimal":
                        optimal[spec.size] = r["ratio"]
                log.info("|D|=%d repeat %d: best ratio %.3f", spec.size, spec.repeat,
                         runs[spec.size][spec.repeat].ratio)
    finally:
        bar.close()

    if cfg.frontier:  # the longest run of each size and repeat holds every snapshot of its shorter ones
        all_rows = _rows_of(longest, rows_by_job)
        front = frontier(all_rows, threshold, confidence, budgets=budgets)
        points, est = list(front[-1].points), front[-1].estimate
    else:
        points = [pool(s, [r[k] for k in sorted(r)], confidence) for s, r in sorted(runs.items())]
        all_rows = [row for spec in plan for row in rows_by_job[spec.key]]
        front = frontier(all_rows, threshold, confidence)
        est = estimate(points, threshold)
    write_table(out, all_rows)
    result = EMMResult(config=cfg, estimate=est, points=points, optimal=optimal,
                       n_trainings=len({s.key for s in plan}), n_trained_now=trained_now,
                       wall_s=time.perf_counter() - t0, rows=all_rows,
                       flagged=[p.size for p in points if p.straddles(threshold)], frontier=front,
                       law=law_report(all_rows, front, threshold, cfg.bracket_factor, confidence),
                       training_kimg=training_kimg(all_rows))
    atomic_write_json(out / "emm.json", result.details())
    write_manifest(out, EMM_STAGE, ident, summary=to_jsonable(result.summary()),
                   jobs_root=os.path.relpath(jobs_root, out))
    return result


def _rows_of(longest: dict[tuple[int, int], str], rows_by_job: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of each size and repeat's longest run, in size and repeat order."""
    return [row for _, key in sorted(longest.items()) for row in rows_by_job[key]]


def next_trainings(cfg: EMMConfig, runs: dict[int, dict[int, RepeatResult]]) -> list[tuple[int, int]]:
    """The (size, repeat) trainings to run next given the runs so far (size → repeat → best snapshot); empty when
    the search (or the table) is done. The search and table modes' one decision rule; the frontier search has
    its own (:func:`diffmem.sweep.frontier.next_runs`)."""
    threshold = 1.0 - cfg.epsilon
    points = {s: pool(s, [r[k] for k in sorted(r)], cfg.measure.confidence) for s, r in runs.items()}
    ratios = {s: p.ratio for s, p in points.items()}
    if cfg.sizes:
        sizes = [s for s in cfg.sizes if s not in runs]
    else:
        sizes = next_sizes(ratios, size_min=cfg.size_min, size_max=cfg.size_max, threshold=threshold,
                           grid_factor=cfg.grid_factor, bracket_factor=cfg.bracket_factor, parallel=cfg.parallel,
                           ends=cfg.measure_ends)
    todo = [(s, r) for s in sizes for r in range(cfg.repeats)]
    if todo or cfg.refine_repeats == 0:
        return todo
    # one more repeat for each bracket size whose interval straddles 1 − ε (up to refine_repeats more)
    br = find_bracket(ratios, threshold)
    return [(s, len(runs[s])) for s in (br.low, br.high) if s is not None and points[s].straddles(threshold)
            and len(runs[s]) < cfg.repeats + cfg.refine_repeats]


def validate_emm(cfg: EMMConfig) -> None:
    """Refuse an EMM config that cannot run, before any work: its own fields and every stage's config (``data``,
    ``model``, ``train``, ``sample``, ``measure``), each in one line naming the field by its config path and what is
    expected. What needs the data is checked as far as the config tells it (the model's resolution levels against
    ``data.resolution`` when it is given, the |D|-dependent EMA rule at the sizes the search can measure first) and
    again at the start of each job."""
    # the stages' rules live with their stages (torch): imported when a search is checked, not with the parser
    from diffmem.measure import validate_measure
    from diffmem.nn import validate_model
    from diffmem.sample import validate_sample
    from diffmem.train.validate import validate_train

    for name, ok, expected in (  # the search's own fields: whether each is valid, and what is expected
        ("epsilon", 0 < cfg.epsilon < 1, "a number in (0, 1)"),
        ("n_samples", cfg.n_samples >= 1, "an integer ≥ 1"),
        ("repeats", cfg.repeats >= 1, "an integer ≥ 1"),
        ("parallel", cfg.parallel >= 1, "an integer ≥ 1"),
        ("grid_factor", cfg.grid_factor > 1, "a ratio > 1 between neighbouring sizes of the grid"),
        ("bracket_factor", cfg.bracket_factor > 1, "a ratio > 1 at which the bracket is narrow enough"),
        ("sample_seed", cfg.sample_seed >= 0, "an integer ≥ 0"),
        ("heldout", cfg.heldout >= 0, "a number of held-out images ≥ 0 (0 = no held-out baseline)"),
        ("refine_repeats", cfg.refine_repeats >= 0, "an integer ≥ 0"),
    ):
        if not ok:
            raise bad(name, getattr(cfg, name), expected)
    if cfg.sizes is not None and (not cfg.sizes or min(cfg.sizes) < 1):
        raise bad("sizes", list(cfg.sizes), "a list of sizes ≥ 1")
    if cfg.sizes is None and not (1 <= cfg.size_min <= cfg.size_max):
        raise bad("size_min, size_max", [cfg.size_min, cfg.size_max], "1 ≤ size_min ≤ size_max")
    if cfg.frontier:
        _validate_frontier(cfg)
    validate_data(cfg.data)
    model = cfg.model if cfg.data.resolution is None else dataclasses.replace(cfg.model, resolution=cfg.data.resolution)
    validate_model(model, resolution=cfg.data.resolution is not None)
    for size in cfg.sizes or (cfg.size_min, cfg.size_max):
        validate_train(cfg.train, size)
    validate_sample(cfg.sample)
    validate_measure(cfg.measure)


def _validate_frontier(cfg: EMMConfig) -> None:
    """Frontier mode: the budgets are the multiples of train.snapshot_kimg up to train.kimg."""
    t = cfg.train
    if cfg.sizes is not None:
        raise bad("sizes", list(cfg.sizes), "null with frontier: true (the frontier search chooses the sizes)")
    if cfg.refine_repeats:
        raise bad("refine_repeats", cfg.refine_repeats, "0 with frontier: true")
    if t.kimg is None or t.epochs is not None:
        raise bad("train.epochs", t.epochs, "null with frontier: true, and the duration in train.kimg (the budget, "
                  "the same for every size)")
    if t.snapshot_kimg is None or not t.snapshot_kimg > 0:
        raise bad("train.snapshot_kimg", t.snapshot_kimg, "the spacing of the budgets in kimg with frontier: true "
                  "(a snapshot at each)")
    k = t.kimg / t.snapshot_kimg
    if abs(k - round(k)) > 1e-6 or round(k) < 2:
        raise bad("train.kimg", t.kimg, f"a multiple (≥ 2) of train.snapshot_kimg ({t.snapshot_kimg:g}) with "
                  "frontier: true, the final budget")
    steps = t.snapshot_kimg * 1000 / t.batch
    if abs(steps - round(steps)) > 1e-6:
        raise bad("train.snapshot_kimg", t.snapshot_kimg, f"a whole number of steps of train.batch {t.batch} images "
                  "with frontier: true, so snapshots fall on the budgets")
