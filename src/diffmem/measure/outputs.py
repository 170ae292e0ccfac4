"""What a measurement writes: summary.json, the per-sample table, a ratio histogram and a grid figure.

The output directory is built in a temporary sibling and renamed when complete (no half-written
artefact); its manifest has stage "measurement". Figures need matplotlib (Agg backend, imported lazily).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.artefacts import atomic_dir, atomic_save_npz, atomic_write_json, write_manifest
from diffmem.config import MeasureConfig
from diffmem.io import ImageSet
from diffmem.measure.core import Measurement

SUMMARY = "summary.json"
TABLE = "table.npz"
HISTOGRAM = "ratios.png"
GRID = "grid.png"
GRID_ROWS_PER_GROUP = 4  # most memorized, borderline and least memorized samples each


def write_measurement(
    m: Measurement,
    out_dir: str | os.PathLike,
    *,
    samples: ImageSet | np.ndarray | None = None,  # images for the grid figure (skipped when None or vectors)
    train: ImageSet | np.ndarray | None = None,  # training images for the grid figure
    inputs: dict[str, Any] | None = None,  # recorded in summary.json and the manifest (e.g. paths)
    cfg: MeasureConfig | None = None,  # the configuration recorded in the manifest
    overwrite: bool = False,
) -> Path:
    """Write the measurement artefact to ``out_dir`` atomically and return its path."""
    out = Path(out_dir)
    summary = dict(m.summary, inputs=inputs or {})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / SUMMARY, summary)
        atomic_save_npz(tmp / TABLE, **m.table())
        plot_histogram(m, tmp / HISTOGRAM)
        files = [SUMMARY, TABLE, HISTOGRAM]
        if samples is not None and train is not None and _images(samples).ndim >= 3 and _images(train).ndim >= 3:
            plot_grid(m, _images(samples), _images(train), tmp / GRID)  # images only, not feature vectors
            files.append(GRID)
        cfg = cfg or MeasureConfig(threshold=m.summary["threshold"], backend=m.summary["backend"],
                                   candidates=m.summary["candidates"])
        write_manifest(tmp, "measurement", cfg, inputs=inputs or {}, files=files,
                       memorization_ratio=m.summary["memorization_ratio"])
    return out


def _images(x: ImageSet | np.ndarray) -> np.ndarray:
    return x.images if isinstance(x, ImageSet) else np.asarray(x)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(m: Measurement, path: Path) -> None:
    """Histogram of d₁/d₂ with the threshold line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(m.ratio, bins=np.linspace(0.0, 1.0, 51), color="#4c72b0")
    t = m.summary["threshold"]
    s = m.summary
    ax.axvline(t, color="#c44e52", linestyle="--", label=f"threshold {t:.3g}")
    ax.set_xlabel("d1 / d2 (nearest / second-nearest training distance)")
    ax.set_ylabel("samples")
    ax.set_title(f"{s['n_memorized']} of {s['n_samples']} memorized: ratio {s['memorization_ratio']:.3f} "
                 f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def grid_rows(m: Measurement, per_group: int = GRID_ROWS_PER_GROUP) -> list[tuple[str, int]]:
    """(group, sample index) for the most memorized, borderline and least memorized samples."""
    order = np.argsort(m.ratio, kind="stable")
    most = [int(i) for i in order[:per_group]]
    least = [int(i) for i in order[::-1] if i not in most][:per_group]
    border = [int(i) for i in np.argsort(np.abs(m.ratio - m.summary["threshold"]), kind="stable")
              if i not in most and i not in least][:per_group]
    groups = [("most memorized", most), ("borderline", sorted(border, key=lambda i: m.ratio[i])),
              ("least memorized", least)]
    return [(g, i) for g, idx in groups for i in idx]


def _show(ax, img: np.ndarray) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if img.ndim == 3 and img.shape[0] in (1, 3, 4):
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")


def plot_grid(m: Measurement, samples: np.ndarray, train: np.ndarray, path: Path) -> None:
    """Rows of generated | NN₁ | NN₂ with each row's ratio."""
    plt = _pyplot()
    rows = grid_rows(m)
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.2, 1.25 * len(rows)), dpi=100, squeeze=False)
    for r, (group, i) in enumerate(rows):
        for c, (img, title) in enumerate([(samples[i], "generated"), (train[m.nn1[i]], f"NN1 #{m.nn1[i]}"),
                                          (train[m.nn2[i]], f"NN2 #{m.nn2[i]}")]):
            _show(axes[r, c], img)
            if r == 0 or rows[r - 1][0] != group or c:
                axes[r, c].set_title(title if c else f"{group}\ngenerated", fontsize=6)
        axes[r, 0].set_ylabel(f"d1/d2 {m.ratio[i]:.3f}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
