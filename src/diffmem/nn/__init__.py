"""Networks: the DDPM++ / NCSN++ U-Net backbone and the VP / VE / EDM preconditioners.

``build_denoiser(cfg)`` is the one way to make a model: it validates the config (:func:`validate_model`) and
returns a denoiser D called as ``D(x, sigma, labels=None)``.
"""

from __future__ import annotations

import math

from diffmem.config import ModelConfig
from diffmem.errors import bad
from diffmem.nn.precond import PRECONDITIONERS, Denoiser, EDMPrecond, VEPrecond, VPPrecond, vp_sigma, vp_sigma_inv
from diffmem.nn.unet import ARCH_DEFAULTS, EMBEDDINGS, ENCODERS, UNet, noise_channels, num_skips, resolved_encoder

__all__ = ["Denoiser", "EDMPrecond", "UNet", "VEPrecond", "VPPrecond", "build_denoiser", "noise_channels",
           "num_skips", "resolved_encoder", "validate_model", "vp_sigma", "vp_sigma_inv"]


def validate_model(cfg: ModelConfig, *, where: str = "model", resolution: bool = True) -> None:
    """Refuse a model config that cannot be built, in one line naming the field by its config path
    (``model.channels``; ``where`` is the prefix) and what is expected.

    ``resolution``: whether ``cfg.resolution`` is the data's, so that the resolution levels can be checked against
    it; False before the data is known (``in_channels`` and ``label_dim`` are filled in from the data too).
    """
    def one_of(name: str, options) -> None:
        if getattr(cfg, name) not in options:
            raise bad(f"{where}.{name}", getattr(cfg, name), "one of " + ", ".join(sorted(options)))

    one_of("arch", ARCH_DEFAULTS)
    one_of("embedding", EMBEDDINGS)
    if cfg.encoder is not None:
        one_of("encoder", ENCODERS)
    if cfg.channel_mult_noise is not None and cfg.channel_mult_noise < 1:
        raise bad(f"{where}.channel_mult_noise", cfg.channel_mult_noise, "an integer ≥ 1 (noise-embedding channels ÷ "
                  "C), or null for the arch's (ddpmpp 1, ncsnpp 2)")
    one_of("precond", PRECONDITIONERS)
    if cfg.channels < 4 or cfg.channels % 2:
        raise bad(f"{where}.channels", cfg.channels, "an even number ≥ 4")
    if not cfg.channel_mult or any(m < 1 for m in cfg.channel_mult):
        raise bad(f"{where}.channel_mult", list(cfg.channel_mult), "one or more positive integers")
    if cfg.blocks < 1:
        raise bad(f"{where}.blocks", cfg.blocks, "an integer ≥ 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad(f"{where}.dropout", cfg.dropout, "a probability in [0, 1)")
    if cfg.label_dim < 0:
        raise bad(f"{where}.label_dim", cfg.label_dim, "a number of label classes ≥ 0 (0 = unconditional)")
    if not (math.isfinite(cfg.sigma_data) and cfg.sigma_data > 0):
        raise bad(f"{where}.sigma_data", cfg.sigma_data, "a positive, finite σ_data")
    # the training σ distribution (and the σ range the VP and VE preconditioners support)
    if not (math.isfinite(cfg.P_mean) and math.isfinite(cfg.P_std) and cfg.P_std >= 0):
        field = "P_mean" if not math.isfinite(cfg.P_mean) else "P_std"
        raise bad(f"{where}.{field}", getattr(cfg, field), "a finite number (P_std ≥ 0)")
    if not 0 < cfg.vp_epsilon_t < 1:
        raise bad(f"{where}.vp_epsilon_t", cfg.vp_epsilon_t, "the smallest training t, in (0, 1)")
    if not 0 < cfg.ve_sigma_min < cfg.ve_sigma_max < math.inf:
        raise bad(f"{where}.ve_sigma_min", cfg.ve_sigma_min, f"0 < {where}.ve_sigma_min < {where}.ve_sigma_max "
                  f"({cfg.ve_sigma_max}) < inf")
    if cfg.skip_mask is not None and len(cfg.skip_mask) != num_skips(cfg):
        raise bad(f"{where}.skip_mask", len(cfg.skip_mask), f"{num_skips(cfg)} flags, one per skip of this model "
                  f"({len(cfg.channel_mult)} levels × ({cfg.blocks} blocks + 1))", shown=f"{len(cfg.skip_mask)} flags")
    if resolution:
        down = 2 ** (len(cfg.channel_mult) - 1)
        if cfg.resolution < down or cfg.resolution % down:
            raise bad(f"{where}.channel_mult", list(cfg.channel_mult), f"at most as many levels as the data's "
                      f"{cfg.resolution}×{cfg.resolution} images can be halved into ({len(cfg.channel_mult)} levels "
                      f"need a resolution divisible by {down})")


def build_denoiser(cfg: ModelConfig) -> Denoiser:
    """The denoiser D(x; σ, labels) for ``cfg``: a :class:`UNet` wrapped by its preconditioner."""
    validate_model(cfg)
    return PRECONDITIONERS[cfg.precond](UNet(cfg), cfg)
