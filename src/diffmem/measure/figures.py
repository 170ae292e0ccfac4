"""The figures of a measurement: the d₁/d₂ histogram, the sample | NN₁ | NN₂ grid and the most-copied grid.

Images are captioned with their names. matplotlib comes from :mod:`diffmem.plotting` (on first use, Agg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.measure.core import Measurement
from diffmem.measure.tables import TableNames, copy_rank, group_counts
from diffmem.plotting import pyplot, save_png

GRID_ROWS_PER_GROUP = 4  # most memorized, borderline and least memorized samples each
COPIED_ROWS = 8  # training images shown in the most-copied grid
COPIES_PER_ROW = 5  # copies shown beside each
NAME_CHARS = 24  # names longer than this are shortened from the left in captions


def short(name: str, limit: int = NAME_CHARS) -> str:
    """A name for a caption: its end when it is too long (the file name matters most)."""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def plot_histogram(m: Measurement, path: Path, heldout_ratio: np.ndarray | None = None) -> None:
    """Histogram of d₁/d₂ with the threshold line (and the held-out images' d₁/d₂ when given)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(0.0, 1.0, 51)
    ax.hist(m.ratio, bins=bins, color="#4c72b0", label=f"generated samples ({m.ratio.size:,})")
    if heldout_ratio is not None:
        w = np.full(heldout_ratio.size, m.ratio.size / max(heldout_ratio.size, 1))
        ax.hist(heldout_ratio, bins=bins, weights=w, histtype="step", color="#55a868", linewidth=1.5,
                label=f"held-out images ({heldout_ratio.size:,}, scaled to the samples' count)")
    t = m.summary["threshold"]
    s = m.summary
    ax.axvline(t, color="#c44e52", linestyle="--", label=f"threshold {t:.3g}")
    ax.set_xlabel("d1 / d2 (nearest / second-nearest training distance)")
    ax.set_ylabel("samples")
    ax.set_title(f"{s['n_memorized']} of {s['n_samples']} memorized: ratio {s['memorization_ratio']:.3f} "
                 f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


@dataclass(frozen=True)
class GridSource:
    """What the sample | NN₁ | NN₂ grid reads of a measurement: per-sample d₁/d₂, NN₁ and NN₂, and the threshold
    (a :class:`~diffmem.measure.core.Measurement` has them; so has a measurement's ``table.npz``)."""

    ratio: np.ndarray
    nn1: np.ndarray
    nn2: np.ndarray
    summary: dict[str, Any]


def grid_rows(m: Measurement | GridSource, per_group: int = GRID_ROWS_PER_GROUP) -> list[tuple[str, int]]:
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


def plot_grid(m: Measurement | GridSource, samples: np.ndarray, train: np.ndarray, path: Path,
              names: TableNames | None = None) -> None:
    """Rows of generated | NN₁ | NN₂, each captioned with its name (index when unnamed) and the row's d₁/d₂."""
    plt = pyplot()
    rows = grid_rows(m)
    fig, axes = plt.subplots(len(rows), 3, figsize=(5.4, 1.35 * len(rows)), dpi=100, squeeze=False)
    for r, (group, i) in enumerate(rows):
        n1, n2 = int(m.nn1[i]), int(m.nn2[i])
        cells = [(samples[i], names.samples[i] if names else f"#{i}"),
                 (train[n1], names.train[n1] if names else f"#{n1}"),
                 (train[n2], names.train[n2] if names else f"#{n2}")]
        for c, (img, name) in enumerate(cells):
            ax = axes[r, c]
            _show(ax, img)
            head = ("generated", "NN1", "NN2")[c]
            title = f"{head}: {short(str(name))}"
            if c == 0 and (r == 0 or rows[r - 1][0] != group):
                title = f"{group}\n{title}"
            ax.set_title(title, fontsize=5.5)
        axes[r, 0].set_ylabel(f"d1/d2 {m.ratio[i]:.3f}", fontsize=6)
    fig.tight_layout()
    save_png(fig, path)


def copied_rows(m: Measurement, rows: int = COPIED_ROWS, per_row: int = COPIES_PER_ROW
                ) -> list[tuple[int, int, list[int]]]:
    """(training index, copies, up to ``per_row`` memorized samples with the lowest d₁/d₂ whose NN₁ it is)
    for the most copied distinct training images (copies > 0), most copied first."""
    copies, _ = group_counts(m)
    out = []
    for t in copy_rank(m, distinct=True)[:rows]:
        if copies[t] == 0:
            break
        mine = np.flatnonzero(m.memorized & (m.nn1 == t))
        mine = mine[np.argsort(m.ratio[mine], kind="stable")][:per_row]
        out.append((int(t), int(copies[t]), [int(i) for i in mine]))
    return out


def plot_copies(m: Measurement, samples: np.ndarray, train: np.ndarray, path: Path,
                names: TableNames | None = None) -> bool:
    """The most copied training images, each followed by a few of its copies; False when nothing is copied."""
    rows = copied_rows(m)
    if not rows:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), COPIES_PER_ROW + 1, figsize=(1.1 * (COPIES_PER_ROW + 1), 1.3 * len(rows)),
                             dpi=100, squeeze=False)
    for r, (t, count, mine) in enumerate(rows):
        _show(axes[r, 0], train[t])
        axes[r, 0].set_title(f"train: {short(str(names.train[t]) if names else f'#{t}', 18)}", fontsize=5.5)
        axes[r, 0].set_ylabel(f"{count:,} copies", fontsize=6)
        for c in range(COPIES_PER_ROW):
            ax = axes[r, c + 1]
            if c < len(mine):
                i = mine[c]
                _show(ax, samples[i])
                ax.set_title(f"{short(str(names.samples[i]) if names else f'#{i}', 18)}\nd1/d2 {m.ratio[i]:.3f}",
                             fontsize=5)
            else:
                ax.axis("off")
    fig.tight_layout()
    save_png(fig, path)
    return True
