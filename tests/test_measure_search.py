"""The search: blocked, streamed, FAISS, feature-vector and one-shot results are identical; the bound holds."""

import sys

import numpy as np
import pytest
import torch

from diffmem.config import MeasureConfig
from diffmem.io import ImageSet
from diffmem.measure import StreamingMeasurer, knn, measure, prepare_train, search
from diffmem.measure.exact import score_error_bound
from diffmem.measure.vectors import sq_norms


@pytest.fixture
def data(rng):
    """Training images with duplicates and near-duplicates; samples that copy, perturb and miss them."""
    train = rng.integers(0, 256, size=(700, 3, 8, 8), dtype=np.uint8)
    train[600:610] = train[5]
    train[650] = np.clip(train[6].astype(int) + 1, 0, 255)
    noisy = np.clip(train[:150].astype(int) + rng.integers(-20, 21, size=(150, 3, 8, 8)), 0, 255)
    samples = np.concatenate([train[100:250], noisy.astype(np.uint8), train[[5, 6, 650]],
                              rng.integers(0, 256, size=(97, 3, 8, 8), dtype=np.uint8)])
    return samples, train


def same(a, b):
    for k in ("nn1", "nn2", "d1", "d2", "ratio", "memorized", "seeds"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    for k in ("memorization_ratio", "ci_low", "ci_high", "n_memorized", "duplicate_groups"):
        assert a.summary[k] == b.summary[k], k


def test_small_blocks_equal_one_shot(data, monkeypatch):
    samples, train = data
    one = measure(samples, train)
    assert one.summary["duplicate_groups"] == 1
    monkeypatch.setattr(knn, "MAX_BLOCK_ROWS", 64)  # 11 training blocks, 8 query chunks
    monkeypatch.setattr(knn, "MAX_QUERY_ROWS", 50)
    same(measure(samples, train), one)


def test_streamed_batches_equal_one_shot(data):
    samples, train = data
    seeds = np.arange(1000, 1000 + len(samples))
    one = measure(ImageSet(samples, seeds=seeds), train)
    s = StreamingMeasurer(train, MeasureConfig())
    for lo, hi in [(0, 1), (1, 120), (120, 121), (121, 300)]:
        s.add(samples[lo:hi], seeds=seeds[lo:hi])
    s.add(ImageSet(samples[300:], seeds=seeds[300:]))
    same(s.result(), one)


def test_feature_vectors_equal_pixels(data):
    samples, train = data
    one = measure(samples, train)
    feats = measure(samples.reshape(len(samples), -1).astype(np.float64),
                    train.reshape(len(train), -1).astype(np.float64))
    same(feats, one)


def test_faiss_backend_gives_identical_neighbours(data):
    pytest.importorskip("faiss")
    samples, train = data
    same(measure(samples, train, MeasureConfig(backend="faiss")), measure(samples, train))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_equals_cpu(data):
    samples, train = data
    same(measure(samples, train, MeasureConfig(device="cuda")), measure(samples, train, MeasureConfig(device="cpu")))


def test_candidate_count_does_not_change_results(data):
    samples, train = data
    one = measure(samples, train)
    for k in (2, 3, 50):
        same(measure(samples, train, MeasureConfig(candidates=k)), one)


def test_score_error_bound_covers_float32_errors(rng):
    # real float32 scores of the fast stage against exact integer scores, at CIFAR size
    train = rng.integers(0, 256, size=(512, 3072), dtype=np.uint8)
    q = rng.integers(0, 256, size=(64, 3072), dtype=np.uint8)
    index = prepare_train(train)
    ids, score = knn.fast_candidates(q, index, 512, torch.device("cpu"), 64)
    dots = q.astype(np.float64) @ train.astype(np.float64).T  # exact: integer sums far below 2^53
    exact = index.sq_norms[ids] - 2.0 * np.take_along_axis(dots, ids, 1)
    err = np.abs(score.astype(np.float64) - exact).max(axis=1)
    bound = score_error_bound(np.sqrt(sq_norms(q)), index.max_norm, 3072)
    assert (err <= bound).all()
    assert err.max() > 0  # float32 really rounds here, so the bound is doing work
    assert bound.max() < 1e-3 * index.sq_norms.max()  # and it is tight enough to certify most queries


def test_faiss_distances_within_bound(rng):
    pytest.importorskip("faiss")
    train = rng.integers(0, 256, size=(512, 3072), dtype=np.uint8)
    q = rng.integers(0, 256, size=(64, 3072), dtype=np.uint8)
    index = prepare_train(train)
    ids, d = knn.faiss_candidates(q, index, 512)
    dots = q.astype(np.float64) @ train.astype(np.float64).T
    exact = sq_norms(q)[:, None] + index.sq_norms[ids] - 2.0 * np.take_along_axis(dots, ids, 1)
    err = np.abs(d.astype(np.float64) - exact).max(axis=1)
    bound = score_error_bound(np.sqrt(sq_norms(q)), index.max_norm, 3072, float32_norms=True)
    assert (err <= bound).all() and err.max() > 0


def test_search_returns_canonical_ids_and_exact_squared_distances(data):
    samples, train = data
    index = prepare_train(train)
    nn = search(samples.reshape(len(samples), -1), index)
    assert nn.ids.shape == (len(samples), 2) and nn.sq_dist.dtype == np.float64
    assert np.isin(nn.ids, index.unique_ids).all()
    np.testing.assert_array_equal(nn.sq_dist, np.round(nn.sq_dist))  # integers for uint8 pixels


def test_missing_faiss_is_a_clear_usage_error(data, monkeypatch):
    from diffmem.errors import UsageError

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    samples, train = data
    with pytest.raises(UsageError, match=r"--backend faiss: needs the faiss package, which is not installed"):
        measure(samples, train, MeasureConfig(backend="faiss"))
