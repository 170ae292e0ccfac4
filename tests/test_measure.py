"""Memorization measurement: known answers against a float64 NumPy brute force, Wilson interval, errors."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from diffmem.config import MeasureConfig
from diffmem.errors import UsageError
from diffmem.io import ImageSet
from diffmem.measure import measure, prepare_train, wilson_interval
from diffmem.measure import vectors as vectors_mod


def reference(samples: np.ndarray, train: np.ndarray, threshold: float = 1 / 3):
    """Independent brute force: float64 distances, duplicates removed by pairwise comparison."""
    a = samples.reshape(len(samples), -1).astype(np.float64)
    b = train.reshape(len(train), -1).astype(np.float64)
    canonical = np.array([next(j for j in range(i + 1) if np.array_equal(b[j], b[i])) for i in range(len(b))])
    keep = np.flatnonzero(canonical == np.arange(len(b)))
    d2 = ((a[:, None, :] - b[None, keep, :]) ** 2).sum(-1)
    nn1 = np.argmin(d2, axis=1)  # first minimum = lowest index on ties (keep is ascending)
    d2_without = d2.copy()
    d2_without[np.arange(len(a)), nn1] = np.inf
    nn2 = np.argmin(d2_without, axis=1)
    d1 = np.sqrt(d2[np.arange(len(a)), nn1])
    dd2 = np.sqrt(d2[np.arange(len(a)), nn2])
    return keep[nn1], keep[nn2], d1, dd2, d1 / dd2 < threshold


def assert_matches_reference(m, samples, train, threshold=1 / 3):
    nn1, nn2, d1, d2, mem = reference(samples, train, threshold)
    np.testing.assert_array_equal(m.nn1, nn1)
    np.testing.assert_array_equal(m.nn2, nn2)
    np.testing.assert_allclose(m.d1, d1, rtol=1e-12, atol=0)
    np.testing.assert_allclose(m.d2, d2, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(m.memorized, mem)


@pytest.fixture
def train(rng):
    return rng.integers(0, 256, size=(300, 3, 4, 4), dtype=np.uint8)


def test_exact_copies_are_memorized_with_ratio_zero(train):
    samples = train[[5, 17, 299]]
    m = measure(samples, train)
    np.testing.assert_array_equal(m.nn1, [5, 17, 299])
    np.testing.assert_array_equal(m.d1, 0.0)
    np.testing.assert_array_equal(m.ratio, 0.0)
    assert m.memorized.all()
    assert m.summary["n_exact_copies"] == 3 and m.summary["memorization_ratio"] == 1.0
    assert_matches_reference(m, samples, train)


def test_noisy_copies_midpoints_and_fresh_noise(train, rng):
    noisy = np.clip(train[:40].astype(int) + rng.integers(-3, 4, size=train[:40].shape), 0, 255).astype(np.uint8)
    mid = ((train[40:80].astype(int) + train[80:120].astype(int)) // 2).astype(np.uint8)
    fresh = rng.integers(0, 256, size=(40, 3, 4, 4), dtype=np.uint8)
    samples = np.concatenate([noisy, mid, fresh])
    m = measure(samples, train)
    assert_matches_reference(m, samples, train)
    assert m.memorized[:40].all()  # small noise: still memorized
    np.testing.assert_array_equal(m.nn1[:40], np.arange(40))
    assert not m.memorized[40:].any()  # midpoints and fresh noise: not memorized
    assert (m.ratio[40:80] > 0.85).all()  # a midpoint is about equally far from its two parents
    assert {frozenset(p) for p in zip(m.nn1[40:80], m.nn2[40:80])} == \
        {frozenset((i, i + 40)) for i in range(40, 80)}
    assert m.summary["n_memorized"] == 40 and m.summary["n_samples"] == 120


def test_near_ties_and_exact_ties_resolved_exactly(rng):
    d = 3 * 32 * 32  # large vectors: float32 scores carry errors of order 10 here
    q = np.full((1, d), 128, np.uint8)
    train = np.repeat(q, 12, axis=0).astype(np.int64)
    train[:, :400] += 40  # every row is far from q ...
    train[0, 500] += 3  # row 0: squared distance S + 9
    train[1, 501] += 2  # row 1: S + 4   (the nearest)
    train[2, 502] -= 2  # row 2: S + 4, pixels differ from row 1: exact tie, lower index wins
    train[3, 503] += 2  # row 3: S + 4 as well
    train[4:, 504] += 3 + np.arange(8) % 3  # decoys at S + 9 … S + 25
    train = train.astype(np.uint8)
    m = measure(q, train, MeasureConfig(candidates=2))
    assert (m.nn1[0], m.nn2[0]) == (1, 2)
    s = 400 * 40**2
    assert m.d1[0] ** 2 == s + 4 and m.d2[0] ** 2 == s + 4
    assert_matches_reference(m, q, train)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_many_near_equidistant_rows_need_the_widened_rerank(rng, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    d = 3 * 32 * 32
    base = rng.integers(60, 200, size=(1, d)).astype(np.int64)
    train = np.repeat(base, 60, axis=0)
    for i in range(60):  # 60 rows within a few squared units of each other around the query
        train[i, rng.choice(d, 50, replace=False)] += 1 + (i % 2)
    train = train.astype(np.uint8)
    samples = base.astype(np.uint8)
    m = measure(samples, train, MeasureConfig(candidates=3, backend=backend))
    assert m.summary["n_fallback"] == 1  # the float32 bound cannot certify three candidates here
    assert_matches_reference(m, samples, train)


def test_duplicates_in_training_set(train):
    train = train.copy()
    train[[50, 60, 70]] = train[10]  # one group of 4 identical images
    train[200:230] = train[100]  # more copies than candidates: 31 identical images
    samples = train[[10, 100, 230]]
    m = measure(samples, train, MeasureConfig(candidates=4))
    assert m.summary["duplicate_groups"] == 2 and m.summary["duplicate_images"] == 3 + 30
    assert m.summary["n_train"] == 300 and m.summary["n_train_distinct"] == 267
    np.testing.assert_array_equal(m.nn1, [10, 100, 230])
    np.testing.assert_array_equal(m.nn1_copies, [4, 31, 1])
    assert m.memorized.all() and (m.d2 > 0).all()  # NN2 differs in pixels: never 0/0
    assert not np.isin(m.nn2[:2], [50, 60, 70, *range(200, 230)]).any()
    assert_matches_reference(m, samples, train)


def test_hash_collisions_are_split_by_exact_comparison(train, monkeypatch):
    train = train.copy()
    train[7] = train[3]
    real = vectors_mod._row_hashes_and_norms

    def colliding(v):
        h, n = real(v)
        return np.zeros_like(h), n  # every row in one hash bucket

    monkeypatch.setattr(vectors_mod, "_row_hashes_and_norms", colliding)
    index = prepare_train(train[:20])
    expected = np.arange(20)
    expected[7] = 3
    np.testing.assert_array_equal(index.canonical, expected)
    assert index.duplicate_groups == 1


def test_float_features_and_negative_zero(rng):
    train = rng.normal(size=(200, 24))
    train[9] = 0.0
    train[11] = -0.0  # equal values: one duplicate group
    samples = np.concatenate([train[[3, 11]], rng.normal(size=(30, 24))])
    m = measure(samples, train)
    assert m.summary["duplicate_groups"] == 1 and m.summary["distance"] == "l2 on feature vectors"
    assert m.nn1[1] == 9 and m.d1[1] == 0.0 and m.ratio[0] == 0.0
    assert_matches_reference(m, samples, train)
    m32 = measure(samples.astype(np.float32), train.astype(np.float32))
    assert_matches_reference(m32, samples.astype(np.float32), train.astype(np.float32))


def test_clear_errors(train):
    with pytest.raises(UsageError, match="at least two distinct training images"):
        measure(train[:3], train[:1])
    with pytest.raises(UsageError, match="at least two distinct"):
        measure(train[:3], np.stack([train[0], train[0]]))
    with pytest.raises(UsageError, match=r"--samples: items have shape \(1, 4, 4\) but --train items have \(3, 4, 4\)"):
        measure(train[:3, :1], train)
    with pytest.raises(UsageError, match=r"^measure.threshold: 0.0 is not valid; expected a number in \(0, 1\]"):
        measure(train[:3], train, MeasureConfig(threshold=0.0))
    with pytest.raises(UsageError, match=r"^measure.memory_mb: 8 is not valid; expected a working-memory budget of "
                                         r"at least 16 MiB$"):
        measure(train[:3], train, MeasureConfig(memory_mb=8))
    with pytest.raises(UsageError, match="both uint8 pixels or both float"):
        measure(train[:3].astype(np.float64), train)
    with pytest.raises(UsageError, match="NaN or inf"):
        measure(np.full((2, 3), np.nan), np.eye(3))


def test_summary_counts_interval_and_warning(train, caplog):
    samples = np.concatenate([train[:30], np.full((10, 3, 4, 4), 7, np.uint8)])
    m = measure(ImageSet(samples, seeds=np.arange(100, 140)), train, MeasureConfig(threshold=0.25, confidence=0.9))
    s = m.summary
    assert (s["n_samples"], s["n_memorized"], s["threshold"], s["confidence"]) == (40, 30, 0.25, 0.9)
    # the interval is Wilson's at the configured confidence (scipy's implementation as the reference)
    ref = binomtest(30, 40).proportion_ci(confidence_level=0.9, method="wilson")
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert "fewer than 1000" in s["warning"] and "fewer than 1000" in caplog.text
    np.testing.assert_array_equal(m.seeds, np.arange(100, 140))
    assert set(m.table()) == {"sample_index", "seeds", "nn1", "nn2", "d1", "d2", "ratio", "memorized", "nn1_copies"}


def wilson_reference(k, n, z):
    # the interval's ends are the roots p of (k/n − p)² = z² p (1 − p) / n
    a, b, c = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
    r = math.sqrt(b * b - 4 * a * c)
    return (-b - r) / (2 * a), (-b + r) / (2 * a)


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile (printed tables: 1.95996)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (920, 1000), (1000, 1000), (1, 1)])
def test_wilson_interval_against_quadratic_roots(k, n):
    low, high = wilson_interval(k, n)
    ref = wilson_reference(k, n, Z95)
    assert low == pytest.approx(ref[0], abs=1e-12) and high == pytest.approx(ref[1], abs=1e-12)


def test_wilson_interval_textbook_values():
    # "Two-sided confidence intervals for the single proportion" (Statistics in Medicine, 1998), table I,
    # score method without continuity correction, 95 %: published to four decimals
    published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                 (1, 29): (0.0061, 0.1718)}
    for (k, n), (lo, hi) in published.items():
        got = wilson_interval(k, n)
        assert (round(got[0], 4), round(got[1], 4)) == (lo, hi), (k, n, got)
    # k = 0: the upper end is z²/(n + z²) (the quadratic's root with k = 0), the lower end 0
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z95**2 / (10 + Z95**2)), abs=1e-15)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_wilson_interval_matches_scipy_at_every_confidence(confidence):
    for k, n in [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (30, 40), (920, 1000), (4_999, 10_000)]:
        ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        assert wilson_interval(k, n, confidence) == pytest.approx((ref.low, ref.high), abs=1e-12), (k, n)


@pytest.mark.parametrize("k,n,confidence", [(1, 0, 0.95), (0, 0, 0.95), (11, 10, 0.95), (3, 10, 0.0), (3, 10, 1.0),
                                            (3, 10, float("nan"))])
def test_wilson_interval_refuses_what_has_no_interval(k, n, confidence):
    with pytest.raises(UsageError):
        wilson_interval(k, n, confidence)
