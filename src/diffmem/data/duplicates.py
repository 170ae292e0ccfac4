"""Duplicate report of a built image set: exact copies and near copies within a stated distance.

- Exact: images whose bytes equal another image's. Reported as the number of images that have
  at least one copy (``images``), the number of copy groups (``groups``) and the images a
  de-duplication would drop (``redundant`` = N − distinct images).
- Near: images whose nearest *other* image lies within an RMS pixel distance
  ‖a − b‖₂ / √D ≤ T (pixel values 0..255, D = C·H·W). Exact copies count as near (distance 0).
  The nearest neighbours are found exactly, in blocks of a float64 matrix product (integer
  pixels make it exact; the full N×N matrix never exists).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BLOCK_ROWS = 1024


def exact_duplicates(images: np.ndarray) -> dict[str, int]:
    """Counts of exact copies among the N images."""
    n = images.shape[0]
    flat = np.ascontiguousarray(images.reshape(n, -1))
    _, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    per_image = counts[inverse.reshape(-1)]
    return {
        "images": int(np.sum(per_image > 1)),
        "groups": int(np.sum(counts > 1)),
        "redundant": int(n - counts.size),
    }


def nearest_other(
    images: np.ndarray,
    progress: Callable[[int], None] | None = None,  # called with the rows done after each row block
) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the index of (lowest on ties) and exact squared ℓ2 distance to its nearest other image.

    Pixel values are integers, so ‖a‖² − 2ab + ‖b‖² in float64 is exact (every partial sum stays far
    below 2⁵³). Only the block pairs J ≥ I of the symmetric distance matrix are computed, each used
    for the rows of I and the rows of J; no more than one block × block matrix exists at a time.
    """
    n = images.shape[0]
    flat = images.reshape(n, -1)
    sq = np.einsum("ij,ij->i", flat, flat, dtype=np.int64).astype(np.float64)
    nn = np.full(n, -1, dtype=np.int64)
    d2 = np.full(n, np.inf)
    starts = list(range(0, n, BLOCK_ROWS))
    for bi, s in enumerate(starts):
        e = min(n, s + BLOCK_ROWS)
        xi = flat[s:e].astype(np.float64)
        for t in starts[bi:]:
            f = min(n, t + BLOCK_ROWS)
            # ‖a − b‖² = ‖a‖² − 2ab + ‖b‖², exact in float64 for integer pixels
            D = sq[s:e, None] - 2.0 * (xi @ flat[t:f].astype(np.float64).T) + sq[None, t:f]
            if t == s:
                np.fill_diagonal(D, np.inf)  # not itself
            _update(nn, d2, s, D, t)
            if t != s:
                _update(nn, d2, t, D.T, s)
        if progress is not None:
            progress(e - s)
    return nn, d2


def _update(nn: np.ndarray, d2: np.ndarray, row0: int, D: np.ndarray, col0: int) -> None:
    """Fold the block D (rows row0…, columns col0…) into the running nearest neighbours (strictly better)."""
    j = np.argmin(D, axis=1)
    best = D[np.arange(D.shape[0]), j]
    rows = slice(row0, row0 + D.shape[0])
    better = best < d2[rows]
    d2[rows] = np.where(better, best, d2[rows])
    nn[rows] = np.where(better, j + col0, nn[rows])


def duplicate_report(
    images: np.ndarray,
    threshold_rms: float,
    *,
    progress: Callable[[int], None] | None = None,
    max_examples: int = 5,
) -> dict[str, Any]:
    """The ``duplicates`` entry of a dataset manifest (see the module docstring)."""
    n = images.shape[0]
    dim = int(np.prod(images.shape[1:]))
    report: dict[str, Any] = {"n_images": int(n), "exact": exact_duplicates(images)}
    nn, d2 = nearest_other(images, progress)
    rms = np.sqrt(d2 / dim)
    near = rms <= threshold_rms
    examples = []
    for i in np.argsort(rms, kind="stable")[: max_examples]:
        if not near[i]:
            break
        examples.append({"index": int(i), "nearest": int(nn[i]), "rms": float(rms[i])})
    report["near"] = {
        "threshold_rms": float(threshold_rms),
        "metric": "RMS pixel distance ||a - b||_2 / sqrt(D) on 0..255 values",
        "images": int(np.sum(near)),
        "min_rms": float(rms.min()) if n > 1 else None,
        "examples": examples,
    }
    return report
