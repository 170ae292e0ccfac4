"""The EMM search and estimate on synthetic ratio curves (no training)."""

import math

import numpy as np
import pytest

from diffmem.errors import UsageError
from diffmem.sweep import search
from diffmem.sweep.estimate import RepeatResult, crossing, estimate, pool
from diffmem.sweep.synthetic import SyntheticCurve

T = 0.9  # 1 − ε


def run_search(oracle, size_min=64, size_max=1024, grid_factor=2.0, bracket_factor=1.25, parallel=1):
    """Drive next_sizes to the end; return measured ratios and the sequence of rounds."""
    ratios, rounds = {}, []
    while True:
        new = search.next_sizes(ratios, size_min=size_min, size_max=size_max, threshold=T,
                                grid_factor=grid_factor, bracket_factor=bracket_factor, parallel=parallel)
        if not new:
            return ratios, rounds
        # every proposal lies strictly inside the current bracket and is new
        br = search.find_bracket(ratios, T)
        for s in new:
            assert s not in ratios
            assert (br.low is None or s > br.low) and (br.high is None or s < br.high)
        rounds.append(new)
        for s in new:
            ratios[s] = oracle(s)
        assert len(rounds) < 50


def wilson_ref(k, n, z=1.959963984540054):
    """Wilson score interval, written out (independent of the package)."""
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, c - h), min(1.0, c + h)


def test_geometric_grid():
    assert search.geometric_grid(64, 1024, 2.0) == [64, 128, 256, 512, 1024]
    assert search.geometric_grid(64, 1000, 2.0) == [64, 127, 253, 503, 1000]  # (1000/64)^(1/4) = 1.988
    assert search.geometric_grid(64, 1100, 2.0) == [round(64 * (1100 / 64) ** (i / 5)) for i in range(6)]
    assert search.geometric_grid(10, 10, 2.0) == [10]
    g = search.geometric_grid(64, 1024, 1.25)
    assert g[0] == 64 and g[-1] == 1024 and len(g) == 14 and all(b / a <= 1.26 for a, b in zip(g, g[1:]))
    with pytest.raises(UsageError, match="grid_factor"):
        search.geometric_grid(64, 1024, 1.0)


@pytest.mark.parametrize("emm", list(np.geomspace(65, 1000, 37).round(1)))
def test_step_curve_bracket_with_fewest_measurements(emm):
    ratios, rounds = run_search(lambda s: 1.0 if s <= emm else 0.0)
    br = search.find_bracket(ratios, T)
    assert br.low <= emm < br.high
    assert br.high / br.low <= 1.25
    # binary search on the 5-size grid (⌈log2 6⌉ = 3) + 2 halvings of log 2 (2^(1/4) ≤ 1.25)
    assert len(ratios) <= 5 == search.max_measurements(64, 1024, 2.0, 1.25)
    # a plain grid at the bracket's resolution would need 14 trainings over the same range: 64·1.25^k up to
    # 1,024 is ⌈ln 16 / ln 1.25⌉ = ⌈12.4⌉ = 13 steps, 14 sizes (the grid factor plays no part)
    assert search.grid_measurements(64, 1024, 1.25) == 14
    # the sizes measured form a monotone step (the decisions never contradict each other)
    s = sorted(ratios)
    assert [ratios[x] for x in s] == sorted((ratios[x] for x in s), reverse=True)


@pytest.mark.parametrize("emm,expect", [(10.0, (None, 64)), (5000.0, (1024, None)), (64.0, (64, 128))])
def test_crossing_outside_or_at_the_edge_of_the_range(emm, expect):
    ratios, _ = run_search(lambda s: 1.0 if s <= emm else 0.0)
    br = search.find_bracket(ratios, T)
    if expect[1] == 128:  # at the edge the bisection continues inside [64, 128]
        assert br.low == 64 and br.high <= 128 and br.high / br.low <= 1.25
    else:
        assert (br.low, br.high) == expect
        assert len(ratios) <= 3  # one binary search down (or up) the 5-size grid


@pytest.mark.parametrize("emm", [50.0, 300.0, 2000.0])
def test_measuring_the_ends_first(emm):
    ratios, rounds = run_search_ends(lambda s: 1.0 if s <= emm else 0.0)
    assert rounds[0] == [64, 1024]
    br = search.find_bracket(ratios, T)
    if 64 <= emm < 1024:
        assert br.low <= emm < br.high and br.high / br.low <= 1.25
        assert len(ratios) <= 2 + 2 + 2  # ends + binary search on the 3 inner grid sizes + 2 halvings
    else:
        assert len(ratios) == 2  # the crossing is outside the range: nothing more to measure


def run_search_ends(oracle):
    ratios, rounds = {}, []
    while new := search.next_sizes(ratios, size_min=64, size_max=1024, threshold=T, ends=True):
        rounds.append(new)
        ratios.update({s: oracle(s) for s in new})
    return ratios, rounds


@pytest.mark.parametrize("parallel", [2, 3])
def test_parallel_rounds_find_the_bracket_in_no_more_rounds(parallel):
    emm = 300.0
    r1, rounds1 = run_search(lambda s: 1.0 if s <= emm else 0.0)
    rk, roundsk = run_search(lambda s: 1.0 if s <= emm else 0.0, parallel=parallel)
    b1, bk = search.find_bracket(r1, T), search.find_bracket(rk, T)
    assert bk.low <= emm < bk.high and bk.high / bk.low <= 1.25
    assert len(roundsk) <= len(rounds1)
    assert all(len(r) <= parallel for r in roundsk)
    assert b1.low <= emm < b1.high


