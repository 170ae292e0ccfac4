"""The memorization frontier: the EMM at every training budget, and the search that brackets it at each.

EMM is relative to the training budget. For a budget of T kimg (thousands of images seen), a run's
ratio *at T* is its best snapshot up to T (the reference protocol, truncated at T); a size's point at
T pools its repeats as :func:`diffmem.sweep.estimate.pool` does, and EMM(T) is
:func:`diffmem.sweep.estimate.estimate` of those points. Every snapshot budget of a search gives
one EMM(T): the *frontier*, the largest training set still memorized for each budget.

What a run says about budget T:

- a run that reached T (its last snapshot is at T or later): its exact ratio at T;
- a run that ended before T having already memorized (ratio ≥ 1 − ε): it still memorizes at T (the best
  snapshot up to T can only be higher); its ratio counts as a lower bound and its interval's upper end
  is set to 1, since the data do not bound it from above. Its ratio and its interval's lower end are
  raised to the largest among the larger sizes measured at T: the ratio falls with |D| (the assumption
  the bracket rests on), and without this a run stopped just after it memorized would pin the EMM's
  lower bound at its size for every later budget (its counts stay those measured);
- a run that ended before T without memorizing: nothing; the size is left out at T.

The frontier search (``frontier: true``) chooses sizes *and* run lengths so that EMM(T) is bracketed
at every snapshot budget T up to the final one. It replays the EMM search of
:func:`diffmem.sweep.search.next_sizes` at every budget, on the sizes known there, and trains each
proposed size long enough for the budgets that asked for it. A run of length L gives every budget
≤ L, and a run is extended (resumed to a longer length, see :mod:`diffmem.sweep.lineage`) rather than
retrained when a larger budget needs it. Lengths grow by doubling: a new size first runs to the
smallest budget that asked for it, and each extension at most doubles its length up to the largest,
so a size that memorizes early is not trained long (its run stops once it is known everywhere it is
needed) while a size that never memorizes reaches the final budget in ⌈log₂ K⌉ + 1 jobs with no
step trained twice. Like the EMM search it is a pure function of the measurements, so a killed
search replays its decisions and resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffmem import fmt
from diffmem.config import TrainConfig
from diffmem.sweep.estimate import Estimate, Point, RepeatResult, estimate, pool
from diffmem.sweep.search import next_sizes

TOL = 1e-6  # kimg: snapshots are exact to one image (nimg / 1000), budgets are multiples of snapshot_kimg

Snapshot = tuple[float, int, int]  # (kimg, n_memorized, n_samples)
Curves = dict[int, dict[int, list[Snapshot]]]  # size → repeat → snapshots sorted by kimg


@dataclass(frozen=True)
class BudgetEMM:
    """EMM at one budget: the estimate from the points known there."""

    kimg: float
    estimate: Estimate
    points: tuple[Point, ...]
    partial: tuple[int, ...]  # sizes whose runs ended before this budget, memorized by then (ratio a lower bound)

    def summary(self, points: bool = True) -> dict[str, Any]:
        """One entry of ``emm.json``'s ``frontier`` list (``points``: with the points it rests on)."""
        e = self.estimate
        out = {
            "kimg": self.kimg, "emm": e.emm, "bracket": list(e.bracket), "ci": list(e.ci),
            "epochs_at_emm": None if e.emm is None else self.kimg * 1000 / e.emm,
            "below_range": e.below_range, "above_range": e.above_range,
        }
        if points:
            out["points"] = [{"size": p.size, "ratio": p.ratio, "ci": list(p.ci), "n_samples": p.n_samples,
                              "best_snapshot_kimg": p.best_snapshot_kimg, "lower_bound": p.size in self.partial}
                             for p in self.points]
        return out


def curves_of(rows: Sequence[Mapping[str, Any]]) -> Curves:
    """The per-snapshot counts of every training run in ``rows`` (rows of kind ``train`` with a snapshot)."""
    out: Curves = {}
    for r in rows:
        if r.get("kind") != "train" or r.get("snapshot_kimg") is None:
            continue
        out.setdefault(int(r["size"]), {}).setdefault(int(r["repeat"]), []).append(
            (float(r["snapshot_kimg"]), int(r["n_memorized"]), int(r["n_samples"])))
    for reps in out.values():
        for snaps in reps.values():
            snaps.sort()
    return out


def budgets_of(curves: Curves) -> list[float]:
    """Every snapshot budget of the runs, ascending (equal within TOL merged)."""
    out: list[float] = []
    for k in sorted({s[0] for reps in curves.values() for snaps in reps.values() for s in snaps}):
        if not out or k > out[-1] + TOL:
            out.append(k)
    return out


def run_length(repeats: Mapping[int, list[Snapshot]]) -> float:
    """How far every repeat of one size has been trained: the smallest last snapshot over its repeats."""
    return min(snaps[-1][0] for snaps in repeats.values())


def _best_up_to(snaps: list[Snapshot], repeat: int, kimg: float) -> RepeatResult | None:
    """The run's best snapshot up to ``kimg`` (highest ratio, the earliest on ties); None before its first."""
    upto = [s for s in snaps if s[0] <= kimg + TOL]
    if not upto:
        return None
    k, m, n = max(upto, key=lambda s: (s[1] / s[2], -s[0]))
    return RepeatResult(repeat=repeat, ratio=m / n, n_memorized=m, n_samples=n, best_snapshot_kimg=k)


