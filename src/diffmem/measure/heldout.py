"""The held-out baseline: images of the training distribution that the model never saw.

Two numbers stand beside the memorization ratio:
- the held-out images' own memorization ratio against the training set: the fraction that the
  d₁/d₂ < 1/3 rule flags although they cannot have been copied — its false-positive rate on this data
  (held-out images that are near-duplicates of training images show up here, and in ``heldout.csv``);
- the data-copying statistic C_T (:mod:`diffmem.measure.copying`), which compares the samples'
  distances to the training set with the held-out images' distances, cell by cell: ≪ 0 copying,
  ≈ 0 matching, ≫ 0 underfitting. It separates "generalizes" from "produces noise" where the ratio
  reads 0 for both.

A :class:`HeldoutReference` holds everything that depends on the training and held-out sets only
(the held-out measurement, the cells, every point's cell), so a sweep computes it once per dataset and
each snapshot's C_T costs one assignment of its samples to the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diffmem.config import MeasureConfig
from diffmem.io import ImageSet
from diffmem.measure.copying import Cells, auto_cells, data_copying_test, fit_cells
from diffmem.measure.core import Measurement, measure, validate_measure
from diffmem.measure.vectors import TrainIndex, as_vectors

HELDOUT_KEYS = ("memorization_ratio", "ci_low", "ci_high", "confidence", "n_memorized", "n_exact_copies",
                "threshold", "median_ratio")


@dataclass(frozen=True)
class HeldoutReference:
    """What the held-out baseline needs from the training and held-out sets (independent of the samples)."""

    summary: dict[str, Any]  # the held-out images' measurement (the 1/3 rule's false-positive rate)
    d1: np.ndarray  # float64 n: each held-out image's distance to the training set
    cells: Cells  # k-means cells of the training set
    heldout_cells: np.ndarray  # int64 n
    train_cells: np.ndarray  # int64 N_train
    tau: float | None  # fraction of the samples a kept cell holds (None: 20/m)
    measurement: Measurement | None = None  # the held-out measurement itself (for heldout.csv)

    def copying(self, samples: ImageSet | np.ndarray, d_samples: np.ndarray) -> dict[str, Any]:
        """C_T of generated samples whose distances to the training set are ``d_samples``."""
        q, _ = as_vectors(samples, "--samples")
        result = data_copying_test(self.d1, self.heldout_cells, np.asarray(d_samples, np.float64),
                                   self.cells.assign(q), self.cells.k, tau=self.tau, cells_train=self.train_cells)
        result["kmeans_seed"] = self.cells.seed
        return result


def heldout_summary(hm: Measurement) -> dict[str, Any]:
    """The held-out measurement as the summary's ``heldout`` block."""
    s = hm.summary
    out = {"n_heldout": s["n_samples"], **{k: s[k] for k in HELDOUT_KEYS}}
    out["meaning"] = ("held-out images (never trained on) that the rule flags as memorized: its false-positive "
                      "rate on this data")
    return out


def prepare_heldout(
    index: TrainIndex,  # the prepared training set
    heldout: ImageSet | np.ndarray,  # held-out images (or vectors) of the same distribution
    cfg: MeasureConfig,  # threshold, search and data-copying settings (copying_cells, copying_tau, copying_seed)
    n_samples: int,  # samples per measurement (for the default number of cells)
    *,
    progress: bool = False,
) -> HeldoutReference:
    """Measure the held-out images against the training set and fit the cells of the data-copying test."""
    validate_measure(cfg)
    hm = measure(heldout, index, cfg, progress=progress, min_samples=0)  # its interval says how sure it is
    k = cfg.copying_cells or auto_cells(len(hm.d1), n_samples, index.n_unique)
    cells = fit_cells(index.vectors[index.unique_ids], k, cfg.copying_seed)
    h, _ = as_vectors(heldout, "--heldout")
    return HeldoutReference(summary=heldout_summary(hm), d1=hm.d1, cells=cells, heldout_cells=cells.assign(h),
                            train_cells=cells.assign(index.vectors), tau=cfg.copying_tau, measurement=hm)
