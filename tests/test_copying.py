"""The data-copying test (C_T) against independent references and its known answers on data with known
structure: planted copies give C_T ≪ 0, fresh draws of the training distribution |C_T| small, blurred or
noisy samples C_T ≫ 0."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from diffmem.config import MeasureConfig
from diffmem.measure import measure, prepare_heldout, prepare_train
from diffmem.measure.copying import auto_cells, data_copying_test, mann_whitney


def _u_brute(q, p):
    q, p = np.asarray(q, float)[:, None], np.asarray(p, float)[None, :]
    return float(np.sum(q > p) + 0.5 * np.sum(q == p))


@pytest.mark.parametrize("case", ["continuous", "ties", "copies"])
def test_mann_whitney_against_scipy_and_pair_counts(case, rng):
    if case == "continuous":
        q, p = rng.normal(size=40), rng.normal(0.3, 1, size=55)
    elif case == "ties":
        q, p = rng.integers(0, 5, size=30).astype(float), rng.integers(0, 6, size=25).astype(float)
    else:  # exact copies: every q is 0, the held-out distances are positive
        q, p = np.zeros(30), rng.uniform(1, 2, size=20)
    U, Z = mann_whitney(q, p)
    assert U == _u_brute(q, p) == mannwhitneyu(q, p).statistic
    # scipy's asymptotic p-value (tie-corrected, no continuity correction) gives |Z| back
    pval = mannwhitneyu(q, p, method="asymptotic", use_continuity=False).pvalue
    assert abs(Z) == pytest.approx(NormalDist().inv_cdf(1 - pval / 2), rel=1e-6, abs=1e-6)
    assert np.sign(Z) == np.sign(U - q.size * p.size / 2)
    if case == "copies":  # U = 0: Z = −mn/2 / σ with σ² = mn(N+1)/12 less the tie term of the 30 zeros
        m, n, N = 30, 20, 50
        var = m * n / 12 * ((N + 1) - (30**3 - 30) / (N * (N - 1)))
        assert Z == pytest.approx(-m * n / 2 / math.sqrt(var))
    assert mann_whitney(np.ones(3), np.ones(4)) == (6.0, 0.0)  # all tied: no information


def test_c_t_is_the_weighted_mean_of_kept_cells(rng):
    """C_T by hand: cells with < τm samples dropped, Z-scores weighted by the held-out fraction."""
    k = 4
    d_p, c_p = rng.uniform(size=200), rng.integers(0, k, size=200)
    d_q = rng.uniform(size=100)
    c_q = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])
    r = data_copying_test(d_p, c_p, d_q, c_q, k, tau=0.1)  # cells need ≥ 10 samples: cell 3 dropped
    assert [c["kept"] for c in r["per_cell"]] == [True, True, True, False]
    z = [mann_whitney(d_q[c_q == c], d_p[c_p == c])[1] for c in range(k)]
    w = [np.mean(c_p == c) for c in range(k)]
    want = sum(w[c] * z[c] for c in range(3)) / sum(w[:3])
    assert r["c_t"] == pytest.approx(want) and r["cells_kept"] == 3 and r["min_samples_per_cell"] == 10
    assert r["heldout_mass_kept"] == pytest.approx(sum(w[:3]))
    none = data_copying_test(d_p, c_p, d_q, c_q, k, tau=0.9)
    assert none["c_t"] is None and "no cell" in none["reading"]
    assert auto_cells(400, 1000, 64) == 8 and auto_cells(30, 1000, 64) == 1 and auto_cells(10**5, 10**5, 20) == 20


def _clusters(rng, n, centres, spread=1.0):
    lab = rng.integers(0, len(centres), size=n)
    return centres[lab] + spread * rng.normal(size=(n, centres.shape[1]))


@pytest.mark.parametrize("kind,sign", [("copies", -1), ("fresh", 0), ("noisy", 1), ("shifted", 1)])
def test_known_answers_on_gaussian_clusters(kind, sign):
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=6.0, size=(5, 8))
    T, P = _clusters(rng, 600, centres), _clusters(rng, 400, centres)
    if kind == "copies":  # planted copies of training points, a hair of noise
        Q = T[rng.integers(0, 600, size=1000)] + 1e-3 * rng.normal(size=(1000, 8))
    elif kind == "fresh":
        Q = _clusters(rng, 1000, centres)
    elif kind == "noisy":
        Q = _clusters(rng, 1000, centres, spread=1.6)
    else:  # "shifted": every cluster moved off the data by one standard deviation
        Q = _clusters(rng, 1000, centres + 1.0)
    cfg = MeasureConfig(device="cpu")
    index = prepare_train(T)
    m = measure(Q, index, cfg)
    ref = prepare_heldout(index, P, cfg, n_samples=1000)
    r = ref.copying(Q, m.d1)
    assert r["cells"] == 8 and r["cells_kept"] >= 4  # auto: 400 held-out / 50
    if sign < 0:
        assert r["c_t"] < -10 and r["reading"].startswith("data copying")
    elif sign > 0:
        assert r["c_t"] > 3 and r["reading"].startswith("underfitting")
    else:
        assert abs(r["c_t"]) < 3 and r["reading"].startswith("no evidence")
    # the held-out baseline: fresh points are never flagged here (clusters are wide, points far apart)
    assert ref.summary["n_heldout"] == 400 and ref.summary["n_memorized"] == 0