def point_at(repeats: Mapping[int, list[Snapshot]], size: int, kimg: float, threshold: float,
             confidence: float = 0.95) -> tuple[Point | None, bool]:
    """The size's point at budget ``kimg`` and whether it is exact (False: a lower bound), or (None, False)
    when the runs say nothing about that budget (see the module docstring)."""
    best = [_best_up_to(snaps, r, kimg) for r, snaps in sorted(repeats.items())]
    if any(b is None for b in best):
        return None, False
    p = pool(size, best, confidence)  # type: ignore[arg-type]
    if run_length(repeats) >= kimg - TOL:
        return p, True
    if p.ratio >= threshold:
        return dataclasses.replace(p, ci=(p.ci[0], 1.0)), False
    return None, False


def frontier(rows: Sequence[Mapping[str, Any]], threshold: float, confidence: float = 0.95,
             budgets: Sequence[float] | None = None) -> list[BudgetEMM]:
    """EMM at every snapshot budget of ``rows`` (or at ``budgets``), from the runs' snapshots."""
    curves = curves_of(rows)
    out = []
    for T in budgets if budgets is not None else budgets_of(curves):
        points, partial = [], []
        for size in sorted(curves):
            p, exact = point_at(curves[size], size, T, threshold, confidence)
            if p is not None:
                points.append(p)
                if not exact:
                    partial.append(size)
        ratio_floor = ci_floor = 0.0  # the largest ratio and interval lower end among larger sizes
        for i in reversed(range(len(points))):
            p = points[i]
            if p.size in partial:
                points[i] = p = dataclasses.replace(p, ratio=max(p.ratio, ratio_floor), ci=(max(p.ci[0], ci_floor),
                                                                                            p.ci[1]))
            ratio_floor, ci_floor = max(ratio_floor, p.ratio), max(ci_floor, p.ci[0])
        out.append(BudgetEMM(kimg=float(T), estimate=estimate(points, threshold), points=tuple(points),
                             partial=tuple(partial)))
    return out


def frontier_budgets(train: TrainConfig) -> list[float]:
    """The budgets of a frontier search: every multiple of ``snapshot_kimg`` up to ``kimg``."""
    k = int(round(train.kimg / train.snapshot_kimg))  # type: ignore[operator]
    return [round(i * train.snapshot_kimg, 9) for i in range(1, k + 1)]  # type: ignore[operator]


def _on_grid(kimg: float, budgets: Sequence[float]) -> float:
    """The smallest budget ≥ ``kimg`` (the largest budget when none is)."""
    return next((b for b in budgets if b >= kimg - TOL), budgets[-1])


def next_runs(
    rows: Sequence[Mapping[str, Any]],
    budgets: Sequence[float],
    *,
    size_min: int,
    size_max: int,
    threshold: float,
    grid_factor: float = 2.0,
    bracket_factor: float = 1.25,
    parallel: int = 1,
    ends: bool = False,
    staged: bool = True,   # lengths grow by doubling (False: straight to the largest budget that asks)
) -> dict[int, float]:
    """The runs to train next, size → length in kimg (empty when EMM is bracketed at every budget).

    A size already trained to length L and asked for again is extended to the returned length (> L).
    """
    curves = curves_of(rows)
    need: dict[int, list[float]] = {}
    for T in budgets:
        known = {}
        for size, repeats in curves.items():
            p, _ = point_at(repeats, size, T, threshold)
            if p is not None:
                known[size] = p.ratio
        for size in next_sizes(known, size_min=size_min, size_max=size_max, threshold=threshold,
                               grid_factor=grid_factor, bracket_factor=bracket_factor, parallel=parallel, ends=ends):
            need.setdefault(size, []).append(T)
    out = {}
    for size, asked in sorted(need.items()):
        lo, hi = min(asked), max(asked)
        if not staged:
            out[size] = hi
            continue
        done = run_length(curves[size]) if size in curves else 0.0
        out[size] = min(hi, max(lo, _on_grid(2 * done, budgets)))
    return out


def training_kimg(rows: Sequence[Mapping[str, Any]]) -> float:
    """Kimg of training behind ``rows``: each size and repeat's longest run (extensions reuse shorter ones)."""
    return float(sum(snaps[-1][0] for reps in curves_of(rows).values() for snaps in reps.values()))


def bracket_ok(b: BudgetEMM, bracket_factor: float) -> bool:
    """True when the budget's EMM is bracketed within ``bracket_factor``, or lies outside the size range."""
    lo, hi = b.estimate.bracket
    if lo is None or hi is None:
        return b.estimate.below_range or b.estimate.above_range
    return hi / lo <= bracket_factor + 1e-9


def max_budget_searches(budgets: Sequence[float], per_search: int) -> tuple[int, float]:
    """Trainings and kimg at most of the baseline: one EMM search per budget, each run to its budget."""
    return len(budgets) * per_search, float(sum(budgets) * per_search)


def frontier_table(entries: Sequence[Mapping[str, Any]], confidence: float) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the frontier table (``emm.json``'s ``frontier`` entries, intervals at ``confidence``),
    for CLI and report."""
    n = fmt.size
    rows = []
    for b in entries:
        e, (lo, hi), (clo, chi) = b["emm"], b["bracket"], b["ci"]
        if e is None:
            e_text = f"< {n(hi)}" if b.get("below_range") else f"≥ {n(lo)}" if b.get("above_range") else "—"
        else:
            e_text = n(e)
        rows.append([fmt.kimg(b['kimg']), e_text, f"[{n(clo)}, {n(chi)}]", f"[{n(lo)}, {n(hi)}]",
                     "—" if b.get("epochs_at_emm") is None else f"{b['epochs_at_emm']:,.0f}"])
    return ["budget (kimg)", "EMM (training images)", f"{fmt.pct(confidence)} interval",
            "bracket (memorizes, does not)", "images seen per training image at the EMM"], rows
