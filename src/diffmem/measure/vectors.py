"""Search inputs: image sets or feature matrices as N×D vectors, and the deduplicated training index.

Any fixed-length vectors can be searched (the feature-space hook): uint8 pixel vectors are compared
exactly in integers, float vectors in float64. Exact duplicates inside the training set are found by
hashing rows and verifying equal hashes byte for byte; each group of identical rows is represented by
its lowest index (the canonical id), so NN₂ is always an image whose pixels differ from NN₁'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from diffmem.errors import UsageError, bad
from diffmem.io import ImageSet
from diffmem.seeds import ROW_HASH

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 32 << 20  # rows hashed per chunk: bounded extra memory


def as_vectors(x: ImageSet | np.ndarray, what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` as a C-contiguous N×D matrix (uint8 kept as uint8) and the per-item shape.

    Accepts an :class:`ImageSet`, a uint8 array N×C×H×W (or N×H×W), or a float/integer matrix N×D
    of features. Float inputs must be finite.
    """
    a = x.images if isinstance(x, ImageSet) else np.asarray(x)
    if a.ndim < 2:
        raise UsageError(f"{what}: array has shape {a.shape}; expected N×C×H×W images or N×D vectors")
    if a.shape[0] == 0:
        raise UsageError(f"{what}: holds no images or vectors; expected at least one")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise bad(what, a, "uint8 pixels or real feature vectors", shown=f"dtype {a.dtype}")
    shape = tuple(int(s) for s in a.shape[1:])
    v = a.reshape(a.shape[0], -1)
    if v.dtype != np.uint8:
        if np.issubdtype(v.dtype, np.integer):
            v = v.astype(np.float64)
        elif v.dtype not in (np.float32, np.float64):
            v = v.astype(np.float32)
        if not (np.isfinite(v.max()) and np.isfinite(v.min())):  # NaN propagates through max/min
            raise UsageError(f"{what}: vectors hold NaN or inf; expected finite values")
    return np.ascontiguousarray(v), shape


DISTANCES = ("l2", "cosine")  # ℓ2, or cosine distance 1 − cos on L2-normalized feature vectors


def unit_rows(x: ImageSet | np.ndarray, what: str) -> np.ndarray:
    """Feature vectors scaled to unit ℓ2 norm, in float64 (so cosine distances keep float64 accuracy).

    For unit vectors ‖â − b̂‖² = 2 − 2·cos(a, b): the exact ℓ2 search on them ranks by cosine.
    """
    v, _ = as_vectors(x, what)
    if v.dtype == np.uint8:
        raise UsageError(f"{what}: cosine distance applies to feature vectors, not uint8 pixels; "
                         "expected float features (see --features) or the l2 distance")
    v = v.astype(np.float64)
    norms = np.sqrt(sq_norms(v))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise UsageError(f"{what}: vector {int(zero[0])} is all zeros ({zero.size} such); expected nonzero "
                         "feature vectors for the cosine distance")
    return v / norms[:, None]


