"""Measurement in a feature space: embeddings from an ONNX image encoder or precomputed ``.npz`` files.

Pixel ℓ2 with the 1/3 rule is the reference study's metric. For larger images, copies are usually
judged in an embedding space (copy-detection descriptors such as SSCD, or DINO / CLIP image
embeddings). Two criteria are reported side by side, each with its count and Wilson interval:

- **ratio rule**: d₁/d₂ < threshold (default 1/3) on the chosen distance: ℓ2 between the vectors, or
  the cosine distance d = 1 − cos between them (the default; the vectors are L2-normalized first).
- **similarity threshold**: a sample is a copy when its most similar training vector has cosine
  similarity ≥ τ (default 0.5, the threshold of copy-detection studies of diffusion models).

The nearest neighbours come from the same exact search as pixels (:mod:`diffmem.measure.knn`): a float32
matrix-product pass certified by a rounding bound, then an exact float64 re-rank. For float features
NN₁ and NN₂ are therefore the exact two nearest distinct training vectors of the values as given (float32
embeddings widen to float64 exactly; cosine mode normalizes in float64), ties to the lower index, and
every reported distance and cosine is a float64 sum with relative error below ~D·2⁻⁵³.

A precomputed embeddings file is a ``.npz`` with ``features`` (float N×D, float32 preferred) and
optionally ``names`` (strings, one per row) and ``seeds``; it may also hold the ``images`` it embeds
(for the grid figure). Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.config import MeasureConfig
from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet, load_npz, read_npz
from diffmem.measure.core import Measurement, StreamingMeasurer
from diffmem.measure.stats import wilson_interval
from diffmem.measure.vectors import DISTANCES

log = logging.getLogger(__name__)

KINDS = ("pixels", "onnx", "precomputed")
FEATURES_LAYOUT = "'features' float32 N×D (optional 'names', 'seeds', 'images')"
SEARCH_GUARANTEE = ("exact: NN1 and NN2 are the two nearest distinct training vectors in float64 arithmetic on the "
                    "vectors as given (a float32 pass certified by a rounding bound, then a float64 re-rank; ties to "
                    "the lower index); distances and cosines are float64 sums")


@dataclass(frozen=True)
class FeatureSpace:
    """Where a measurement compares samples with training images (``--features`` and its options)."""

    kind: str = "pixels"  # pixels | onnx | precomputed
    model: str | None = None  # the .onnx image encoder (kind onnx)
    distance: str = "cosine"  # ratio rule on: cosine (1 − cos, vectors L2-normalized) | l2
    similarity: float = 0.5  # copy when the most similar training vector has cosine ≥ this


def parse_space(value: str, option: str = "--features") -> tuple[str, str | None]:
    """``pixels`` | ``precomputed`` | ``PATH.onnx`` → (kind, model path or None)."""
    if value in ("pixels", "precomputed"):
        return value, None
    if value.lower().endswith(".onnx"):
        return "onnx", value
    raise bad(option, value, "pixels, precomputed, or an image encoder file ending in .onnx")


def check_space(space: FeatureSpace, *, model: bool = True) -> FeatureSpace:
    """Refuse an invalid feature space with one line naming the option (``model``: check the file exists)."""
    if space.kind not in KINDS:
        raise bad("--features", space.kind, f"one of {', '.join(KINDS)}")
    if space.distance not in DISTANCES:
        raise bad("--distance", space.distance, f"one of {', '.join(DISTANCES)}")
    if not -1.0 <= space.similarity <= 1.0:
        raise bad("--similarity", space.similarity, "a cosine similarity in [-1, 1], e.g. 0.5")
    if model and space.kind == "onnx" and not (space.model and Path(space.model).is_file()):
        raise UsageError(f"--features: {space.model!r} does not exist; expected an .onnx image encoder file")
    return space


@dataclass(frozen=True)
class Embeddings:
    """Feature vectors of one side (samples or training set), with what is known about their rows."""

    vectors: np.ndarray  # N×D float32 (or float64)
    names: np.ndarray | None = None  # str N
    seeds: np.ndarray | None = None  # int64 N
    images: ImageSet | None = None  # the images embedded (for the grid figure), when known


def load_embeddings(path: str | Path, what: str) -> Embeddings:
    """A precomputed embeddings ``.npz`` (``features`` N×D, optional ``names``, ``seeds``, ``images``)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what}: {str(path)!r} does not exist; expected a .npz file with {FEATURES_LAYOUT}")
    arrays = read_npz(p, ("features", "names", "seeds", "images"), "features", FEATURES_LAYOUT)
    f = arrays["features"]
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise UsageError(f"{what}: {p}: 'features' has shape {f.shape}; expected N×D with N, D ≥ 1")
    if not np.issubdtype(f.dtype, np.floating):
        raise UsageError(f"{what}: {p}: 'features' has dtype {f.dtype}; expected float32 feature vectors")
    f = f.astype(np.float32) if f.dtype == np.float16 else f
    if not np.isfinite(f).all():
        raise UsageError(f"{what}: {p}: 'features' holds NaN or inf; expected finite values")
    n = f.shape[0]
    names = arrays.get("names")
    if names is not None and (names.shape != (n,) or names.dtype.kind not in "US"):
        raise UsageError(f"{what}: {p}: 'names' has dtype {names.dtype} and shape {names.shape}; expected {n} "
                         "strings, one per row of 'features'")
    seeds = arrays.get("seeds")
    if seeds is not None and (seeds.shape != (n,) or not np.issubdtype(seeds.dtype, np.integer)):
        raise UsageError(f"{what}: {p}: 'seeds' has shape {seeds.shape}; expected {n} integers")
    images = load_npz(p) if "images" in arrays else None
    if images is not None and len(images) != n:
        raise UsageError(f"{what}: {p}: {len(images)} images but {n} feature vectors; expected one each")
    return Embeddings(vectors=np.ascontiguousarray(f), names=None if names is None else names.astype(str),
                      seeds=None if seeds is None else seeds.astype(np.int64), images=images)


