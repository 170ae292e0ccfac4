"""Exact second stage of the search: error bounds, float64/integer re-rank, brute-force fallback.

The fast first stage ranks training rows by float32 scores. Here the surviving candidates are
re-ranked by exact squared distances (integers for uint8 pixels, float64 for features), and a
rigorous rounding bound certifies for each query that no row outside the candidates can be NN₁ or
NN₂. The rare query that is not certified is searched again (see ``knn.widen``): every row whose float32
score could reach its current exact d₂ is re-ranked exactly. Ties are broken by the lower index.
"""

from __future__ import annotations

import numpy as np

from diffmem.measure.vectors import TrainIndex

U32 = 2.0**-24  # unit roundoff of float32
RERANK_CHUNK_PAIRS = 128  # (query, candidate) pairs per chunk of the exact re-rank (stays in cache)


def gamma(n: int, u: float = U32) -> float:
    """γₙ = n·u / (1 − n·u): the classic bound on rounding in an n-term dot product (Higham, Lemma 3.1)."""
    return n * u / (1.0 - n * u)


def score_error_bound(q_norm: np.ndarray, max_norm: float, dim: int, float32_norms: bool = False) -> np.ndarray:
    """Bound E on |ŝ − s| for float32 scores of the search.

    Covers s = ‖b‖² − 2a·b (torch backend, norms exact in float64 then rounded once) and
    ‖a‖² + ‖b‖² − 2a·b (FAISS, norms summed in float32: ``float32_norms``), with inputs rounded to
    float32 and any summation order: |fl(a·b) − a·b| ≤ γ_{D+2}‖a‖‖b‖ (Cauchy–Schwarz on |a|, |b|),
    plus one rounding of each norm and of the result; doubled for margin.
    """
    a, m = q_norm.astype(np.float64), float(max_norm)
    E = 4.0 * gamma(dim + 2) * a * m + 4.0 * U32 * (m * m + 2.0 * a * m + a * a)
    if float32_norms:
        E = E + 2.0 * gamma(dim) * (a * a + m * m)
    return E


def exact_sq_dist(queries: np.ndarray, qi: np.ndarray, train: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """Exact ‖queries[qi] − train[ti]‖² for each pair, as float64.

    uint8: integer differences and sums (exact). Features: differences and sums in float64, so an
    exact copy gives exactly 0. Small chunks keep the work in cache.
    """
    out = np.empty(qi.shape[0], np.float64)
    if train.dtype == np.uint8:
        work = np.int32 if train.shape[1] * 255 * 255 < 2**31 else np.int64
    else:
        work = np.float64
    step = RERANK_CHUNK_PAIRS
    for s in range(0, qi.shape[0], step):
        b = train[ti[s:s + step]].astype(work)
        b -= queries[qi[s:s + step]].astype(work)
        out[s:s + step] = np.einsum("ij,ij->i", b, b)
    return out


def pick_two(ids: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the two smallest by (squared distance, id): ids and squared distances, n×2 each."""
    order = np.lexsort((ids, sq), axis=-1)[:, :2]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(sq, order, 1)


def rerank(
    queries: np.ndarray,
    index: TrainIndex,
    cand_ids: np.ndarray,  # n×k canonical training ids from the fast stage
    cand_score: np.ndarray,  # n×k their float32 scores (any constant per-query offset)
    offset: np.ndarray,  # n: add to a score to get a squared distance (‖a‖² or 0)
    q_sq_norms: np.ndarray,  # n: exact ‖a‖²
    float32_norms: bool = False,  # the scores' norms were summed in float32 (FAISS)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact NN₁/NN₂ among the candidates, and a mask of queries whose answer is certified.

    Candidates that cannot be among the two nearest (float score beyond the second best + 2E) are
    skipped; the certificate holds when the exact second distance is below every bound a row outside
    the candidates could reach: d₂² < (k-th score + offset) − E.
    """
    n, k = cand_ids.shape
    score = cand_score.astype(np.float64) + offset[:, None]
    E = score_error_bound(np.sqrt(q_sq_norms), index.max_norm, index.dim, float32_norms)
    second = np.sort(score, axis=1)[:, 1]
    need = score <= (second + 2.0 * E)[:, None]
    qi, ci = np.nonzero(need)
    sq = np.full((n, k), np.inf)
    sq[qi, ci] = exact_sq_dist(queries, qi, index.vectors, cand_ids[qi, ci])
    ids, d_sq = pick_two(cand_ids, sq)
    if k >= index.n_unique:
        certified = np.ones(n, bool)
    else:
        certified = d_sq[:, 1] < score.max(axis=1) - E
    return ids, d_sq, certified
