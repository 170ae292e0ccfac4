"""The EMM search: bracket the (1 − ε) crossing on a geometric grid, then bisect on log |D|.

The search is stateless: :func:`next_sizes` looks only at the sizes measured so far and their
ratios and proposes the next sizes to measure. Rerunning it on the same measurements proposes the
same sizes, so a killed search resumes by replaying its decisions against the finished jobs.

The memorization ratio falls with |D|; a size *memorizes* when its ratio is ≥ 1 − ε. With a grid of
G sizes the crossing is found in ⌈log₂(G + 1)⌉ measurements (binary search on the grid), then each
further measurement halves the bracket's log-width until its sizes are within ``bracket_factor``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from diffmem.errors import bad


def geometric_grid(size_min: int, size_max: int, factor: float) -> list[int]:
    """Integer sizes from size_min to size_max, evenly spaced in log size, neighbours at most ``factor`` apart."""
    if size_min < 1 or size_max < size_min:
        raise bad("size_min, size_max", [size_min, size_max], "1 ≤ size_min ≤ size_max")
    if not factor > 1:
        raise bad("grid_factor", factor, "a number > 1")
    if size_max == size_min:
        return [size_min]
    steps = max(1, math.ceil(math.log(size_max / size_min) / math.log(factor) - 1e-9))
    sizes = [int(round(size_min * (size_max / size_min) ** (i / steps))) for i in range(steps + 1)]
    return sorted(set(sizes))


@dataclass(frozen=True)
class Bracket:
    """Where the crossing lies given the measurements so far.

    ``low`` is the largest measured size below ``high`` (it memorizes), ``high`` the smallest
    measured size that does not memorize; either is None when the crossing lies outside the
    measured sizes on that side.
    """

    low: int | None
    high: int | None

    @property
    def closed(self) -> bool:
        return self.low is not None and self.high is not None


def find_bracket(ratios: Mapping[int, float], threshold: float) -> Bracket:
    """Bracket from measured ``ratios`` (size → ratio): the first size whose ratio is < threshold.

    On a noisy, non-monotone curve the first non-memorizing size decides, which is what the
    bisection's own decisions amount to.
    """
    sizes = sorted(ratios)
    for i, s in enumerate(sizes):
        if ratios[s] < threshold:
            return Bracket(sizes[i - 1] if i > 0 else None, s)
    return Bracket(sizes[-1] if sizes else None, None)


def _spread(candidates: list[int], k: int) -> list[int]:
    """``k`` candidates that split the list into k + 1 near-equal parts (k = 1: the middle one)."""
    m = len(candidates)
    if k >= m:
        return list(candidates)
    idx = sorted({(m + 1) * (j + 1) // (k + 1) - 1 for j in range(k)})
    return [candidates[min(max(i, 0), m - 1)] for i in idx]


def next_sizes(
    ratios: Mapping[int, float],
    *,
    size_min: int,
    size_max: int,
    threshold: float,
    grid_factor: float = 2.0,
    bracket_factor: float = 1.25,
    parallel: int = 1,
    ends: bool = False,
) -> list[int]:
    """The sizes to measure next (empty when the search is finished).

    ratios:         size → measured ratio (pooled over repeats) for every size measured so far
    threshold:      1 − ε; a size memorizes when its ratio is ≥ threshold
    grid_factor:    ratio between neighbouring sizes of the bracketing grid
    bracket_factor: stop when the bracket's sizes are within this factor
    parallel:       sizes proposed per round (1 = plain binary search, the fewest measurements)
    ends:           measure size_min and size_max first (both ends of the transition; ≤ 2 more)
    """
    if not bracket_factor > 1:
        raise bad("bracket_factor", bracket_factor, "a number > 1")
    if parallel < 1:
        raise bad("parallel", parallel, "an integer ≥ 1")
    if ends:
        first = [s for s in dict.fromkeys((size_min, size_max)) if s not in ratios]
        if first:
            return first
    br = find_bracket(ratios, threshold)
    lo = br.low if br.low is not None else 0
    hi = br.high if br.high is not None else math.inf
    # phase 1: binary (or (k+1)-ary) search on the grid sizes inside the bracket
    grid = [s for s in geometric_grid(size_min, size_max, grid_factor) if lo < s < hi and s not in ratios]
    if grid:
        return _spread(grid, parallel)
    if not br.closed or br.high / br.low <= bracket_factor:  # type: ignore[operator]
        return []
    # phase 2: bisection on log |D| inside the closed bracket: geometric means of k + 1 equal parts
    return [x for x in _section(br.low, br.high, parallel) if x not in ratios]  # type: ignore[arg-type]


def _section(lo: int, hi: int, k: int) -> list[int]:
    """The distinct integer sizes strictly inside (lo, hi) at the geometric (k + 1)-section points."""
    log_lo, log_hi = math.log(lo), math.log(hi)
    out: list[int] = []
    for j in range(1, k + 1):
        s = int(round(math.exp(log_lo + (log_hi - log_lo) * j / (k + 1))))
        if lo < s < hi and s not in out:
            out.append(s)
    return out


def max_measurements(size_min: int, size_max: int, grid_factor: float, bracket_factor: float, *,
                     parallel: int = 1, ends: bool = False) -> int:
    """The most sizes :func:`next_sizes` can ask for, over every sequence of outcomes (the search's worst case).

    Whatever the outcomes, a round's sizes lie inside the bracket, and the next bracket is one of the k + 1
    parts they leave (on a non-monotone curve the first size that does not memorize decides, which is a part
    as well). So the worst case is the deepest path through the parts, counted over the actual sizes:

    - ``ends``: size_min and size_max first (one round of 2; the search goes on only when the first
      memorizes and the second does not);
    - grid phase: k of the m grid sizes inside the bracket per round, spread evenly, then the worst part;
    - bisection: from a bracket of two grid neighbours, k sizes at the geometric (k + 1)-section per round,
      then the worst part, until the bracket's sizes are within ``bracket_factor``.

    With k = 1 this is ⌈log₂(m + 1)⌉ grid measurements plus ⌈log₂(log grid_factor / log bracket_factor)⌉
    halvings, up to rounding of the sizes.
    """
    grid = geometric_grid(size_min, size_max, grid_factor)

    def bisection(lo: int, hi: int) -> int:
        inside = [] if hi / lo <= bracket_factor else _section(lo, hi, parallel)
        bounds = [lo, *inside, hi]
        return len(inside) + max((bisection(a, b) for a, b in zip(bounds, bounds[1:]) if inside), default=0)

    def search(lo: int | None, hi: int | None) -> int:
        cands = [g for g in grid if (lo is None or g > lo) and (hi is None or g < hi)]
        if not cands:
            return bisection(lo, hi) if lo is not None and hi is not None else 0
        picks = _spread(cands, parallel)
        bounds = [lo, *picks, hi]
        return len(picks) + max(search(a, b) for a, b in zip(bounds, bounds[1:]))

    if ends and len(grid) > 1:
        return 2 + search(grid[0], grid[-1])
    return search(None, None)


def reachable_sizes(size_min: int, size_max: int, grid_factor: float, bracket_factor: float, *,
                    parallel: int = 1) -> int:
    """How many distinct sizes the search can ever ask for, whatever the outcomes and however often they change
    (a refined repeat can move the bracket back): every grid size and every node of each grid gap's bisection
    tree. A bracket is always two neighbouring measured sizes, and within a grid gap those are neighbouring
    nodes of that tree, so its sizes are all the search can propose."""
    grid = geometric_grid(size_min, size_max, grid_factor)

    def nodes(lo: int, hi: int) -> int:
        inside = [] if hi / lo <= bracket_factor else _section(lo, hi, parallel)
        bounds = [lo, *inside, hi]
        return len(inside) + sum(nodes(a, b) for a, b in zip(bounds, bounds[1:]) if inside)

    return len(grid) + sum(nodes(a, b) for a, b in zip(grid, grid[1:]))


def grid_measurements(size_min: int, size_max: int, bracket_factor: float) -> int:
    """Measurements a plain grid at ``bracket_factor`` spacing needs over the same range (the baseline the
    search is compared with)."""
    return len(geometric_grid(size_min, size_max, bracket_factor))
