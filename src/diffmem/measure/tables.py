"""Tables a person can act on: the per-sample table and the copy ranking, by index *and* name.

Both depend only on a :class:`~diffmem.measure.core.Measurement` and the names and labels of the
images, never on what the vectors were (pixels or features). Copies are counted per group of identical
training images (the measurement's NN₁ is the lowest index of its group): every member of a group
shows the group's count, and "distinct training images copied" counts each group once.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffmem.artefacts import atomic_write_text
from diffmem.io import ImageSet, default_names
from diffmem.measure.core import Measurement

TOP_SHARE = 0.01  # "the top 1 % of training images"
MOST_COPIED_LISTED = 10  # entries of summary["most_copied"]


@dataclass(frozen=True)
class TableNames:
    """Names and labels of the samples and the training images (index i ↔ name i)."""

    samples: np.ndarray  # str n
    train: np.ndarray  # str N
    sample_labels: np.ndarray | None = None  # int64 n, −1 = none
    train_labels: np.ndarray | None = None  # int64 N, −1 = none

    @staticmethod
    def of(samples: ImageSet | np.ndarray | None, train: ImageSet | np.ndarray | None, n: int, n_train: int
           ) -> TableNames:
        """Names of image sets (their own, or ``seed-000123`` / ``#i``); vectors get ``#i``."""
        def names(x, count):
            if isinstance(x, ImageSet):
                return x.names if x.names is not None else default_names(count, x.seeds)
            return default_names(count)

        def labels(x):
            return x.labels if isinstance(x, ImageSet) else None

        return TableNames(samples=names(samples, n), train=names(train, n_train), sample_labels=labels(samples),
                          train_labels=labels(train))


def group_counts(m: Measurement) -> tuple[np.ndarray, np.ndarray]:
    """Per training image: memorized samples whose NN₁ is its duplicate group, and all samples whose NN₁ it is."""
    n_train = m.train_canonical.shape[0]
    copies = np.bincount(m.nn1[m.memorized], minlength=n_train)  # nn1 ids are canonical
    nearest = np.bincount(m.nn1, minlength=n_train)
    return copies[m.train_canonical], nearest[m.train_canonical]


def copy_rank(m: Measurement, distinct: bool = False) -> np.ndarray:
    """Training indices, most copied first: by copies, then samples whose NN₁ it is, then index (the order of
    ``copies.csv``); ``distinct``: one image per group of identical ones (its lowest index)."""
    copies, nearest = group_counts(m)
    idx = np.arange(copies.shape[0])
    if distinct:
        idx = idx[m.train_canonical == idx]
    return idx[np.lexsort((idx, -nearest[idx], -copies[idx]))]


def copy_summary(m: Measurement, names: TableNames | None = None) -> dict[str, Any]:
    """``n_train_copied``, ``top1pct_images``, ``top1pct_share``, ``max_copies`` and ``most_copied``."""
    copies, _ = group_counts(m)
    heads = copy_rank(m, distinct=True)
    per_group = copies[heads]
    k = max(1, math.ceil(TOP_SHARE * heads.size))
    n_mem = int(m.memorized.sum())
    top = per_group[:k]
    most = [{"train_index": int(i), "name": None if names is None else str(names.train[i]),
             "copies": int(copies[i])} for i in heads[:MOST_COPIED_LISTED] if copies[i] > 0]
    return {
        "n_train_copied": int(np.count_nonzero(per_group)),
        "top1pct_images": int(k),
        "top1pct_share": float(top.sum() / n_mem) if n_mem else None,
        "max_copies": int(per_group.max()) if per_group.size else 0,
        "most_copied": most,
    }


def _label(labels: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    return np.full(idx.shape[0], -1, np.int64) if labels is None else labels[idx]


def sample_columns(m: Measurement, names: TableNames) -> dict[str, np.ndarray]:
    """The columns of ``table.csv``, one row per sample in input order."""
    i = m.sample_index
    return {
        "sample_index": i, "sample_name": names.samples[i], "seed": m.seeds, "label": _label(names.sample_labels, i),
        "nn1_index": m.nn1, "nn1_name": names.train[m.nn1], "nn2_index": m.nn2, "nn2_name": names.train[m.nn2],
        "d1": m.d1, "d2": m.d2, "ratio": m.ratio, "memorized": m.memorized, "nn1_duplicates": m.nn1_copies,
    }


def copy_columns(m: Measurement, names: TableNames) -> dict[str, np.ndarray]:
    """The columns of ``copies.csv``: every training image, most copied first (then most often NN₁, then index)."""
    copies, nearest = group_counts(m)
    idx = np.arange(copies.shape[0])
    order = copy_rank(m)
    group_size = np.bincount(m.train_canonical, minlength=idx.size)[m.train_canonical]
    return {
        "rank": np.arange(1, idx.size + 1), "train_index": idx[order], "train_name": names.train[order],
        "label": _label(names.train_labels, order), "copies": copies[order], "nn1_samples": nearest[order],
        "duplicates": group_size[order], "duplicate_of": m.train_canonical[order],
    }


def _cell(v: Any, key: str) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if key in ("seed", "label") and int(v) < 0:
        return ""  # unknown
    return str(v)


def csv_text(columns: dict[str, np.ndarray]) -> str:
    """The columns as CSV text (header first; floats to full precision, unknown seeds and labels empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(columns)
    w.writerow(keys)
    for row in zip(*(columns[k].tolist() for k in keys)):
        w.writerow([_cell(v, k) for v, k in zip(row, keys)])
    return buf.getvalue()


def write_csv(path: str | os.PathLike, columns: dict[str, np.ndarray]) -> None:
    atomic_write_text(path, csv_text(columns))
