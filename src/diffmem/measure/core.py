"""The memorization measurement: one-shot :func:`measure` and the streaming :class:`StreamingMeasurer`.

A generated sample x is memorized when d₁/d₂ < threshold (default 1/3), with d₁, d₂ its exact ℓ2
distances to the nearest and second-nearest distinct training images. The memorization ratio is the
memorized fraction, reported with a Wilson confidence interval. Feature vectors may instead be compared
by cosine distance 1 − cos (``distance="cosine"``; see :mod:`diffmem.measure.features`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffmem.config import MeasureConfig
from diffmem.devices import check_device_name, resolve_device
from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet
from diffmem.measure.knn import BACKENDS, MIN_MEMORY_MB, search
from diffmem.measure.stats import wilson_interval
from diffmem.measure.vectors import DISTANCES, TrainIndex, as_vectors, check_compatible, prepare_train, unit_rows

log = logging.getLogger(__name__)

MIN_SAMPLES = 1000  # below this many samples the ratio is too uncertain to compare settings


@dataclass(frozen=True)
class Measurement:
    """Summary and per-sample results (NN ids index the training set as given; canonical copies)."""

    summary: dict[str, Any]
    sample_index: np.ndarray  # int64 n
    seeds: np.ndarray  # int64 n (−1 where unknown)
    nn1: np.ndarray  # int64 n
    nn2: np.ndarray  # int64 n: nearest training image whose pixels differ from NN₁'s
    d1: np.ndarray  # float64 n: ‖x − NN₁‖₂
    d2: np.ndarray  # float64 n: ‖x − NN₂‖₂ (> 0)
    ratio: np.ndarray  # float64 n: d₁ / d₂
    memorized: np.ndarray  # bool n: ratio < threshold
    nn1_copies: np.ndarray  # int64 n: identical copies of NN₁ in the training set
    train_canonical: np.ndarray  # int64 N_train: lowest index of each training image's group of identical ones
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # further per-sample columns (feature criteria)

    def table(self) -> dict[str, np.ndarray]:
        """The per-sample table as named arrays."""
        return {**{k: getattr(self, k) for k in ("sample_index", "seeds", "nn1", "nn2", "d1", "d2", "ratio",
                                                 "memorized", "nn1_copies")}, **self.extra}


def validate_measure(cfg: MeasureConfig, *, where: str = "measure") -> None:
    """Refuse the first setting of a measurement config that cannot run, in one line naming it by its config path
    (``measure.threshold``; ``where`` is the prefix)."""
    if not 0.0 < cfg.threshold <= 1.0:
        raise bad(f"{where}.threshold", cfg.threshold, "a number in (0, 1], e.g. 1/3")
    if not 0.0 < cfg.confidence < 1.0:
        raise bad(f"{where}.confidence", cfg.confidence, "a number in (0, 1)")
    if cfg.backend not in BACKENDS:
        raise bad(f"{where}.backend", cfg.backend, " or ".join(BACKENDS))
    if cfg.memory_mb < MIN_MEMORY_MB:
        raise bad(f"{where}.memory_mb", cfg.memory_mb, f"a working-memory budget of at least {MIN_MEMORY_MB} MiB")
    if cfg.candidates < 2:
        raise bad(f"{where}.candidates", cfg.candidates, "at least 2")
    if cfg.copying_cells < 0:
        raise bad(f"{where}.copying_cells", cfg.copying_cells, "a number of k-means cells ≥ 1, or 0 for the default")
    if cfg.copying_tau is not None and not 0.0 < cfg.copying_tau <= 1.0:
        raise bad(f"{where}.copying_tau", cfg.copying_tau, "the fraction of samples a cell needs, in (0, 1]")
    check_device_name(cfg.device, f"{where}.device")


def _matching_dtypes(q: np.ndarray, index: TrainIndex) -> tuple[np.ndarray, TrainIndex]:
    """uint8 against uint8 stays integer-exact; any float involvement compares in a common float dtype."""
    if q.dtype == index.vectors.dtype:
        return q, index
    if index.vectors.dtype == np.uint8 or q.dtype == np.uint8:
        raise UsageError(f"--samples: {q.dtype} vectors but --train holds {index.vectors.dtype} vectors; "
                         "expected both uint8 pixels or both float features")
    if q.dtype == np.float64:  # float64 samples against a float32 training index: no silent rounding
        raise UsageError("--samples: float64 vectors but --train holds float32 vectors; expected the same "
                         "float dtype (cast one of them)")
    return q.astype(index.vectors.dtype), index


class StreamingMeasurer:
    """Measure batches of samples as they are generated; ``result()`` equals the one-shot :func:`measure`.

    >>> m = StreamingMeasurer(train_images, MeasureConfig())
    >>> for batch in batches: m.add(batch.images, seeds=batch.seeds)
    >>> m.result().summary["memorization_ratio"]
    """

    def __init__(self, train: ImageSet | np.ndarray | TrainIndex, cfg: MeasureConfig | None = None, *,
                 progress: bool = False, min_samples: int = MIN_SAMPLES, distance: str = "l2") -> None:
        cfg = cfg or MeasureConfig()
        validate_measure(cfg)
        if distance not in DISTANCES:
            raise bad("--distance", distance, f"one of {', '.join(DISTANCES)}")
        self.cfg, self.distance = cfg, distance
        if isinstance(train, TrainIndex):
            if distance == "cosine" and not np.allclose(train.sq_norms, 1.0, rtol=0, atol=1e-12):
                raise UsageError("--train: a prepared index for the cosine distance must hold unit vectors; "
                                 "expected prepare_train(unit_rows(features))")
            self.index = train
        else:
            self.index = prepare_train(unit_rows(train, "--train") if distance == "cosine" else train)
        self.device = resolve_device(cfg.device, "measure.device")
        self.progress = progress
        self.min_samples = min_samples  # warn below this many samples
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (seeds, ids, sq)
        self._n_fallback = 0

    def add(self, images: ImageSet | np.ndarray, seeds: np.ndarray | None = None) -> None:
        """Search one batch of samples (images or feature vectors) against the training set."""
        q, shape = as_vectors(images, "--samples")
        check_compatible(shape, self.index.shape)
        if self.distance == "cosine":
            q = unit_rows(q, "--samples")
        q, index = _matching_dtypes(q, self.index)
        if seeds is None and isinstance(images, ImageSet):
            seeds = images.seeds
        seeds = np.full(q.shape[0], -1, np.int64) if seeds is None else np.asarray(seeds, np.int64).reshape(-1)
        if seeds.shape[0] != q.shape[0]:
            raise UsageError(f"seeds: {seeds.shape[0]} values for {q.shape[0]} samples; expected one per sample")
        nn = search(q, index, candidates=self.cfg.candidates, backend=self.cfg.backend, device=self.device,
                    memory_mb=self.cfg.memory_mb, progress=self.progress)
        self._parts.append((seeds, nn.ids, nn.sq_dist))
        self._n_fallback += nn.n_fallback

    def result(self) -> Measurement:
        """The measurement of every sample added so far, in the order added."""
        if not self._parts:
            raise UsageError("--samples: no samples were measured; expected at least one")
        seeds = np.concatenate([p[0] for p in self._parts])
        ids = np.concatenate([p[1] for p in self._parts])
        sq = np.concatenate([p[2] for p in self._parts])
        return _finish(seeds, ids, sq, self.index, self.cfg, str(self.device), self._n_fallback,
                       self.min_samples, self.distance)


def _finish(seeds: np.ndarray, ids: np.ndarray, sq: np.ndarray, index: TrainIndex, cfg: MeasureConfig,
            device: str, n_fallback: int, min_samples: int = MIN_SAMPLES, distance: str = "l2") -> Measurement:
    # ℓ2: d = ‖x − b‖; cosine: d = 1 − cos(x, b) = ‖x̂ − b̂‖² / 2 on the unit vectors searched
    d = np.sqrt(sq) if distance == "l2" else sq / 2.0
    d1, d2 = d[:, 0], d[:, 1]  # d2 > 0: NN₂ differs from NN₁, so it cannot equal the sample too
    ratio = d1 / d2
    memorized = ratio < cfg.threshold
    n, k = int(ratio.shape[0]), int(memorized.sum())
    low, high = wilson_interval(k, n, cfg.confidence)
    warning = None
    if n < min_samples:
        warning = (f"only {n} samples measured (fewer than {min_samples}); the ratio's "
                   f"{cfg.confidence:.0%} interval is [{low:.3f}, {high:.3f}]")
        log.warning(warning)
    summary = {
        "memorization_ratio": k / n,
        "ci_low": low,
        "ci_high": high,
        "confidence": cfg.confidence,
        "n_samples": n,
        "n_memorized": k,
        "n_exact_copies": int(np.count_nonzero(d1 == 0)),
        "n_train": index.n,
        "n_train_distinct": index.n_unique,
        "duplicate_groups": index.duplicate_groups,
        "duplicate_images": index.n - index.n_unique,
        "threshold": cfg.threshold,
        "median_ratio": float(np.median(ratio)),
        "item_shape": list(index.shape),
        "dim": index.dim,
        "distance": ("l2 on uint8 pixel values" if index.is_uint8 else "l2 on feature vectors") if distance == "l2"
        else "cosine distance (1 - cos) on feature vectors",
        "backend": cfg.backend,
        "device": device,
        "candidates": cfg.candidates,
        "n_fallback": n_fallback,
        "warning": warning,
    }
    return Measurement(summary=summary, sample_index=np.arange(n, dtype=np.int64), seeds=seeds,
                       nn1=ids[:, 0].copy(), nn2=ids[:, 1].copy(), d1=d1, d2=d2, ratio=ratio,
                       memorized=memorized, nn1_copies=index.group_size[ids[:, 0]],
                       train_canonical=index.canonical)


def measure(
    samples: ImageSet | np.ndarray,  # generated images (uint8 N×C×H×W) or feature vectors N×D
    train: ImageSet | np.ndarray | TrainIndex,  # training images or features (or a prepared index)
    cfg: MeasureConfig | None = None,  # threshold, backend, device, memory budget (defaults: MeasureConfig())
    *,
    progress: bool = False,  # progress bar on stderr
    min_samples: int = MIN_SAMPLES,  # warn (log and summary) when fewer samples are measured
    distance: str = "l2",  # l2, or cosine (1 − cos) for feature vectors
) -> Measurement:
    """Memorization ratio of ``samples`` against ``train`` (exact NN₁/NN₂, Wilson interval)."""
    m = StreamingMeasurer(train, cfg, progress=progress, min_samples=min_samples, distance=distance)
    m.add(samples)
    return m.result()
