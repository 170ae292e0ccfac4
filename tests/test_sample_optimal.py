"""The closed-form optimal denoiser against a brute-force float64 NumPy reference, and its samples.

Reference: D*(x; σ) = Σ_i w_i y_i with w = softmax_i(−‖x − y_i‖² / 2σ²), computed from explicit
differences x − y_i in float64 (max-subtracted softmax), over the images carrying the label when
conditional. Memorization is checked by brute force: d₁/d₂ < 1/3 over all training images.
"""

import numpy as np
import pytest
import torch

from diffmem.config import SampleConfig
from diffmem.errors import UsageError
from diffmem.sample import OptimalDenoiser, generate

SIGMAS = [0.002, 0.01, 0.1, 0.5, 2.0, 10.0, 80.0]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)[:, None]  # 0..16 → 0..255, N×1×8×8
    return images, d.target.astype(np.int64)


def reference_denoise(x: np.ndarray, sigma: float, images: np.ndarray) -> np.ndarray:
    y = images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1
    xf = x.reshape(len(x), -1).astype(np.float64)
    sq = ((xf[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # N_x × N_y
    logits = -sq / (2 * sigma**2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return (w @ y).reshape(x.shape)


def memorized_fraction(samples: np.ndarray, train: np.ndarray, threshold: float = 1 / 3) -> float:
    a = samples.reshape(len(samples), -1).astype(np.float64)
    b = train.reshape(len(train), -1).astype(np.float64)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    d.sort(1)
    return float(np.mean(d[:, 0] < threshold * d[:, 1]))


def _noisy(images: np.ndarray, sigma: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = images[rng.integers(len(images), size=n)].astype(np.float64) / 127.5 - 1
    return y + sigma * rng.standard_normal(y.shape)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_optimum_equals_brute_force_float64(sigma, rng):
    images = rng.integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    x = np.concatenate([_noisy(images, sigma, 12, 1), 2 * rng.standard_normal((4, 1, 4, 4))])
    D = OptimalDenoiser(images, block_size=7)
    out = D(torch.tensor(x), torch.tensor(sigma, dtype=torch.float64))
    ref = reference_denoise(x, sigma, images)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-10)


def test_streaming_equals_dense_and_float32_agrees(digits):
    images = digits[0][:300]
    x = torch.tensor(np.concatenate([_noisy(images, s, 8, i) for i, s in enumerate(SIGMAS)]))
    sigma = torch.tensor(np.repeat(SIGMAS, 8))  # one σ per sample
    dense = OptimalDenoiser(images, block_size=len(images))(x, sigma)
    for rows in (1, 7, 64):
        np.testing.assert_allclose(OptimalDenoiser(images, block_size=rows)(x, sigma).numpy(), dense.numpy(),
                                   rtol=0, atol=1e-12)
    by_memory = OptimalDenoiser(images, memory_mb=0.01)  # a few rows per block
    assert by_memory._rows_per_block(len(x)) < 30
    np.testing.assert_allclose(by_memory(x, sigma).numpy(), dense.numpy(), rtol=0, atol=1e-12)
    ref = np.concatenate([reference_denoise(x[i:i + 8].numpy(), s, images) for i, s in zip(range(0, 56, 8), SIGMAS)])
    np.testing.assert_allclose(dense.numpy(), ref, rtol=0, atol=1e-10)
    f32 = OptimalDenoiser(images, dtype=torch.float32, block_size=50)(x.float(), sigma.float())
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), dense.numpy(), rtol=0, atol=1e-4)


def test_no_overflow_far_from_the_data_at_small_sigma(digits):
    images = digits[0][:100]
    x = 80 * np.random.default_rng(3).standard_normal((5, 1, 8, 8))
    out = OptimalDenoiser(images, block_size=16)(torch.tensor(x), 0.002)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), reference_denoise(x, 0.002, images), rtol=0, atol=1e-10)


def test_conditional_optimum_sums_over_the_label(digits):
    images, labels = digits[0][:200], digits[1][:200]
    D = OptimalDenoiser(images, labels, label_dim=10, block_size=9)
    assert D.label_dim == 10 and D.in_channels == 1 and D.resolution == 8 and D.sigma_max == np.inf
    x = _noisy(images, 1.0, 30, 4)
    want = np.arange(30) % 10
    out = D(torch.tensor(x), torch.full((30,), 1.0, dtype=torch.float64), torch.tensor(want)).numpy()
    for c in range(10):
        rows = want == c
        np.testing.assert_allclose(out[rows], reference_denoise(x[rows], 1.0, images[labels == c]), rtol=0,
                                   atol=1e-10)
    with pytest.raises(UsageError, match="labels"):
        D(torch.tensor(x), 1.0)
    with pytest.raises(UsageError, match="class 3 has no training images"):
        OptimalDenoiser(images[labels != 3], labels[labels != 3], label_dim=10)(torch.tensor(x[:1]), 1.0,
                                                                                 torch.tensor([3]))
    with pytest.raises(UsageError, match="sigma"):
        D(torch.tensor(x[:1]), 0.0, torch.tensor([0]))


