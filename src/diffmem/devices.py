"""Device selection and thread settings shared by training, sampling and measurement."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from diffmem.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device: {name!r} is not valid; expected auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device: {name!r} is not available on this machine; expected auto or cpu")
    return dev


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
