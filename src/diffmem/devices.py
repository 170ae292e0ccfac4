"""Device selection and thread settings shared by training, sampling and measurement."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from diffmem.errors import UsageError, bad


def check_device_name(name: str, option: str = "device") -> None:
    """Refuse a device that is not written as ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it
    is :func:`resolve_device`'s question: a sweep's jobs may run on other machines)."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise bad(option, name, "auto, cpu, cuda or cuda:N") from e


def resolve_device(name: str = "auto", option: str = "device") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; ``option`` is what an error calls ``name``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name, option)
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option}: {name!r} is not available on this machine; expected auto or cpu")
    return dev


# libraries that read their thread count from the environment when they load
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(n: int, name: str = "threads") -> None:
    """Use ``n`` CPU threads in this process: torch's intra-op pool, the BLAS and OpenMP pools already loaded
    (NumPy's, through threadpoolctl), and the environment that libraries loaded later read. ``name`` is
    what an error calls ``n``."""
    from threadpoolctl import threadpool_limits

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad(name, n, "a positive number of threads")
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    threadpool_limits(limits=n)
@contextlib.contextmanager
def exact_float32(enabled: bool = True) -> Iterator[None]:
    """Within: no TF32 in CUDA matrix products and convolutions (as the reference study's training loop sets),
    so float32 means float32 on GPUs that would round to TF32; the previous settings are restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
