"""Per-sample random streams: sample k draws all its randomness from its own generator.

Sample k's generator is seeded with its seed (``seed + k`` in :func:`diffmem.sample.generate`), and
every sample draws the same sequence of shapes (initial noise, its label, then churn noise per
step), so a sample does not depend on the batch it was drawn in, nor on the device count. Noise is
drawn on the CPU in float64 and moved to the working device, so it is the same on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffmem.errors import bad

SEED_MAX = 2**63 - 1


class SeedNoise:
    """One ``torch.Generator`` per sample; ``randn_like(x)`` stacks one draw per sample along dim 0."""

    def __init__(self, seeds: Sequence[int] | np.ndarray | torch.Tensor):
        seeds = [int(s) for s in np.asarray(seeds, dtype=np.int64).reshape(-1)]
        for s in seeds:
            if s < 0:
                raise bad("seed", s, "an integer >= 0")
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float64,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard normal noise of shape ``(len(self), *shape)``; row k from generator k."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``x`` (whose first dimension is the sample index), in ``x``'s dtype and device."""
        if x.shape[0] != len(self):
            raise ValueError(f"x has {x.shape[0]} rows but there are {len(self)} per-sample generators")
        return self.randn(x.shape[1:], dtype=x.dtype, device=x.device)

    def randint(self, high: int) -> torch.Tensor:
        """One integer uniform in ``[0, high)`` per sample (int64, CPU)."""
        return torch.cat([torch.randint(high, (1,), generator=g) for g in self.generators])
