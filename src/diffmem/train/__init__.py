"""Training: losses, EMA, checkpoints (safetensors), the data order and the loop (one process or DDP).

``train(data, run, model, train, progress=False)`` trains (or resumes) a run directory;
``checkpoints.load_denoiser`` and ``checkpoints.list_snapshots`` read its weights back.
"""

from diffmem.train.checkpoints import list_snapshots, load_denoiser
from diffmem.train.loop import train

__all__ = ["list_snapshots", "load_denoiser", "train"]
