"""σ schedule, Heun/Euler solvers and per-sample seeds, against closed forms.

The Gaussian tests use data y ~ N(μ, Σ), whose optimal denoiser is linear,
D(x; σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ), and whose probability-flow ODE has a closed-form solution: in the
eigenbasis Σ = Q diag(λ) Qᵀ each coordinate of z = Qᵀ(x − μ) scales as √(λ + σ²), so the flow from σ_T
to 0 maps x_T to μ + Q diag(√(λ / (λ + σ_T²))) Qᵀ (x_T − μ).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffmem.config import SampleConfig
from diffmem.errors import UsageError
from diffmem.sample import SeedNoise, edm_sigmas, euler, generate, heun, sample_seeds, schedule_for

MU = np.array([0.5, -1.0, 2.0, 0.0])
LAMBDA = np.array([0.05, 0.3, 1.0, 2.5])  # eigenvalues of Σ


def _sigma_matrix() -> tuple[np.ndarray, np.ndarray]:
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))
    return q @ np.diag(LAMBDA) @ q.T, q


class GaussianDenoiser:
    """The exact denoiser of N(μ, Σ) on 1×2×2 images (flattened to 4 values)."""

    in_channels, resolution, label_dim = 1, 2, 0

    def __init__(self, sigma_min: float = 0.0, sigma_max: float = math.inf):
        self.Sigma = torch.tensor(_sigma_matrix()[0])
        self.mu = torch.tensor(MU)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.calls: list[float] = []

    def __call__(self, x, sigma, labels=None):
        s = float(sigma.reshape(-1)[0])
        self.calls.append(s)
        xf = x.reshape(x.shape[0], -1).to(torch.float64) - self.mu
        A = self.Sigma @ torch.linalg.inv(self.Sigma + s**2 * torch.eye(4, dtype=torch.float64))
        return (self.mu + xf @ A.T).reshape(x.shape).to(x.dtype)


def _flow_map(x_T: np.ndarray, sigma_T: float) -> np.ndarray:
    _, q = _sigma_matrix()
    scale = np.sqrt(LAMBDA / (LAMBDA + sigma_T**2))
    return MU + (x_T - MU) @ (q @ np.diag(scale) @ q.T).T


def _start(n: int, sigma_T: float, seed: int = 0) -> np.ndarray:
    """x_T drawn from the exact noisy marginal N(μ, Σ + σ_T² I)."""
    Sigma, _ = _sigma_matrix()
    L = np.linalg.cholesky(Sigma + sigma_T**2 * np.eye(4))
    return MU + np.random.default_rng(seed).standard_normal((n, 4)) @ L.T


def test_edm_schedule_matches_formula():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s.dtype == torch.float64 and s.shape == (19,)
    np.testing.assert_allclose(s[:-1].numpy(), ref, rtol=1e-14)
    assert s[0] == 80.0 and abs(float(s[-2]) - 0.002) < 1e-15 and s[-1] == 0.0
    assert edm_sigmas(1, 0.002, 80.0, 7.0).tolist() == [80.0, 0.0]
    with pytest.raises(UsageError, match="steps"):
        edm_sigmas(0)


def test_schedule_respects_denoiser_sigma_range():
    s = schedule_for(GaussianDenoiser(sigma_min=0.02, sigma_max=10.0), 10, 0.002, 80.0, 7.0)
    assert float(s[0]) == pytest.approx(10.0, rel=1e-14) and float(s[-2]) == pytest.approx(0.02, rel=1e-14)
    with pytest.raises(UsageError, match="supported range"):
        heun(GaussianDenoiser(sigma_max=10.0), torch.zeros(1, 1, 2, 2), edm_sigmas(5))


def test_churn_stays_inside_the_denoiser_sigma_range():
    D = GaussianDenoiser(sigma_max=10.0)
    noise = SeedNoise(np.arange(3))
    heun(D, torch.zeros(3, 1, 2, 2), schedule_for(D, 8, 0.002, 80.0, 7.0), randn_like=noise.randn_like,
         S_churn=100.0)
    assert max(D.calls) == pytest.approx(10.0, rel=1e-12)  # t̂ = (1 + γ)σ₀ would be 14.1
    sigma_1 = float(schedule_for(D, 8, 0.002, 80.0, 7.0)[1])
    assert sorted(D.calls)[-2] == pytest.approx(math.sqrt(2) * sigma_1, rel=1e-12)  # step 1 churned up by γ = √2 − 1


def _max_error(solver, steps: int, x_T: np.ndarray) -> float:
    x0 = solver(GaussianDenoiser(), torch.tensor(x_T).reshape(-1, 1, 2, 2), edm_sigmas(steps))
    return float(np.abs(x0.reshape(-1, 4).numpy() - _flow_map(x_T, 80.0)).max())


def test_heun_follows_the_exact_flow_with_second_order_convergence():
    D = GaussianDenoiser()
    x0 = heun(D, torch.zeros(3, 1, 2, 2, dtype=torch.float32), edm_sigmas(18))
    assert x0.dtype == torch.float64 and len(D.calls) == 35  # float64 state, 2·18 − 1 evaluations
    D_euler = GaussianDenoiser()
    euler(D_euler, torch.zeros(3, 1, 2, 2), edm_sigmas(18))
    assert len(D_euler.calls) == 18
    x_T = _start(200, 80.0)
    h50, h200 = _max_error(heun, 50, x_T), _max_error(heun, 200, x_T)
    e50, e200 = _max_error(euler, 50, x_T), _max_error(euler, 200, x_T)
    assert h200 < 2e-3, h200
    assert 10 < h50 / h200 < 25  # second order: 4× the steps, ~16× less error
    assert 2.5 < e50 / e200 < 6  # first order: ~4× less error
    assert e200 > 10 * h200


def test_heun_reproduces_gaussian_mean_and_covariance():
    Sigma, _ = _sigma_matrix()
    n = 20000
    x0 = heun(GaussianDenoiser(), torch.tensor(_start(n, 80.0)).reshape(-1, 1, 2, 2), edm_sigmas(128))
    y = x0.reshape(n, 4).numpy()
    assert np.abs(y.mean(0) - MU).max() < 5 * np.sqrt(LAMBDA.max() / n)
    assert np.abs(np.cov(y.T) - Sigma).max() < 5 * LAMBDA.max() * np.sqrt(2 / n)


def test_heun_with_churn_keeps_the_gaussian_marginal():
    Sigma, _ = _sigma_matrix()
    n = 20000
    x_T = _start(n, 80.0)
    gen = torch.Generator().manual_seed(0)
    x0 = heun(GaussianDenoiser(), torch.tensor(x_T).reshape(-1, 1, 2, 2), edm_sigmas(128),
              randn_like=lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype),
              S_churn=40.0, S_min=0.05, S_max=50.0)
    y = x0.reshape(n, 4).numpy()
    assert np.abs(y - _flow_map(x_T, 80.0)).max() > 0.1  # churn changed the trajectories
    assert np.abs(y.mean(0) - MU).max() < 5 * np.sqrt(LAMBDA.max() / n)
    assert np.abs(np.cov(y.T) - Sigma).max() < 0.04 * LAMBDA.max()


def test_seed_noise_rows_come_from_their_own_generators():
    noise = SeedNoise([5, 9]).randn((3,))
    for row, seed in zip(noise, [5, 9]):
        ref = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.equal(row, ref)


class ScaledIdentity:
    """Exact denoiser of N(0, I) data, elementwise (so batch composition cannot change rounding); with
    labels it is N(label, I): D = label + (x − label) / (1 + σ²)."""

    in_channels, resolution, sigma_min, sigma_max = 1, 3, 0.0, math.inf

    def __init__(self, label_dim: int = 0):
        self.label_dim = label_dim

    def __call__(self, x, sigma, labels=None):
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        m = torch.zeros_like(x) if labels is None else labels.reshape(-1, 1, 1, 1).to(x.dtype).expand_as(x)
        return m + (x - m) / (1 + s2)


@pytest.mark.parametrize("label_dim", [0, 5])
def test_samples_do_not_depend_on_batch_size(label_dim):
    n = 23
    cfg = SampleConfig(steps=8, S_churn=5.0, sigma_max=10.0)
    D = ScaledIdentity(label_dim)
    seeds = 100 + np.arange(n)
    ref, ref_labels = sample_seeds(D, seeds, cfg)
    for batch in (1, 7):
        parts = [sample_seeds(D, seeds[i:i + batch], cfg) for i in range(0, n, batch)]
        assert torch.equal(torch.cat([p[0] for p in parts]), ref)
        if label_dim:
            assert torch.equal(torch.cat([p[1] for p in parts]), ref_labels)
    images = {b: generate(D, n, 100, SampleConfig(steps=8, S_churn=5.0, sigma_max=10.0, batch=b)) for b in (1, 7, n)}
    for b in (1, 7):
        assert np.array_equal(images[b].images, images[n].images)
        assert np.array_equal(images[b].labels, images[n].labels)
    assert images[n].seeds.tolist() == list(range(100, 100 + n))
    # sample 0 of the seed-100 run is sample 3 of the seed-97 run
    shifted = generate(D, 5, 97, cfg)
    assert np.array_equal(shifted.images[3], images[n].images[0])


def test_labels_are_drawn_uniformly_from_seeds_or_given():
    D = ScaledIdentity(label_dim=5)
    cfg = SampleConfig(steps=6, sigma_max=10.0)
    x, drawn = sample_seeds(D, np.arange(2000), cfg)
    counts = np.bincount(drawn.numpy(), minlength=5)
    assert counts.min() > 320 and counts.max() < 480  # 400 ± 4 standard deviations
    # the solver passed each sample's label: the data N(label, I) ends near its label
    assert np.abs(x.mean((1, 2, 3)).numpy() - drawn.numpy()).mean() < 0.5
    given, _ = sample_seeds(D, np.arange(10), cfg, labels=torch.full((10,), 4))
    same_noise, _ = sample_seeds(D, np.arange(10), cfg)
    assert not torch.equal(given, same_noise)
    s = generate(D, 10, 0, cfg, labels=2)
    assert s.labels.tolist() == [2] * 10
    with pytest.raises(UsageError, match="labels"):
        generate(D, 3, 0, cfg, labels=[0, 7, 1])


def test_generate_quantises_and_reports_unlabeled():
    s = generate(ScaledIdentity(), 4, 0, SampleConfig(steps=4, sigma_max=5.0))
    assert s.images.dtype == np.uint8 and s.images.shape == (4, 1, 3, 3)
    assert s.labels.tolist() == [-1] * 4 and s.seeds.dtype == np.int64


@pytest.mark.parametrize("kw, match", [({"steps": 0}, "steps"), ({"solver": "rk4"}, "solver"),
                                       ({"sigma_min": 0.0}, "sigma_min"), ({"batch": 0}, "batch")])
def test_bad_sampler_settings_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        generate(ScaledIdentity(), 2, 0, SampleConfig(**kw))
    with pytest.raises(UsageError, match="n:"):
        generate(ScaledIdentity(), 0, 0)
    with pytest.raises(UsageError, match="seed:"):
        generate(ScaledIdentity(), 2, -1)


def test_drawn_labels_come_only_from_the_given_classes_and_keep_per_sample_seeds():
    from diffmem.sample.labels import present_classes

    class Conditional(torch.nn.Module):  # a denoiser that returns its labels as a constant image
        label_dim, resolution, in_channels, sigma_min, sigma_max = 5, 2, 1, 0.0, float("inf")

        def forward(self, x, sigma, labels=None):
            return (labels.to(x.dtype) / 10).reshape(-1, 1, 1, 1).expand_as(x)

    train_labels = np.array([3, 1, 3, 1, -1])
    classes = present_classes(train_labels)
    assert classes.tolist() == [1, 3] and present_classes(np.array([-1, -1])) is None
    cfg = SampleConfig(steps=2)
    a = generate(Conditional(), 40, 0, cfg, classes=classes)
    assert set(a.labels.tolist()) == {1, 3}
    b = generate(Conditional(), 10, 30, dataclasses.replace(cfg, batch=3), classes=classes)
    assert np.array_equal(b.labels, a.labels[30:]) and np.array_equal(b.images, a.images[30:])
    with pytest.raises(UsageError, match="classes"):
        generate(Conditional(), 4, 0, cfg, classes=np.array([7]))


def test_one_label_rule_for_every_denoiser_and_request():
    """Labels lie in 0..label_dim − 1, one per item: the same check and message wherever labels enter sampling."""
    from diffmem.sample import OptimalDenoiser
    from diffmem.sample.labels import as_labels, check_label, draw_labels

    assert as_labels(np.array([0, 4, 2]), 3, 5).tolist() == [0, 4, 2]
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 2, 2), dtype=np.uint8)
    D = OptimalDenoiser(images, np.array([0, 1, 2, 0, 1, 2]), label_dim=3)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    outside = [  # each way labels reach a sampler, with labels outside 0..2
        lambda: as_labels([0, 3], 2, 3),
        lambda: OptimalDenoiser(images, np.array([0, 1, 2, 0, 1, 3]), label_dim=3),  # training labels
        lambda: D(x, 1.0, torch.tensor([0, 3])),  # at sampling time
        lambda: generate(D, 2, 0, SampleConfig(steps=2), labels=[0, 3]),
        lambda: draw_labels(SeedNoise([0, 1]), 3, labels=torch.tensor([0, 3])),
    ]
    for call in outside:
        with pytest.raises(UsageError, match=r"^labels: values in \[0, 3\] are not valid; expected 0..2 \(label_dim 3"):
            call()
    with pytest.raises(UsageError, match=r"^labels: -1 is not valid; expected 0..2"):
        generate(D, 2, 0, SampleConfig(steps=2), labels=-1)  # one label for all
    with pytest.raises(UsageError, match=r"^labels: 3 labels for 2 samples; expected one per sample$"):
        D(x, 1.0, torch.tensor([0, 1, 2]))
    with pytest.raises(UsageError, match=r"^labels: 5 labels for 6 images; expected one per image$"):
        OptimalDenoiser(images, np.array([0, 1, 2, 0, 1]), label_dim=3)
    with pytest.raises(UsageError, match=r"^classes: 7 is not valid; expected 0..2"):
        generate(D, 2, 0, SampleConfig(steps=2), classes=[7])
    check_label(None, 0)
    check_label(2, 3, "--label")
    with pytest.raises(UsageError, match=r"^--label: 3 is not valid; expected 0..2 \(label_dim 3\)$"):
        check_label(3, 3, "--label")
    with pytest.raises(UsageError, match=r"^--label: 0 is not valid; expected no --label \(the denoiser is uncond"):
        check_label(0, 0, "--label")
