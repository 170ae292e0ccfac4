"""Trainings needed by the EMM search against a plain grid, and how often its bracket holds the truth;
and the frontier search (EMM at every budget) against one EMM search per budget.

No training: each "training" is a draw from a known ratio curve (diffmem.sweep.synthetic), so the
numbers are exact counts. Baselines, over the same size range and bracket resolution:
  - plain grid: every size of a geometric grid with neighbours ``bracket_factor`` apart;
  - the reference study's protocol: a coarse grid (factor 2), by hand, every size trained.
Frontier (``--frontier-trials``): a known surface ratio(|D|, kimg) whose crossing grows as a power law
of the budget, EMM(T) = E · (T / T_K)^(1/α); the frontier search against one EMM search per budget
(each run to its budget), both measuring both ends first. A run's snapshots are one draw per
(size, snapshot) shared by every method, as a run trained longer repeats the shorter run's snapshots.

Run: .venv/bin/python benchmarks/emm_search.py [--trials 400] [--frontier-trials 200]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from diffmem.sweep.estimate import RepeatResult, estimate, pool
from diffmem.sweep.frontier import frontier, next_runs
from diffmem.sweep.search import find_bracket, geometric_grid, next_sizes
from diffmem.sweep.synthetic import SyntheticCurve

T = 0.9


def search(oracle, size_min, size_max, ends, parallel=1):
    ratios, rounds = {}, 0
    while new := next_sizes(ratios, size_min=size_min, size_max=size_max, threshold=T, grid_factor=2.0,
                            bracket_factor=1.25, parallel=parallel, ends=ends):
        rounds += 1
        ratios.update({s: oracle(s) for s in new})
    return ratios, rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400, help="trials per row of the single-search table (0: skip)")
    ap.add_argument("--frontier-trials", type=int, default=200, help="trials per row of the frontier table (0: skip)")
    ap.add_argument("--n-samples", type=int, default=1000)
    args = ap.parse_args()
    if args.trials:
        single_searches(args)
    if args.frontier_trials:
        frontier_searches(args)


def single_searches(args) -> None:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    rows = []
    for size_min, size_max in ((32, 1024), (500, 8000), (64, 50_000)):
        plain = len(geometric_grid(size_min, size_max, 1.25))
        coarse = len(geometric_grid(size_min, size_max, 2.0))
        for ends in (False, True):
            for parallel in (1, 3):
                counts, rounds_all, hits, near, covered, errs = [], [], 0, 0, 0, []
                for _ in range(args.trials):
                    emm = float(math.exp(rng.uniform(math.log(size_min * 1.1), math.log(size_max / 1.1))))
                    curve = SyntheticCurve(emm=emm, slope=4.0, threshold=T)
                    draw = np.random.default_rng(rng.integers(1 << 62))
                    ratios, rounds = search(lambda s, c=curve, d=draw: d.binomial(args.n_samples, c.expected(s, 4.0))
                                            / args.n_samples, size_min, size_max, ends, parallel)
                    br = find_bracket(ratios, T)
                    counts.append(len(ratios))
                    rounds_all.append(rounds)
                    hits += br.low is not None and br.high is not None and br.low <= emm <= br.high
                    closed = br.low is not None and br.high is not None
                    near += closed and br.low <= emm * 1.05 and br.high >= emm / 1.05
                    n = args.n_samples
                    e = estimate([pool(s, [RepeatResult(0, r, round(r * n), n, 4.0)], 0.95)
                                  for s, r in ratios.items()], T)
                    lo, hi = e.ci
                    covered += lo is not None and hi is not None and lo <= emm <= hi
                    if e.emm is not None:
                        errs.append(abs(math.log(e.emm / emm)))
                rows.append((f"{size_min:,}–{size_max:,}", ends, parallel, statistics.mean(counts), max(counts),
                             statistics.mean(rounds_all), plain, coarse, hits / args.trials, near / args.trials,
                             covered / args.trials, math.exp(statistics.median(errs)) - 1))
    print(f"trials per row: {args.trials}; samples per measurement: {args.n_samples}; true curve: logistic in "
          "log |D| with slope 4, binomial noise; bracket factor 1.25, grid factor 2")
    print("| range | ends first | sizes per round | trainings (mean) | trainings (max) | rounds (mean) | "
          "plain grid at 1.25 | coarse grid at 2 | bracket holds the true EMM | … within 5 % | "
          "95 % interval holds it | median error of the estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {'yes' if r[1] else 'no'} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]:.2f} | {r[6]} | {r[7]} | "
              f"{r[8]:.1%} | {r[9]:.1%} | {r[10]:.1%} | {r[11]:.1%} |")
    print(f"\nwall time {time.perf_counter() - t0:.1f} s")


class Surface:
    """Snapshot ratios of a known surface, one binomial draw per (size, snapshot) (None: the expected ratio)."""

    def __init__(self, curve: SyntheticCurve, n: int | None, rng: np.random.Generator):
        self.curve, self.n, self.rng, self.draws = curve, n, rng, {}

    def row(self, size: int, kimg: float) -> dict:
        if (size, kimg) not in self.draws:
            p = self.curve.expected(size, kimg)
            n = self.n or 1_000_000
            self.draws[(size, kimg)] = int(self.rng.binomial(n, p)) if self.n else int(round(n * p))
        m, n = self.draws[(size, kimg)], self.n or 1_000_000
        return {"kind": "train", "size": size, "repeat": 0, "snapshot_kimg": kimg, "n_memorized": m, "n_samples": n}

    def best_up_to(self, size: int, kimg: float, budgets) -> float:
        return max(self.row(size, k)["n_memorized"] / self.row(size, k)["n_samples"] for k in budgets if k <= kimg)


def _bracketed(bracket, truth, size_min, size_max, factor=1.25) -> tuple[bool, bool]:
    """(the bracket holds the true EMM and is as narrow as asked or rightly open, the same within 5 %)."""
    lo, hi = bracket
    tight = (lo is not None and hi is not None and hi / lo <= factor + 1e-9) or \
        (lo is None and hi == size_min) or (hi is None and lo == size_max)
    holds = (lo is None or lo <= truth) and (hi is None or truth < hi)
    near = (lo is None or lo <= truth * 1.05) and (hi is None or truth / 1.05 < hi)
    return tight and holds, tight and near


def frontier_run(surface: Surface, budgets, size_min, size_max, staged: bool):
    runs: dict[int, float] = {}
    jobs = rounds = 0
    while True:
        rows = [surface.row(s, k) for s, L in runs.items() for k in budgets if k <= L + 1e-9]
        todo = next_runs(rows, budgets, size_min=size_min, size_max=size_max, threshold=T, ends=True, staged=staged)
        if not todo:
            break
        rounds, jobs = rounds + 1, jobs + len(todo)
        runs.update(todo)
    brackets = [b.estimate.bracket for b in frontier(rows, T, budgets=budgets)]
    return brackets, len(runs), jobs, sum(runs.values()), rounds


def per_budget_searches(surface: Surface, budgets, size_min, size_max):
    brackets, trainings, kimg, rounds = [], 0, 0.0, 0
    for B in budgets:
        ratios, r = search(lambda s, B=B: surface.best_up_to(s, B, budgets), size_min, size_max, True)
        brackets.append((find_bracket(ratios, T).low, find_bracket(ratios, T).high))
        trainings, kimg, rounds = trainings + len(ratios), kimg + B * len(ratios), max(rounds, r)
    return brackets, trainings, trainings, kimg, rounds


def frontier_searches(args) -> None:
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    setups = [("32–1,024", 32, 1024, [64.0 * i for i in range(1, 13)]),
              ("64–50,000", 64, 50_000, [2_500.0 * i for i in range(1, 17)])]
    methods = [("frontier search (lengths doubling)", lambda sf, b, lo, hi: frontier_run(sf, b, lo, hi, True)),
               ("frontier search (straight to the longest budget asking)",
                lambda sf, b, lo, hi: frontier_run(sf, b, lo, hi, False)),
               ("one EMM search per budget", per_budget_searches)]
    out = []
    for label, size_min, size_max, budgets in setups:
        for alpha in (0.8, 1.0, 1.25):
            for noise in (True, False):
                stats = {m: [] for m, _ in methods}
                for _ in range(args.frontier_trials):
                    # the EMM at the final budget, log-uniform; smaller budgets may fall below the range
                    emm = float(math.exp(rng.uniform(math.log(size_min * 4), math.log(size_max / 1.1))))
                    curve = SyntheticCurve(emm=emm, slope=4.0, threshold=T, snapshots_kimg=tuple(budgets),
                                           growth=1 / alpha)
                    surface = Surface(curve, args.n_samples if noise else None,
                                      np.random.default_rng(rng.integers(1 << 62)))
                    found = {m: fn(surface, budgets, size_min, size_max) for m, fn in methods}
                    baseline = found[methods[-1][0]][0]
                    for m, (brackets, runs, jobs, kimg, rounds) in found.items():
                        ok = [_bracketed(b, curve.emm_at(B), size_min, size_max) for b, B in zip(brackets, budgets)]
                        stats[m].append((runs, jobs, kimg, rounds, all(o[0] for o in ok), all(o[1] for o in ok),
                                         sum(o[0] for o in ok) / len(ok), brackets == baseline))
                for m, _ in methods:
                    st = np.array(stats[m], dtype=float)
                    out.append((label, len(budgets), alpha, noise, m, *st.mean(0), st[:, 2].max()))
    print(f"\ntrials per row: {args.frontier_trials}; samples per measurement: {args.n_samples} (or the expected ratio "
          "without noise); true surface: logistic in log |D| with slope 4, crossing E·(T/T_K)^(1/α); "
          "bracket factor 1.25, grid factor 2, both ends measured first")
    print("| sizes | budgets | α | noise | method | runs (sizes trained, mean) | jobs (trainings incl. extensions, "
          "mean) | kimg trained (mean) | kimg (max) | rounds (mean) | every budget bracketed | … within 5 % | "
          "budgets bracketed | brackets equal to one search per budget |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r[0]} | {r[1]} | {r[2]:g} | {'binomial' if r[3] else 'none'} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | "
              f"{r[7]:,.0f} | {r[13]:,.0f} | {r[8]:.1f} | {r[9]:.1%} | {r[10]:.1%} | {r[11]:.1%} | {r[12]:.1%} |")
    print(f"\nwall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
