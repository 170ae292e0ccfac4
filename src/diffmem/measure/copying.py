"""The data-copying test of "A Non-Parametric Test to Detect Data-Copying in Generative Models" (AISTATS 2020).

Three sets: the training set T, held-out images P_n of the same distribution that the model never saw,
and generated samples Q_m. The instance space is partitioned into k cells by k-means on T. In each cell
π, the distances to the training set, L_π(P_n) = {d(x, T) : x ∈ P_n ∩ π} and L_π(Q_m) likewise, are
compared by the Mann–Whitney U statistic turned into a Z-score Z_π (Q against P: Z_π ≪ 0 when the
samples of the cell lie closer to the training set than held-out images do). Cells holding fewer than
τ·m samples are dropped (Π_τ); the statistic is the average of the kept Z-scores weighted by the
held-out mass of each cell:

    C_T = Σ_{π ∈ Π_τ} P_n(π) Z_π / Σ_{π ∈ Π_τ} P_n(π)

Reading: C_T ≪ 0 data copying, C_T ≈ 0 samples as far from the training set as fresh images,
C_T ≫ 0 underfitting (samples farther from the training data than fresh images: blurred, noisy or
broken). Under the null hypothesis each Z_π is approximately N(0, 1) and C_T has a standard deviation
of at most 1, so |C_T| > 3 (:data:`READING_BAND`) is read as evidence.

Choices made here (docs/AUDIT.md lists them):
- d(x, T) is the exact ℓ2 distance to the nearest training image over the whole set (the measurement's
  d₁), not only over the training images of x's cell; the two agree whenever a point's nearest
  training image lies in its own cell.
- U counts the (q, p) pairs with d(q) > d(p), ties counted ½ (midranks);
  Z = (U − mn/2) / σ_U with the tie-corrected σ_U² = mn/12 · [(N + 1) − Σ(t³ − t) / (N(N − 1))],
  N = m + n, t the sizes of the groups of tied values; no continuity correction. A cell whose values
  are all tied has σ_U = 0 and Z = 0.
- Cells: k-means (k-means++ seeding, seeded) on the distinct training vectors, Lloyd iterations in
  float32; points go to the nearest centroid in float64 (ties to the lower cell). τ defaults to 20/m
  (at least 20 samples in a kept cell, so the normal approximation of U is fair); k defaults to
  :func:`auto_cells`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

READING_BAND = 3.0  # |C_T| beyond this is read as copying (< −band) or underfitting (> band)
MIN_PER_CELL = 20  # default τ·m: samples a cell needs to be kept
POINTS_PER_CELL = 50  # auto_cells aims at this many held-out images and samples per cell
MAX_CELLS = 50
ASSIGN_ROWS = 4096  # rows per block when assigning points to cells


def auto_cells(n_heldout: int, n_samples: int, n_train_distinct: int) -> int:
    """Default number of cells: about 50 held-out images and 50 samples per cell, 1 to 50 cells, never
    more than the distinct training images."""
    k = min(n_heldout, n_samples) // POINTS_PER_CELL
    return int(max(1, min(MAX_CELLS, k, n_train_distinct)))


def mann_whitney(q: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(U, Z) of ``q`` against ``p``: U = #{(i, j): q_i > p_j} + ½ #{q_i = p_j}; Z tie-corrected, 0 when all tie."""
    q, p = np.asarray(q, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    m, n = q.size, p.size
    N = m + n
    values = np.concatenate([q, p])
    # midranks of the pooled values (1-based)
    order = np.argsort(values, kind="stable")
    sorted_v = values[order]
    _, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    mid = start + (counts + 1) / 2.0  # average 1-based rank of each tie group
    ranks = np.empty(N, np.float64)
    ranks[order] = np.repeat(mid, counts)
    U = float(ranks[:m].sum() - m * (m + 1) / 2.0)  # Mann–Whitney U of q
    ties = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    var = m * n / 12.0 * ((N + 1) - (ties / (N * (N - 1)) if N > 1 else 0.0))
    Z = 0.0 if var <= 0 else (U - m * n / 2.0) / math.sqrt(var)
    return U, Z


@dataclass(frozen=True)
class Cells:
    """A partition of the instance space: the k-means centroids of the training set."""

    centroids: np.ndarray  # float64 k×D
    seed: int

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The cell (nearest centroid, float64; ties to the lower index) of each row of ``vectors``."""
        c = self.centroids
        c_sq = np.einsum("ij,ij->i", c, c)
        out = np.empty(vectors.shape[0], np.int64)
        for s in range(0, vectors.shape[0], ASSIGN_ROWS):
            x = vectors[s:s + ASSIGN_ROWS].astype(np.float64)
            d = c_sq[None, :] - 2.0 * (x @ c.T)  # ‖x − c‖² − ‖x‖²: the same order per row
            out[s:s + ASSIGN_ROWS] = np.argmin(d, axis=1)
        return out


def fit_cells(train_vectors: np.ndarray, k: int, seed: int = 0) -> Cells:
    """k-means on the (distinct) training vectors: ``k`` cells, k-means++ seeding from ``seed``."""
    from sklearn.cluster import KMeans

    x = np.asarray(train_vectors, dtype=np.float32)
    k = int(min(k, x.shape[0]))
    if k <= 1:
        return Cells(centroids=x.astype(np.float64).mean(axis=0, keepdims=True), seed=seed)
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(x)
    return Cells(centroids=km.cluster_centers_.astype(np.float64), seed=seed)


def reading(c_t: float | None) -> str:
    """The plain-words reading of C_T."""
    if c_t is None:
        return "no cell held enough samples to compute C_T"
    if c_t < -READING_BAND:
        return "data copying: samples lie closer to the training images than held-out images do"
    if c_t > READING_BAND:
        return ("underfitting: samples lie farther from the training images than held-out images do "
                "(blurred, noisy or broken samples)")
    return f"no evidence of copying or underfitting (|C_T| ≤ {READING_BAND:g}): samples are as far from " \
           "the training images as held-out images are"


def data_copying_test(
    d_heldout: np.ndarray,  # float n: d(x, T) of each held-out image
    cells_heldout: np.ndarray,  # int n: its cell
    d_samples: np.ndarray,  # float m: d(x, T) of each generated sample
    cells_samples: np.ndarray,  # int m: its cell
    k: int,  # number of cells
    *,
    tau: float | None = None,  # fraction of the samples a cell needs to be kept (default 20/m)
    cells_train: np.ndarray | None = None,  # int: the cell of each training image (reported only)
) -> dict[str, Any]:
    """C_T with its per-cell Z-scores and counts (see the module docstring)."""
    n, m = int(d_heldout.size), int(d_samples.size)
    if tau is None:
        tau = MIN_PER_CELL / m
    n_p = np.bincount(cells_heldout, minlength=k)
    n_q = np.bincount(cells_samples, minlength=k)
    n_t = np.bincount(cells_train, minlength=k) if cells_train is not None else None
    per_cell = []
    num = den = 0.0
    for c in range(k):
        kept = bool(n_q[c] >= tau * m - 1e-9 and n_p[c] > 0)  # Π_τ: Q_m(π) ≥ τ; a Z-score needs held-out images
        z = None
        if n_q[c] > 0 and n_p[c] > 0:
            _, z = mann_whitney(d_samples[cells_samples == c], d_heldout[cells_heldout == c])
        if kept:
            w = n_p[c] / n  # P_n(π)
            num += w * z
            den += w
        per_cell.append({"cell": c, "n_heldout": int(n_p[c]), "n_samples": int(n_q[c]),
                         "n_train": None if n_t is None else int(n_t[c]), "z": z, "kept": kept})
    c_t = num / den if den > 0 else None
    return {
        "c_t": c_t,
        "reading": reading(c_t),
        "cells": int(k),
        "cells_kept": int(sum(p["kept"] for p in per_cell)),
        "tau": float(tau),
        "min_samples_per_cell": int(math.ceil(tau * m - 1e-9)),
        "heldout_mass_kept": float(den),
        "n_heldout": n,
        "n_samples": m,
        "per_cell": per_cell,
    }