def with_images(emb: Embeddings, images: ImageSet, what: str, images_option: str) -> Embeddings:
    """Pair embeddings with the images they embed: one vector per image, reordered by name when both are named."""
    n, m = emb.vectors.shape[0], len(images)
    if n != m:
        raise UsageError(f"{what}: {n} feature vectors but {images_option} holds {m} images; expected one vector "
                         "per image, in the same order (or named with 'names')")
    image_names = getattr(images, "names", None)
    if emb.names is not None and image_names is not None:
        image_names = np.asarray(image_names).astype(str)
        pos = {name: i for i, name in enumerate(emb.names)}
        missing = [x for x in image_names if x not in pos]
        if missing or len(pos) != n:
            raise UsageError(f"{what}: names do not match {images_option}'s ({len(missing)} image names not in "
                             f"'names', e.g. {missing[:1]}); expected one uniquely named vector per image")
        order = np.array([pos[x] for x in image_names], dtype=np.int64)
        emb = dataclasses.replace(emb, vectors=emb.vectors[order], names=emb.names[order],
                                  seeds=None if emb.seeds is None else emb.seeds[order])
    return dataclasses.replace(emb, images=images)


def similarity_summary(max_cos: np.ndarray, tau: float, confidence: float) -> dict[str, Any]:
    """The absolute criterion: how many samples have cosine ≥ τ to their most similar training vector."""
    n = int(max_cos.shape[0])
    k = int(np.count_nonzero(max_cos >= tau))
    low, high = wilson_interval(k, n, confidence)
    return {"threshold": tau, "n_similar": k, "n_samples": n, "ratio": k / n, "ci_low": low, "ci_high": high,
            "confidence": confidence, "median_max_cosine": float(np.median(max_cos)),
            "criterion": "cosine similarity to the most similar training vector >= threshold"}


def _search(samples: np.ndarray, train: np.ndarray, cfg: MeasureConfig, distance: str, seeds: np.ndarray | None,
            progress: bool) -> Measurement:
    m = StreamingMeasurer(train, cfg, progress=progress, distance=distance)
    m.add(samples, seeds=seeds)
    return m.result()


def measure_features(
    samples: np.ndarray,  # N×D feature vectors of the generated samples
    train: np.ndarray,  # M×D feature vectors of the training images, same D
    space: FeatureSpace | None = None,  # distance and similarity threshold (default: cosine, 0.5)
    cfg: MeasureConfig | None = None,  # ratio-rule threshold, confidence, search backend and budget
    *,
    seeds: np.ndarray | None = None,  # per-sample seeds for the table (−1 where unknown)
    describe: dict[str, Any] | None = None,  # what the features are (model, preprocessing), for the summary
    progress: bool = False,
) -> Measurement:
    """Both criteria in feature space: the ratio rule on ``space.distance`` and cosine ≥ ``space.similarity``.

    The returned measurement is a regular one (NN₁/NN₂, d₁/d₂, memorized by the ratio rule) with the
    similarity criterion in ``summary["similarity"]`` and per-sample columns ``max_cosine`` (cosine to the
    most similar training vector), ``nn_cosine`` (its index) and ``similar`` (max_cosine ≥ τ).
    """
    cfg = cfg or MeasureConfig()
    space = check_space(space or FeatureSpace(kind="precomputed"), model=False)
    samples, train = np.asarray(samples), np.asarray(train)
    for what, a in (("--samples", samples), ("--train", train)):
        if a.ndim != 2 or a.dtype == np.uint8:
            raise UsageError(f"{what}: features have dtype {a.dtype} and shape {a.shape}; expected float N×D "
                             "feature vectors")
    if samples.dtype != train.dtype:  # float32 against float64: widen both (exact), never round
        samples, train = samples.astype(np.float64), train.astype(np.float64)
    m = _search(samples, train, cfg, space.distance, seeds, progress)
    # cosine distance d₁ = 1 − cos(x, NN₁): NN₁ under it is the most similar training vector
    cos_m = m if space.distance == "cosine" else _search(samples, train, cfg, "cosine", seeds, progress)
    max_cos, nn_cos = 1.0 - cos_m.d1, cos_m.nn1
    similar = max_cos >= space.similarity
    summary = dict(m.summary)
    summary["similarity"] = similarity_summary(max_cos, space.similarity, cfg.confidence)
    summary["feature_space"] = {"kind": space.kind, "distance": space.distance, "dim": int(train.shape[1]),
                                "dtype": str(train.dtype), "search": SEARCH_GUARANTEE, **(describe or {})}
    extra = {"max_cosine": max_cos, "nn_cosine": nn_cos.astype(np.int64), "similar": similar}
    return dataclasses.replace(m, summary=summary, extra={**m.extra, **extra})
