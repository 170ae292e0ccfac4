"""The U-Net backbone F(x, c_noise, labels) of the DDPM++ / NCSN++ family (score-SDE paper 2021).

It knows nothing about σ: the preconditioner (``precond.py``) feeds it c_in·x and c_noise. Every
factor of the memorization study is a constructor knob (via :class:`~diffmem.config.ModelConfig`):
width, channel multipliers, depth, attention resolutions, dropout, positional or Fourier time
embedding, standard or residual (NCSN++) encoder, label conditioning, and a skip-connection mask.

Skips are numbered in the order the encoder produces them, from the input convolution at full
resolution down to the last block of the lowest level; there are ``levels × (blocks + 1)`` of them.
A disabled skip feeds zeros to the decoder, so every channel count stays the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from diffmem.config import ModelConfig
from diffmem.nn.layers import (
    SKIP_SCALE,
    FourierEmbedding,
    PositionalEmbedding,
    Resample,
    UNetBlock,
    conv,
    group_norm,
    linear,
)

RESAMPLE_TAPS = {"ddpmpp": (1, 1), "ncsnpp": (1, 3, 3, 1)}


def num_skips(cfg: ModelConfig) -> int:
    """Number of encoder→decoder skips: one per encoder output, ``levels × (blocks + 1)``."""
    return len(cfg.channel_mult) * (cfg.blocks + 1)


class UNet(nn.Module):
    """DDPM++ / NCSN++ U-Net: ``forward(x, c_noise, labels)`` → tensor shaped like ``x``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C, mult, levels = cfg.channels, cfg.channel_mult, len(cfg.channel_mult)
        emb_ch = 4 * C  # embedding width, as in DDPM++
        taps = RESAMPLE_TAPS[cfg.arch]
        self.label_dim = cfg.label_dim
        mask = cfg.skip_mask if cfg.skip_mask is not None else (True,) * num_skips(cfg)
        self.skip_mask = tuple(bool(m) for m in mask)

        # c_noise (and label) → embedding
        self.map_noise = FourierEmbedding(C) if cfg.embedding == "fourier" else PositionalEmbedding(C)
        if cfg.label_dim:
            # a Linear on one-hot labels (Xavier-uniform init) applied to √label_dim·one_hot, stored as
            # an embedding table; the √label_dim scale is applied in forward() so Adam's per-weight
            # steps move the label vector as fast as the one-hot Linear's would
            self.map_label = nn.Embedding(cfg.label_dim, C)
            self.label_scale = math.sqrt(cfg.label_dim)
            bound = math.sqrt(6 / (cfg.label_dim + C))
            nn.init.uniform_(self.map_label.weight, -bound, bound)
        self.map_layer0 = linear(C, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)

        # encoder: input conv, then per level an optional down block and `blocks` blocks
        self.conv_in = conv(cfg.in_channels, C, 3)
        skip_ch = [C]
        self.enc = nn.ModuleList()
        self.aux = nn.ModuleDict()  # NCSN++ residual encoder: the input pyramid path
        cout, res = C, cfg.resolution
        caux = cfg.in_channels
        for level in range(levels):
            if level > 0:
                res //= 2
                self.enc.append(UNetBlock(cout, cout, emb_ch, down=True, dropout=cfg.dropout, taps=taps))
                if cfg.encoder == "residual":
                    self.aux[str(level)] = nn.Sequential(Resample(taps, down=True), conv(caux, cout, 3))
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

        # decoder: per level (lowest first) an optional up block and `blocks + 1` blocks eating skips
        self.dec = nn.ModuleList()
        for level in reversed(range(levels)):
            if level < levels - 1:
                res *= 2
                self.dec.append(UNetBlock(cout, cout, emb_ch, up=True, dropout=cfg.dropout, taps=taps))
            for _ in range(cfg.blocks + 1):
                cin, cout = cout + skip_ch.pop(), C * mult[level]
                self.dec.append(UNetBlock(cin, cout, emb_ch, attention=res in cfg.attn_resolutions,
                                          dropout=cfg.dropout, taps=taps))
        self.norm_out = group_norm(cout)
        self.conv_out = conv(cout, cfg.in_channels, 3, zero=True)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # embedding: noise features (+ label embedding) → two SiLU layers
        emb = self.map_noise(c_noise)
        if self.label_dim:
            emb = emb + self.map_label(labels) * self.label_scale
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
                    aux = self.aux[str(level)](aux)
                    h = (h + aux) * SKIP_SCALE
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
