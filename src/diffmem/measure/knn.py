"""Exact two-nearest-neighbour search in blocks (torch on CPU or GPU, or FAISS).

Fast stage (torch): for a chunk of queries, stream the distinct training rows in blocks; per block
one matrix product gives the scores s = ‖b‖² − 2a·b (‖a‖² is constant per query and left out), and a
running top-k with global ids keeps the ``candidates`` best. Exact stage: :mod:`.exact` re-ranks the
candidates by exact distances and certifies each answer by a rounding bound; :func:`widen` settles
the rare query it cannot certify.
Block sizes come from a memory budget; TF32 is switched off so the rounding bound holds on GPUs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from diffmem.errors import UsageError, bad
from diffmem.extras import require
from diffmem.measure.exact import exact_sq_dist, rerank, score_error_bound
from diffmem.measure.vectors import TrainIndex, sq_norms
from diffmem.progress import progress_bar

log = logging.getLogger(__name__)
MIN_MEMORY_MB = 16  # the smallest working-memory budget of a search
BACKENDS = ("torch", "faiss")  # the fast stage: torch matrix products, or a FAISS flat index ([faiss] extra)

MAX_BLOCK_ROWS = 4096  # training rows per matrix product (a good GEMM shape on 2 CPU cores)
MAX_QUERY_ROWS = 2048  # query rows per matrix product


@dataclass(frozen=True)
class Neighbours:
    """NN₁ and NN₂ of each query: canonical training ids and exact squared distances (float64)."""

    ids: np.ndarray  # int64 n×2
    sq_dist: np.ndarray  # float64 n×2
    n_fallback: int  # queries the bound did not certify at once, settled by :func:`widen`


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """No TF32 (or other reduced precision) in float32 matrix products while the block runs."""
    old_prec = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def block_sizes(
    n_queries: int, dim: int, memory_mb: int, convert_train: bool, convert_queries: bool,
) -> tuple[int, int]:
    """(query rows, training rows) per block so the working set fits in ``memory_mb``."""
    budget = memory_mb * (1 << 20)
    if memory_mb < MIN_MEMORY_MB:
        raise bad("memory_mb", memory_mb, f"a working-memory budget of at least {MIN_MEMORY_MB} MiB")
    mb = MAX_BLOCK_ROWS
    while mb > 64 and convert_train and mb * dim * 4 > budget // 4:
        mb //= 2
    per_query = mb * 4 * 2 + (dim * 4 if convert_queries else 0)  # scores (+ topk scratch) + float32 copy
    nq = int(min(n_queries, MAX_QUERY_ROWS, max(1, (budget - (mb * dim * 4 if convert_train else 0)) // per_query)))
    return max(nq, 1), mb


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


class _Scorer:
    """Float32 scores s = ‖b‖² − 2a·b of query chunks against blocks of distinct training rows."""

    def __init__(self, index: TrainIndex, device: torch.device, mb: int) -> None:
        self.index, self.device, self.mb = index, device, mb
        self.uid = index.unique_ids
        self.contiguous = self.uid.shape[0] == index.n  # no duplicates: blocks are plain slices
        self.tv = torch.from_numpy(index.vectors)
        self.nb32 = torch.from_numpy(index.sq_norms[self.uid]).to(device, torch.float32)
        self.uid_t = torch.from_numpy(self.uid).to(device)

    def n_blocks(self) -> int:
        return -(-self.uid.shape[0] // self.mb)

    def blocks(self, q: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(first position in unique_ids, scores q × block); the score buffer is reused."""
        u = self.uid.shape[0]
        scores = torch.empty(q.shape[0], min(self.mb, u), device=self.device)
        for j in range(0, u, self.mb):
            m = min(self.mb, u - j)
            rows = self.tv[j:j + m] if self.contiguous else self.tv[torch.from_numpy(self.uid[j:j + m])]
            b = _as_float32(rows.to(self.device))
            s = scores[:, :m]
            # s = ‖b‖² − 2 a·b  (‖a − b‖² without the per-query constant ‖a‖²), one GEMM
            torch.addmm(self.nb32[j:j + m], q, b.T, beta=1.0, alpha=-2.0, out=s)
            yield j, s


