"""Device selection and thread settings shared by training, sampling and measurement."""

from __future__ import annotations

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
