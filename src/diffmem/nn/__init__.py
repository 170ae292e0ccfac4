"""Networks: the DDPM++ / NCSN++ U-Net backbone and the VP / VE / EDM preconditioners.

``build_denoiser(cfg)`` is the one way to make a model: it validates the config and returns a
denoiser D called as ``D(x, sigma, labels=None)``.
"""

from __future__ import annotations

from diffmem.config import ModelConfig
from diffmem.errors import UsageError
from diffmem.nn.precond import PRECONDITIONERS, Denoiser, EDMPrecond, VEPrecond, VPPrecond, vp_sigma, vp_sigma_inv
from diffmem.nn.unet import ARCH_DEFAULTS, UNet, noise_channels, num_skips, resolved_encoder

__all__ = ["Denoiser", "EDMPrecond", "UNet", "VEPrecond", "VPPrecond", "build_denoiser", "noise_channels",
           "num_skips", "resolved_encoder", "validate_model_config", "vp_sigma", "vp_sigma_inv"]


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise UsageError(f"--{name}: {value!r} is not valid; expected one of {', '.join(sorted(options))}")


def validate_model_config(cfg: ModelConfig) -> None:
    """Refuse a model config that cannot be built, naming the option and what is expected."""
    _choice("arch", cfg.arch, ARCH_DEFAULTS)
    _choice("embedding", cfg.embedding, ("positional", "fourier"))
    if cfg.encoder is not None:
        _choice("encoder", cfg.encoder, ("standard", "residual"))
    if cfg.channel_mult_noise is not None and cfg.channel_mult_noise < 1:
        raise UsageError(f"--channel-mult-noise: {cfg.channel_mult_noise} is not valid; expected an integer ≥ 1 "
                         "(noise-embedding channels ÷ C; default: 1 for ddpmpp, 2 for ncsnpp)")
    _choice("precond", cfg.precond, PRECONDITIONERS)
    if cfg.channels < 4 or cfg.channels % 2:
        raise UsageError(f"--channels: {cfg.channels} is not valid; expected an even number ≥ 4")
    if not cfg.channel_mult or any(m < 1 for m in cfg.channel_mult):
        raise UsageError(f"--channel-mult: {list(cfg.channel_mult)} is not valid; expected positive integers")
    if cfg.blocks < 1:
        raise UsageError(f"--blocks: {cfg.blocks} is not valid; expected ≥ 1")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UsageError(f"--dropout: {cfg.dropout} is not valid; expected a probability in [0, 1)")
    if cfg.label_dim < 0:
        raise UsageError(f"label_dim: {cfg.label_dim} is not valid; expected ≥ 0 (0 = unconditional)")
    down = 2 ** (len(cfg.channel_mult) - 1)
    if cfg.resolution < down or cfg.resolution % down:
        raise UsageError(f"--channel-mult: {len(cfg.channel_mult)} levels need a resolution divisible by {down}; "
                         f"the data is {cfg.resolution}×{cfg.resolution}")
    if cfg.skip_mask is not None and len(cfg.skip_mask) != num_skips(cfg):
        raise UsageError(f"--skip-mask: {len(cfg.skip_mask)} flags given; this model has {num_skips(cfg)} skips "
                         f"({len(cfg.channel_mult)} levels × ({cfg.blocks} blocks + 1))")


def build_denoiser(cfg: ModelConfig) -> Denoiser:
    """The denoiser D(x; σ, labels) for ``cfg``: a :class:`UNet` wrapped by its preconditioner."""
    validate_model_config(cfg)
    return PRECONDITIONERS[cfg.precond](UNet(cfg), cfg)
