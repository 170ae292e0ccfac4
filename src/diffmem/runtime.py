"""Process settings that make small CPU workloads fast: the C allocator's thresholds and intra-op threads.

**Allocator.** A training step of the digits model frees and reallocates a few hundred tensors of
64 kB – 16 MB. With glibc's default thresholds each of the larger ones is a fresh ``mmap`` (or heap
memory just returned to the system), so the pages are faulted in and zeroed again on every step:
~1,900 page faults per training step of the digits model and ~35,000 per 1,000-sample forward pass
of its sampler, 14 % and 44 % of their CPU time. :func:`tune_allocator` raises the ``mmap``
threshold to its maximum (32 MB) and keeps up to 512 MB of freed memory for reuse instead of handing
it back. Arithmetic is unchanged (results are bit-identical); the price is that freed memory stays
with the process. glibc only; elsewhere a no-op.

**Threads.** :func:`intra_op_threads` sets torch's intra-op thread count for a block and restores it;
:func:`run_concurrently` runs independent tasks (e.g. sampling several snapshots) on several threads
with one intra-op thread each.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc <malloc.h>)
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 512 << 20  # freed memory kept for reuse before any is returned to the system

_tuned: bool | None = None
T = TypeVar("T")


def tune_allocator() -> bool:
    """Set glibc's allocator thresholds once per process (see the module docstring); True when set."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.debug("allocator left as it is: not glibc")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD) == 1
    except (OSError, AttributeError) as e:
        log.debug("allocator left as it is: %s", e)
        return False
    _tuned = bool(ok)
    log.debug("allocator thresholds: mmap %d MB, trim %d MB (%s)", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20,
              "set" if ok else "refused")
    return _tuned


@contextlib.contextmanager
def intra_op_threads(n: int | None = None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (``None``: left as it is, to be set
    inside), and the caller's count restored after it."""
    import torch

    old = torch.get_num_threads()
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def run_concurrently(tasks: Sequence[Callable[[], T]], threads: int) -> Iterator[T]:
    """The tasks' results, in order. With ``threads`` ≥ 2, up to that many tasks run at once, each on one
    intra-op thread (independent small-model work spreads over cores better than one intra-op team);
    otherwise one after another as they are."""
    workers = min(threads, len(tasks))
    if workers < 2:
        for task in tasks:
            yield task()
        return
    with intra_op_threads(1):
        pool = ThreadPoolExecutor(workers, thread_name_prefix="diffmem-task")
        try:
            futures = [pool.submit(task) for task in tasks]
            for f in futures:
                yield f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
