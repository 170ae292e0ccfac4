"""The U-Net backbone F(x, c_noise, labels) of the DDPM++ / NCSN++ family (score-SDE paper 2021).

It knows nothing about σ: the preconditioner (``precond.py``) feeds it c_in·x and c_noise. Every
factor of the memorization study is a constructor knob (via :class:`~diffmem.config.ModelConfig`):
width, channel multipliers, depth, attention resolutions, dropout, positional or Fourier time
embedding, standard or residual (NCSN++) encoder, label conditioning, and a skip-connection mask.

The layout is the one the memorization study trained (the EDM paper's reimplementation of these
networks): the encoder's blocks at an attention resolution have self-attention; in the decoder only
the last block of a level (the one that eats the level's last skip) has it; the middle has one block
with attention and one without. NCSN++ differs from DDPM++ in its FIR filter [1, 3, 3, 1], a noise
embedding twice as wide (2C channels), and its residual encoder (``ARCH_DEFAULTS``).

Skips are numbered in the order the encoder produces them, from the input convolution at full
resolution down to the last block of the lowest level; there are ``levels × (blocks + 1)`` of them.
A disabled skip feeds zeros to the decoder, so every channel count stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from diffmem.config import ModelConfig
from diffmem.nn.layers import (
    NEAR_ZERO,
    SKIP_SCALE,
    ConvDown,
    FourierEmbedding,
    LabelEmbedding,
    PositionalEmbedding,
    UNetBlock,
    conv,
    group_norm,
    linear,
)

# Version of the mapping config + weights → function. Snapshots carry it; one of another layout is refused
# (2: the reference study's layout — decoder attention, 2C NCSN++ noise channels, convolve-then-downsample
# residual input, endpoint positional frequencies, [sin, cos] order, q/k/v interleaved per channel).
NETWORK_LAYOUT = 2


@dataclass(frozen=True)
class ArchDefaults:
    taps: tuple[int, ...]  # FIR resampling filter
    encoder: str  # standard | residual
    noise_mult: int  # noise-embedding channels = noise_mult × C


ARCH_DEFAULTS = {  # the architectures (model.arch) and what each implies
    "ddpmpp": ArchDefaults(taps=(1, 1), encoder="standard", noise_mult=1),
    "ncsnpp": ArchDefaults(taps=(1, 3, 3, 1), encoder="residual", noise_mult=2),
}
ENCODERS = ("standard", "residual")  # model.encoder
EMBEDDINGS = ("positional", "fourier")  # model.embedding


def resolved_encoder(cfg: ModelConfig) -> str:
    """``cfg.encoder``, or the architecture's encoder when it is None."""
    return cfg.encoder if cfg.encoder is not None else ARCH_DEFAULTS[cfg.arch].encoder


def noise_channels(cfg: ModelConfig) -> int:
    """Width of the noise embedding: ``channel_mult_noise`` (or the architecture's) × C."""
    mult = cfg.channel_mult_noise if cfg.channel_mult_noise is not None else ARCH_DEFAULTS[cfg.arch].noise_mult
    return mult * cfg.channels


def num_skips(cfg: ModelConfig) -> int:
    """Number of encoder→decoder skips: one per encoder output, ``levels × (blocks + 1)``."""
    return len(cfg.channel_mult) * (cfg.blocks + 1)


class UNet(nn.Module):
    """DDPM++ / NCSN++ U-Net: ``forward(x, c_noise, labels)`` → tensor shaped like ``x``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C, mult, levels = cfg.channels, cfg.channel_mult, len(cfg.channel_mult)
        emb_ch = 4 * C  # embedding width, as in DDPM++
        noise_ch = noise_channels(cfg)
        taps = ARCH_DEFAULTS[cfg.arch].taps
        residual = resolved_encoder(cfg) == "residual"
        self.label_dim = cfg.label_dim
        mask = cfg.skip_mask if cfg.skip_mask is not None else (True,) * num_skips(cfg)
        self.skip_mask = tuple(bool(m) for m in mask)

        # c_noise (and label) → embedding
        self.map_noise = FourierEmbedding(noise_ch) if cfg.embedding == "fourier" else PositionalEmbedding(noise_ch)
        if cfg.label_dim:
            self.map_label = LabelEmbedding(cfg.label_dim, noise_ch)
        self.map_layer0 = linear(noise_ch, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)

        # encoder: input conv, then per level an optional down block and `blocks` blocks
        self.conv_in = conv(cfg.in_channels, C, 3)
        skip_ch = [C]
        self.enc = nn.ModuleList()
        self.aux = nn.ModuleDict()  # NCSN++ residual encoder: the input pyramid path, one per lower level
        cout, res = C, cfg.resolution
        caux = cfg.in_channels
        for level in range(levels):
            if level > 0:
                res //= 2
                self.enc.append(UNetBlock(cout, cout, emb_ch, down=True, dropout=cfg.dropout, taps=taps))
                if residual:
                    self.aux[str(level)] = ConvDown(caux, cout, taps)
                    caux = cout
                skip_ch.append(cout)
            for _ in range(cfg.blocks):
                cin, cout = cout, C * mult[level]
                self.enc.append(UNetBlock(cin, cout, emb_ch, attention=res in cfg.attn_resolutions,
                                          dropout=cfg.dropout, taps=taps))
                skip_ch.append(cout)
        self.levels = levels

        # middle at the lowest resolution: a block with attention and one without
        self.mid = nn.ModuleList([
            UNetBlock(cout, cout, emb_ch, attention=True, dropout=cfg.dropout, taps=taps),
            UNetBlock(cout, cout, emb_ch, dropout=cfg.dropout, taps=taps),
        ])

        # decoder: per level (lowest first) an optional up block and `blocks + 1` blocks eating skips;
        # at an attention resolution only the last of them attends
        self.dec = nn.ModuleList()
        for level in reversed(range(levels)):
            if level < levels - 1:
                res *= 2
                self.dec.append(UNetBlock(cout, cout, emb_ch, up=True, dropout=cfg.dropout, taps=taps))
            for idx in range(cfg.blocks + 1):
                cin, cout = cout + skip_ch.pop(), C * mult[level]
                attn = idx == cfg.blocks and res in cfg.attn_resolutions
                self.dec.append(UNetBlock(cin, cout, emb_ch, attention=attn, dropout=cfg.dropout, taps=taps))
        self.norm_out = group_norm(cout)
        self.conv_out = conv(cout, cfg.in_channels, 3, scale=NEAR_ZERO)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # embedding: noise features (+ label embedding) → two SiLU layers
        emb = self.map_noise(c_noise)
        if self.label_dim:
            emb = emb + self.map_label(labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        aux = x
        h = self.conv_in(x)
        skips = [h]
        level = 0
        for block in self.enc:
            h = block(h, emb)
            if block.resample is not None:  # entered the next level
                level += 1
                if str(level) in self.aux:  # progressive residual input (NCSN++)
                    h = (h + self.aux[str(level)](aux)) * SKIP_SCALE
                    aux = h
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        k = len(skips)
        for block in self.dec:
            if block.resample is None:
                k -= 1
                s = skips[k] if self.skip_mask[k] else torch.zeros_like(skips[k])
                h = torch.cat([h, s], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
