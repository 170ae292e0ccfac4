"""Duplicate report of a built image set: exact copies and near copies within a stated distance.

- Exact: images whose bytes equal another image's. Reported as the number of images that have
  at least one copy (``images``), the number of copy groups (``groups``) and the images a
  de-duplication would drop (``redundant`` = N − distinct images).
- Near: images whose nearest *other* image lies within an RMS pixel distance
  ‖a − b‖₂ / √D ≤ T (pixel values 0..255, D = C·H·W). Exact copies count as near (distance 0).
  The nearest neighbours are found in blocks with a float32 matrix product (never the full
  N×N matrix); the few best candidates of each image are then re-ranked exactly (integer
  arithmetic in float64), so the reported distances are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BLOCK_ROWS = 512
CANDIDATES = 4  # float32 candidates re-ranked exactly per image


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
    progress: Callable[[int], None] | None = None,  # called with the rows done after each block
) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the index of and exact squared ℓ2 distance to its nearest other image."""
    n = images.shape[0]
    x = images.reshape(n, -1).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    k = min(CANDIDATES, n - 1)
    nn = np.full(n, -1, dtype=np.int64)
    d2 = np.full(n, np.inf)
    if k < 1:
        return nn, d2
    flat = images.reshape(n, -1)
    for s in range(0, n, BLOCK_ROWS):
        e = min(n, s + BLOCK_ROWS)
        # ‖a − b‖² = ‖a‖² − 2ab + ‖b‖² (float32, approximate; re-ranked exactly below)
        approx = sq[s:e, None] - 2.0 * (x[s:e] @ x.T) + sq[None, :]
        approx[np.arange(e - s), np.arange(s, e)] = np.inf  # not itself
        cand = np.argpartition(approx, k - 1, axis=1)[:, :k]
        diff = flat[s:e, None, :].astype(np.int32) - flat[cand].astype(np.int32)  # exact integer differences
        exact = np.einsum("rkd,rkd->rk", diff, diff, dtype=np.int64).astype(np.float64)
        best = np.argmin(exact, axis=1)
        rows = np.arange(e - s)
        nn[s:e] = cand[rows, best]
        d2[s:e] = exact[rows, best]
        if progress is not None:
            progress(e - s)
    return nn, d2


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