def sq_norms(v: np.ndarray) -> np.ndarray:
    """Squared norms of the rows in float64, in chunks (exact for uint8 pixels)."""
    out = np.empty(v.shape[0], np.float64)
    step = max(1, HASH_CHUNK_BYTES // max(v.shape[1] * v.itemsize, 1))
    for i in range(0, v.shape[0], step):
        c = v[i:i + step]
        out[i:i + step] = np.einsum("ij,ij->i", c, c, dtype=np.float64)  # float64 accumulation
    return out


def check_compatible(samples_shape: tuple[int, ...], train_shape: tuple[int, ...]) -> None:
    """Samples and training items must have the same shape (C×H×W or D)."""
    if samples_shape != train_shape:
        raise UsageError(f"--samples: items have shape {samples_shape} but --train items have {train_shape}; "
                         "expected the same shape (resize or convert one of them)")


@dataclass(frozen=True)
class TrainIndex:
    """Training vectors prepared for exact search.

    ``vectors`` keeps the original order; ``canonical[i]`` is the lowest index of the rows identical to
    row i; ``unique_ids`` lists the canonical rows (ascending); ``sq_norms`` are exact ‖b‖² in float64.
    """

    vectors: np.ndarray  # N×D uint8 or float
    shape: tuple[int, ...]  # per-item shape (C×H×W for images)
    canonical: np.ndarray  # int64 N
    unique_ids: np.ndarray  # int64 U
    group_size: np.ndarray  # int64 N: size of each row's duplicate group
    sq_norms: np.ndarray  # float64 N

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_unique(self) -> int:
        return int(self.unique_ids.shape[0])

    @property
    def duplicate_groups(self) -> int:
        """Groups of two or more identical training rows."""
        return int(np.count_nonzero(self.group_size[self.unique_ids] > 1))

    @property
    def is_uint8(self) -> bool:
        return self.vectors.dtype == np.uint8

    @property
    def max_norm(self) -> float:
        return float(np.sqrt(self.sq_norms[self.unique_ids].max()))


def _row_hashes_and_norms(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of each row's values (−0.0 folded into +0.0) and float64 squared norms."""
    n, d = v.shape
    row_bytes = d * v.itemsize
    words = -(-row_bytes // 8)
    # fixed odd multipliers: a linear hash mod 2^64; equal hashes are verified byte for byte afterwards
    w = np.random.default_rng(ROW_HASH).integers(0, 2**63, size=words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    hashes = np.empty(n, np.uint64)
    step = max(1, HASH_CHUNK_BYTES // max(row_bytes, 1))
    buf = np.zeros((min(step, n), words * 8), np.uint8)  # reused: one allocation for every chunk
    for i in range(0, n, step):
        c = v[i:i + step]
        b = buf[:c.shape[0]]
        if c.dtype == np.uint8:
            b[:, :row_bytes] = c
        else:  # −0.0 + 0.0 = +0.0, so equal values hash equally
            np.add(c, c.dtype.type(0), out=b[:, :row_bytes].view(c.dtype))
        hashes[i:i + step] = b.view(np.uint64) @ w  # integer matmul wraps modulo 2^64
    return hashes, sq_norms(v)


def prepare_train(x: ImageSet | np.ndarray, what: str = "--train") -> TrainIndex:
    """Deduplicate and index the training set; at least two distinct rows are needed."""
    v, shape = as_vectors(x, what)
    n = v.shape[0]
    hashes, norms = _row_hashes_and_norms(v)
    canonical = np.arange(n, dtype=np.int64)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    if np.any(counts > 1):
        order = np.argsort(inverse, kind="stable")  # rows grouped by hash, ascending index inside
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for s, c in zip(starts[counts > 1], counts[counts > 1]):
            rows = list(order[s:s + c])
            while rows:  # split one hash bucket into classes of truly identical rows
                head, rest = rows[0], rows[1:]
                equal = [bool(np.array_equal(v[r], v[head])) for r in rest]
                canonical[[r for r, e in zip(rest, equal) if e]] = head
                rows = [r for r, e in zip(rest, equal) if not e]
    unique_ids = np.flatnonzero(canonical == np.arange(n))
    group_count = np.bincount(canonical, minlength=n)
    group_size = group_count[canonical].astype(np.int64)
    if unique_ids.shape[0] < 2:
        raise UsageError(f"{what}: holds {n} image(s) but only {unique_ids.shape[0]} distinct one(s); "
                         "expected at least two distinct training images (NN₂ must exist)")
    index = TrainIndex(vectors=v, shape=shape, canonical=canonical, unique_ids=unique_ids.astype(np.int64),
                       group_size=group_size, sq_norms=norms)
    if index.duplicate_groups:
        log.info("training set: %d rows, %d distinct, %d duplicate groups", n, index.n_unique,
                 index.duplicate_groups)
    return index