@pytest.mark.parametrize("labels", ["true", "unique"])
def test_conditional_optimum_of_small_classes_equals_brute_force(digits, labels):
    images = digits[0][:120]
    lab = digits[1][:120] if labels == "true" else np.random.default_rng(0).permutation(120)
    k = int(lab.max()) + 1
    D = OptimalDenoiser(images, lab, label_dim=k)  # classes small enough for the gathered (padded) path
    x = _noisy(images, 0.3, 40, 5)
    want = np.random.default_rng(1).integers(0, k, 40)
    sigma = torch.tensor(np.linspace(0.002, 80, 40))
    out = D(torch.tensor(x), sigma, torch.tensor(want)).numpy()
    for i in range(40):
        ref = reference_denoise(x[i:i + 1], float(sigma[i]), images[lab == want[i]])
        np.testing.assert_allclose(out[i:i + 1], ref, rtol=0, atol=1e-10)
    if labels == "unique":  # one image per class: D* is that image at every σ
        np.testing.assert_allclose(out, images[np.argsort(lab)[want]] / 127.5 - 1, rtol=0, atol=1e-12)
    with pytest.raises(UsageError, match=rf"labels: {k} is not valid; expected 0..{k - 1}"):
        D(torch.tensor(x[:1]), 1.0, torch.tensor([k]))


def test_optimum_samples_of_64_digits_are_memorized(digits):
    images = digits[0][:64]
    assert len(np.unique(images.reshape(64, -1), axis=0)) == 64  # no duplicates: NN₂ is a different image
    s = generate(OptimalDenoiser(images), 500, 0, SampleConfig(batch=250))
    assert memorized_fraction(s.images, images) >= 0.99
    # fresh noise is not memorized: the check above can fail
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 1, 8, 8), dtype=np.uint8)
    assert memorized_fraction(noise, images) == 0.0
    assert len(np.unique(s.images.reshape(500, -1), axis=0)) > 40  # samples spread over the training set


def test_conditional_optimum_samples_copy_images_with_the_requested_label(digits):
    images, labels = digits[0][:200], digits[1][:200]
    D = OptimalDenoiser(images, labels, label_dim=10)
    want = np.arange(60) % 10
    for given in (want, None):
        s = generate(D, 60, 7, SampleConfig(batch=25), labels=given)
        if given is not None:
            assert s.labels.tolist() == want.tolist()
        else:
            assert set(s.labels.tolist()) <= set(range(10)) and len(set(s.labels.tolist())) > 5
        for img, lab in zip(s.images, s.labels):
            same = np.all(images.reshape(200, -1) == img.reshape(-1), axis=1)
            assert same.any() and set(labels[same].tolist()) == {lab}


def test_sampling_a_datasets_optimum_draws_labels_from_its_classes_and_copies_their_images(digits):
    """sample_optimum (what `diffmem sample --optimal` and every sweep job use): conditional on the labels when the
    dataset has label classes, labels drawn only from classes with images; each sample is a training image of its
    own label (an exact copy after quantisation), or of any label when unconditional."""
    from diffmem.io import ImageSet
    from diffmem.sample.optimal import sample_optimum

    images, labels = digits[0][:40], digits[1][:40] % 5  # classes 0..4 present; label_classes 6: class 5 empty
    train = ImageSet(images=images, labels=labels)
    cfg = SampleConfig(steps=18, device="cpu")
    flat = images.reshape(len(images), -1)
    s = sample_optimum(train, 6, 30, 7, cfg)
    assert s.images.shape == (30, 1, 8, 8) and s.seeds.tolist() == list(range(7, 37))
    assert set(s.labels.tolist()) <= {0, 1, 2, 3, 4} and len(set(s.labels.tolist())) >= 3
    for img, lab in zip(s.images.reshape(30, -1), s.labels):
        same = np.flatnonzero((flat == img).all(1))
        assert same.size and labels[same[0]] == lab  # a copy of a training image that carries its label
    u = sample_optimum(train, 0, 10, 7, cfg)  # unconditional: no labels, still copies
    assert u.labels.tolist() == [-1] * 10
    assert all((flat == img).all(1).any() for img in u.images.reshape(10, -1))
    with pytest.raises(UsageError, match="labels: none given for a conditional optimum"):
        sample_optimum(ImageSet(images=images), 6, 2, 0, cfg)