@pytest.mark.parametrize("seed", range(12))
def test_noisy_curve_brackets_the_true_crossing(seed):
    curve = SyntheticCurve(emm=float(np.random.default_rng(seed).uniform(80, 900)), slope=4.0, threshold=T)
    n = 1000
    rng = np.random.default_rng(100 + seed)
    ratios, _ = run_search(lambda s: rng.binomial(n, curve.expected(s, 4.0)) / n)
    br = search.find_bracket(ratios, T)
    # near the crossing the expected ratio differs from 0.9 by less than the sampling noise
    # (sd ≈ 0.01 at n = 1000), so the bracket may miss the true crossing by a few percent only
    assert br.low <= curve.emm * 1.06 and br.high >= curve.emm / 1.06
    assert br.high / br.low <= 1.25
    assert len(ratios) <= 5


def test_crossing_closed_form():
    # ratio 0.95 at 100, 0.85 at 200: 0.9 is halfway, so the crossing is the geometric mean
    assert crossing([100, 200], [0.95, 0.85], 0.9) == pytest.approx(math.sqrt(100 * 200))
    # a quarter of the way in log size
    assert crossing([64, 1024], [1.0, 0.6], 0.9) == pytest.approx(64 * 16**0.25)
    assert crossing([64, 128], [0.5, 0.1], 0.9) is None
    assert crossing([64, 128], [1.0, 0.95], 0.9) is None


def test_point_interval_is_wilson_and_estimate_interpolates_its_bounds():
    runs = {100: (980, 1000), 200: (850, 1000), 400: (100, 1000)}
    pts = [pool(s, [RepeatResult(0, k / n, k, n, 4.0)], 0.95) for s, (k, n) in runs.items()]
    for p, (k, n) in zip(pts, runs.values()):
        assert p.ci == pytest.approx(wilson_ref(k, n), abs=1e-9)
    e = estimate(pts, T)
    assert e.bracket == (100, 200)
    assert e.emm == pytest.approx(100 * 2 ** ((0.98 - 0.9) / (0.98 - 0.85)))
    lo100, hi100 = wilson_ref(980, 1000)
    lo200, hi200 = wilson_ref(850, 1000)
    assert e.ci[0] == pytest.approx(100 * 2 ** ((lo100 - 0.9) / (lo100 - lo200)))
    assert e.ci[1] == pytest.approx(100 * 2 ** ((hi100 - 0.9) / (hi100 - hi200)))
    assert e.ci[0] < e.emm < e.ci[1]
    assert [p.straddles(T) for p in pts] == [False, False, False]


def test_repeats_widen_the_interval_to_their_spread():
    rs = [RepeatResult(i, r, int(r * 1000), 1000, 4.0) for i, r in enumerate([0.80, 0.95, 0.99])]
    p = pool(256, rs, 0.95)
    mean, sd = np.mean([0.80, 0.95, 0.99]), np.std([0.80, 0.95, 0.99], ddof=1)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, 2 dof)
    assert p.ratio == pytest.approx((800 + 950 + 990) / 3000)
    assert p.ci[0] == pytest.approx(mean - half, abs=1e-4) and p.ci[1] == pytest.approx(min(1.0, mean + half), abs=1e-4)
    assert p.straddles(T)
    # equal repeats: the pooled Wilson interval (narrower than any single run's)
    same = pool(256, [RepeatResult(i, 0.5, 500, 1000, 1.0) for i in range(2)], 0.95)
    assert same.ci == pytest.approx(wilson_ref(1000, 2000))


def test_estimate_outside_the_measured_range():
    all_mem = [pool(s, [RepeatResult(0, 1.0, 1000, 1000, 1.0)], 0.95) for s in (64, 128)]
    e = estimate(all_mem, T)
    assert e.emm is None and e.above_range and e.bracket == (128, None)
    assert e.ci[0] == 128 and e.ci[1] is None
    none_mem = [pool(s, [RepeatResult(0, 0.0, 0, 1000, 1.0)], 0.95) for s in (64, 128)]
    e = estimate(none_mem, T)
    assert e.emm is None and e.below_range and e.bracket == (None, 64)
    assert e.ci == (None, 64)


def test_repeat_interval_uses_students_t_at_the_asked_confidence():
    # spread-out repeats, so the Student-t half-width (not Wilson) sets the interval
    rs = [RepeatResult(i, r, int(r * 1000), 1000, 1.0) for i, r in enumerate((0.70, 0.85, 0.95))]
    mean, sd = np.mean([0.70, 0.85, 0.95]), np.std([0.70, 0.85, 0.95], ddof=1)
    # two-sided quantiles of t with 2 degrees of freedom (printed tables): 90 % 2.920, 95 % 4.303, 99 % 9.925
    for conf, q in ((0.90, 2.920), (0.95, 4.303), (0.99, 9.925)):
        lo, hi = pool(256, rs, confidence=conf).ci
        assert lo == pytest.approx(max(0.0, mean - q * sd / math.sqrt(3)), abs=1e-3)
        assert hi == pytest.approx(min(1.0, mean + q * sd / math.sqrt(3)), abs=1e-3)
