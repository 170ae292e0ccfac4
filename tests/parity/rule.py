"""The deterministic weights and inputs behind the parity golden files (see README.md in this folder).

Every tensor of a backbone's state dict is drawn from its own NumPy generator seeded by the tensor's
name, so the same weights can be rebuilt anywhere from the names alone: the generator that wrote the
golden files used this module, and the tests rebuild the same weights with it.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from diffmem.config import MODEL_PRESETS, ModelConfig

# The configs of the golden files. Skip indices: 0 the input conv, then per level the down block (from
# level 1) and the level's blocks; the ncsnpp masks switch off a down block's skip (index 3), whose
# output the residual encoder still feeds forward.
TINY = ModelConfig(resolution=16, in_channels=3, channels=16, channel_mult=(1, 2, 2), blocks=2, attn_resolutions=(8,),
                   dropout=0.0, embedding="positional", label_dim=4,
                   skip_mask=(True, False, True, True, True, False, False, True, True))
CONFIGS: dict[str, ModelConfig] = {
    "tiny-ddpmpp": TINY,
    "tiny-ncsnpp": dataclasses.replace(TINY, arch="ncsnpp", embedding="fourier",
                                       skip_mask=(True, True, False, False, True, True, True, False, True)),
    "basic-ddpmpp": dataclasses.replace(MODEL_PRESETS["paper-basic"], resolution=32, in_channels=3),
    "basic-ncsnpp": dataclasses.replace(MODEL_PRESETS["paper-basic"], resolution=32, in_channels=3, arch="ncsnpp",
                                        embedding="fourier",
                                        skip_mask=(True, True, True, False, False, False, True, True, True)),
}
COUNT_ONLY: dict[str, ModelConfig] = {  # parameter counts only
    "basic-ddpmpp-4blocks": dataclasses.replace(CONFIGS["basic-ddpmpp"], blocks=4),
}
BATCH = {"tiny-ddpmpp": 4, "tiny-ncsnpp": 4, "basic-ddpmpp": 2, "basic-ncsnpp": 2}


def name_seed(name: str) -> int:
    """A 64-bit seed from a tensor's name (its key in the backbone's state dict)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def tensor_values(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The values of tensor ``name``: u ~ U(−1, 1) from the name's generator, scaled by kind.

    Weights (≥ 2 dims): u·√(3 / fan_in), fan_in = the product of all dims but the first (variance
    1/fan_in). GroupNorm scales (``norm*.weight``): 1 + 0.2u. Fourier frequencies (``map_noise.freqs``):
    4u. Other vectors (biases): 0.2u. float32.
    """
    u = np.random.default_rng(name_seed(name)).uniform(-1.0, 1.0, size=shape)
    if len(shape) >= 2:
        v = u * np.sqrt(3.0 / int(np.prod(shape[1:])))
    elif name.endswith("map_noise.freqs"):
        v = 4.0 * u
    elif name.split(".")[-2].startswith("norm") and name.endswith(".weight"):
        v = 1.0 + 0.2 * u
    else:
        v = 0.2 * u
    return v.astype(np.float32)


def fill_weights(backbone: torch.nn.Module) -> None:
    """Overwrite every tensor of ``backbone.state_dict()`` (parameters and saved buffers) by the rule."""
    with torch.no_grad():
        for name, t in backbone.state_dict().items():
            t.copy_(torch.from_numpy(tensor_values(name, tuple(t.shape))))


def inputs(key: str) -> dict[str, np.ndarray]:
    """Inputs of config ``key``: images x ~ N(0, 1), c_noise, σ, labels, uint8 training images, draws u, z, n."""
    cfg, n = CONFIGS[key], BATCH[key]
    rng = np.random.default_rng(name_seed("inputs/" + key))
    shape = (n, cfg.in_channels, cfg.resolution, cfg.resolution)
    return {
        "x": rng.standard_normal(shape).astype(np.float32),
        # c_noise as VP (≈ 0…1,000), EDM (¼ ln σ) and VE (ln σ/2) produce them
        "c_noise": np.array([250.0, -1.3, 2.4, 0.37][:n], dtype=np.float32),
        "sigma": np.array([0.05, 1.7, 0.4, 23.0][:n], dtype=np.float32),
        "labels": (np.arange(n) * 3 + 1) % max(cfg.label_dim, 1),
        "images": rng.integers(0, 256, shape, dtype=np.uint8),
        "u": rng.uniform(0.02, 0.98, n).astype(np.float32),  # VP, VE: U(0, 1) draws (away from float32 cancellation)
        "z": rng.standard_normal(n).astype(np.float32),  # EDM: N(0, 1) draws
        "noise": rng.standard_normal(shape).astype(np.float32),
    }
