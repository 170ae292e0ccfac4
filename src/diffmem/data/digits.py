"""The embedded default source: scikit-learn's 1,797 8×8 handwritten digits (``digits``; offline)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from diffmem.data.source import Source
from diffmem.errors import UsageError


def digits_uint8(v: np.ndarray) -> np.ndarray:
    """scikit-learn digit intensities 0..16 → uint8 0..255: ⌊v·255/16 + ½⌋ (round half up)."""
    return np.floor(np.asarray(v, dtype=np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def _digits_table(option: str) -> np.ndarray:
    """scikit-learn's digits table (1,797 rows: 64 intensities 0..16, then the digit).

    Read straight from the CSV file scikit-learn ships (importing ``sklearn.datasets`` costs
    seconds); through ``sklearn.datasets.load_digits`` when that file is not where expected.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise UsageError(f"{option}: 'digits' needs scikit-learn, which is not installed; pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        if table.shape == (1797, 65):
            return table
    from sklearn.datasets import load_digits as sk_load_digits  # seconds to import: only when the file is missing

    d = sk_load_digits()
    return np.concatenate([d.data, d.target[:, None]], axis=1)


def load_digits(spec: str = "digits", option: str = "data.source") -> Source:
    """scikit-learn's 1,797 8×8 digits as uint8 1×8×8 images with labels 0..9 (``option``: what errors call the
    source)."""
    table = _digits_table(option)
    images = digits_uint8(table[:, :64]).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    return Source(images=np.ascontiguousarray(images), labels=labels,
                  class_names=tuple(str(i) for i in range(10)), spec=spec,
                  inputs={"sklearn_digits": "scikit-learn's digits (1,797 images)"})
