"""What a measurement writes (docs/AUDIT.md lists every file, column and key):

- ``summary.json``: the ratio with its interval and counts, the copy numbers, the held-out baseline
  and the data-copying test when held-out images were given, the conversions and the inputs;
- ``table.csv`` and ``table.npz``: one row per sample, by index and name;
- ``copies.csv``: every training image, most copied first;
- ``heldout.csv``: one row per held-out image (when given), the columns of ``table.csv``;
- ``ratios.png``, ``grid.png`` (sample | NN₁ | NN₂) and ``copies.png`` (most copied training images).

The output directory is built in a temporary sibling and renamed when complete (no half-written
artefact); its manifest has stage "measurement". Figures need images; for feature vectors they are
left out unless the images are given separately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.artefacts import atomic_dir, atomic_save_npz, atomic_write_json, write_manifest
from diffmem.config import MeasureConfig
from diffmem.io import ImageSet
from diffmem.measure.core import Measurement
from diffmem.measure.figures import GridSource, grid_rows, plot_copies, plot_grid, plot_histogram
from diffmem.measure.heldout import HeldoutReference
from diffmem.measure.tables import TableNames, copy_columns, copy_summary, sample_columns, write_csv

SUMMARY = "summary.json"
TABLE = "table.npz"
TABLE_CSV = "table.csv"
COPIES_CSV = "copies.csv"
HELDOUT_CSV = "heldout.csv"
HISTOGRAM = "ratios.png"
GRID = "grid.png"
COPIES_GRID = "copies.png"

__all__ = ["full_summary", "grid_rows", "write_measurement"]


def full_summary(
    m: Measurement,
    names: TableNames | None = None,
    heldout: HeldoutReference | None = None,
    copying: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The measurement's summary with the copy numbers, the held-out baseline, C_T and ``extra`` keys."""
    s = dict(m.summary)
    s.update(copy_summary(m, names))
    if heldout is not None:
        s["heldout"] = dict(heldout.summary)
    if copying is not None:
        s["data_copying"] = copying
    s.update(extra)
    return s


def _images(x: ImageSet | np.ndarray) -> np.ndarray:
    return x.images if isinstance(x, ImageSet) else np.asarray(x)


def write_measurement(
    m: Measurement,
    out_dir: str | os.PathLike,
    *,
    samples: ImageSet | np.ndarray | None = None,  # images for the figures (skipped when None or vectors)
    train: ImageSet | np.ndarray | None = None,  # training images for the figures
    names: TableNames | None = None,  # names and labels for the tables (default: those of samples and train)
    heldout: HeldoutReference | None = None,  # the held-out baseline (heldout.csv, the summary's heldout block)
    copying: dict[str, Any] | None = None,  # the data-copying test of these samples (the summary's data_copying)
    heldout_names: TableNames | None = None,  # names of the held-out images (rows of heldout.csv)
    summary: dict[str, Any] | None = None,  # the summary to write (default: full_summary of the above)
    inputs: dict[str, Any] | None = None,  # recorded in summary.json and the manifest (e.g. paths)
    cfg: MeasureConfig | None = None,  # the configuration recorded in the manifest
    overwrite: bool = False,
    figures: bool = True,  # the PNG figures (histogram, grids); False: tables and summary only
) -> Path:
    """Write the measurement artefact to ``out_dir`` atomically and return its path."""
    out = Path(out_dir)
    n_train = m.train_canonical.shape[0]
    names = names or TableNames.of(samples, train, m.sample_index.shape[0], n_train)
    summary = dict(summary if summary is not None else full_summary(m, names, heldout, copying), inputs=inputs or {})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / SUMMARY, summary)
        atomic_save_npz(tmp / TABLE, **m.table())
        write_csv(tmp / TABLE_CSV, sample_columns(m, names))
        write_csv(tmp / COPIES_CSV, copy_columns(m, names))
        files = [SUMMARY, TABLE, TABLE_CSV, COPIES_CSV]
        hm = heldout.measurement if heldout is not None else None
        if hm is not None:
            hn = heldout_names or TableNames(samples=np.array([f"#{i}" for i in range(hm.d1.size)]), train=names.train,
                                             train_labels=names.train_labels)
            write_csv(tmp / HELDOUT_CSV, sample_columns(hm, hn))
            files.append(HELDOUT_CSV)
        if figures:
            plot_histogram(m, tmp / HISTOGRAM, heldout_ratio=None if hm is None else hm.ratio)
            files.append(HISTOGRAM)
            if samples is not None and train is not None and _images(samples).ndim >= 3 and _images(train).ndim >= 3:
                s_img, t_img = _images(samples), _images(train)  # images only, not feature vectors
                plot_grid(m, s_img, t_img, tmp / GRID, names)
                files.append(GRID)
                if plot_copies(m, s_img, t_img, tmp / COPIES_GRID, names):
                    files.append(COPIES_GRID)
        cfg = cfg or MeasureConfig(threshold=m.summary["threshold"], backend=m.summary["backend"],
                                   candidates=m.summary["candidates"])
        write_manifest(tmp, "measurement", cfg, inputs=inputs or {}, files=files,
                       memorization_ratio=m.summary["memorization_ratio"])
    return out


def plot_grid_from(measurement_dir: str | os.PathLike, samples: ImageSet, train: ImageSet, path: Path) -> None:
    """The sample | NN₁ | NN₂ grid of a measurement written without figures (``figures=False``), drawn from its
    ``table.npz`` and ``summary.json`` and the images it measured (nothing is searched again)."""
    d = Path(measurement_dir)
    with np.load(d / TABLE, allow_pickle=False) as z:
        table = {k: z[k] for k in ("ratio", "nn1", "nn2")}
    threshold = json.loads((d / SUMMARY).read_text())["threshold"]
    names = TableNames.of(samples, train, table["ratio"].shape[0], len(train))
    plot_grid(GridSource(summary={"threshold": threshold}, **table), samples.images, train.images, path, names)