def fast_candidates(
    queries: np.ndarray, index: TrainIndex, k: int, device: torch.device, memory_mb: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Running top-k over blocks of distinct training rows: (ids n×k, float32 scores n×k)."""
    n, dim = queries.shape
    nq, mb = block_sizes(n, dim, memory_mb, index.vectors.dtype != np.float32 or device.type != "cpu",
                         queries.dtype != np.float32 or device.type != "cpu")
    scorer = _Scorer(index, device, mb)
    out_ids = np.empty((n, k), np.int64)
    out_score = np.empty((n, k), np.float32)
    bar = None
    if progress:
        bar = progress_bar(-(-n // nq) * scorer.n_blocks(), "nearest-neighbour blocks", "block")
    with full_precision(), torch.inference_mode():
        for i in range(0, n, nq):
            q = _as_float32(torch.from_numpy(queries[i:i + nq]).to(device))
            best_s = torch.full((q.shape[0], k), float("inf"), device=device)
            best_i = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=device)
            for j, s in scorer.blocks(q):
                # running top-k with global ids: the block's k best merged with the best so far
                vs, vi = torch.topk(s, min(k, s.shape[1]), dim=1, largest=False, sorted=False)
                best_s, order = torch.topk(torch.cat([best_s, vs], 1), k, dim=1, largest=False, sorted=False)
                best_i = torch.gather(torch.cat([best_i, scorer.uid_t[j + vi]], 1), 1, order)
                if bar is not None:
                    bar.update(1)
            out_ids[i:i + q.shape[0]] = best_i.cpu().numpy()
            out_score[i:i + q.shape[0]] = best_s.cpu().numpy()
    if bar is not None:
        bar.close()
    return out_ids, out_score


def widen(
    queries: np.ndarray, index: TrainIndex, ids: np.ndarray, sq: np.ndarray, q_sq: np.ndarray,
    device: torch.device, memory_mb: int, chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact NN₁/NN₂ for queries the bound did not certify, given an exact upper bound on d₂.

    Every row with true d² ≤ current d₂² has float32 score ≤ d₂² − ‖a‖² + E, so re-ranking exactly all
    rows under that limit (plus the current two) yields the true two nearest, ties by lower index.
    """
    _, mb = block_sizes(min(chunk, queries.shape[0]), index.dim, memory_mb, True, True)
    scorer = _Scorer(index, device, mb)
    E = score_error_bound(np.sqrt(q_sq), index.max_norm, index.dim)
    out_ids, out_sq = ids.copy(), sq.copy()
    with full_precision(), torch.inference_mode():
        for i in range(0, queries.shape[0], chunk):
            sl = slice(i, min(i + chunk, queries.shape[0]))
            q = _as_float32(torch.from_numpy(queries[sl]).to(device))
            limit = torch.from_numpy(sq[sl, 1] - q_sq[sl] + E[sl]).to(device)
            qi_all, ti_all = [np.repeat(np.arange(sl.start, sl.stop), 2)], [ids[sl].ravel()]
            for j, s in scorer.blocks(q):
                r, c = torch.nonzero(s.double() <= limit[:, None], as_tuple=True)
                qi_all.append(r.cpu().numpy() + sl.start)
                ti_all.append(scorer.uid[j + c.cpu().numpy()])
            qi, ti = np.concatenate(qi_all), np.concatenate(ti_all)
            keep = np.unique(np.stack([qi, ti]), axis=1)  # the current two may be found again
            qi, ti = keep[0], keep[1]
            d = exact_sq_dist(queries, qi, index.vectors, ti)
            order = np.lexsort((ti, d, qi))  # by query, then distance, then lower id
            qi, ti, d = qi[order], ti[order], d[order]
            first = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])
            out_ids[qi[first]], out_sq[qi[first]] = np.stack([ti[first], ti[first + 1]], 1), \
                np.stack([d[first], d[first + 1]], 1)
    return out_ids, out_sq


def faiss_candidates(queries: np.ndarray, index: TrainIndex, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates from a FAISS IndexFlatL2 over the distinct rows: (ids n×k, float32 ‖a−b‖² n×k)."""
    faiss = require("faiss", "faiss", "--backend faiss")
    flat = faiss.IndexFlatL2(index.dim)
    rows = index.vectors[index.unique_ids] if index.n_unique < index.n else index.vectors
    flat.add(np.ascontiguousarray(rows, dtype=np.float32))
    dist, pos = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return index.unique_ids[pos], dist


def search(
    queries: np.ndarray,  # n×D, same dtype family as the training vectors
    index: TrainIndex,  # prepared training set (see vectors.prepare_train)
    *,
    candidates: int = 8,  # rows kept per query by the fast stage before the exact re-rank
    backend: str = "torch",  # one of BACKENDS
    device: torch.device | str = "cpu",
    memory_mb: int = 1024,  # working-memory budget of the fast stage
    progress: bool = False,
) -> Neighbours:
    """Exact NN₁ and NN₂ (distinct pixels) of each query among the training rows."""
    if queries.ndim != 2 or queries.shape[1] != index.dim:
        raise UsageError(f"queries have {queries.shape[1:]} values each but training vectors have {index.dim}; "
                         "expected the same length")
    if candidates < 2:
        raise bad("candidates", candidates, "at least 2")
    device = torch.device(device)
    k = min(candidates, index.n_unique)
    q_sq = sq_norms(queries)
    if backend == "torch":
        cand_ids, cand_score = fast_candidates(queries, index, k, device, memory_mb, progress)
        offset = q_sq
    elif backend == "faiss":
        cand_ids, cand_score = faiss_candidates(queries, index, k)
        offset = np.zeros_like(q_sq)
    else:
        raise bad("backend", backend, " or ".join(BACKENDS))
    ids, sq, certified = rerank(queries, index, cand_ids, cand_score, offset, q_sq, backend == "faiss")
    todo = np.flatnonzero(~certified)
    if todo.size:
        log.info("%d of %d queries not certified by the float32 bound; widening their exact re-rank",
                 todo.size, queries.shape[0])
        sub = np.ascontiguousarray(queries[todo])
        ids[todo], sq[todo] = widen(sub, index, ids[todo], sq[todo], q_sq[todo], device, memory_mb)
    return Neighbours(ids=ids, sq_dist=sq, n_fallback=int(todo.size))
