"""Building blocks of the DDPM++ / NCSN++ U-Net (score-SDE paper 2021): resampling, embeddings, blocks.

Written from the papers' descriptions: BigGAN-style residual blocks with GroupNorm and SiLU, the
noise embedding added inside each block, single-head self-attention, FIR resampling with a box
filter ``[1, 1]`` (DDPM++) or ``[1, 3, 3, 1]`` (NCSN++), and residual sums scaled by 1/√2.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SKIP_SCALE = math.sqrt(0.5)  # residual sums are scaled by 1/√2 (score-SDE paper 2021, §H)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights and bias of the last layer of a residual branch."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv(in_ch: int, out_ch: int, kernel: int, *, zero: bool = False) -> nn.Conv2d:
    """A 'same'-padded convolution, Xavier-initialised (zero-initialised when ``zero``)."""
    c = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    if zero:
        zero_init(c)
    else:
        nn.init.xavier_uniform_(c.weight)
        nn.init.zeros_(c.bias)
    return c


def linear(in_f: int, out_f: int) -> nn.Linear:
    lin = nn.Linear(in_f, out_f)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels each."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Resample(nn.Module):
    """Depthwise FIR resampling by 2: ``down`` filters then keeps every other pixel; up zero-stuffs then filters."""

    def __init__(self, taps: tuple[int, ...], down: bool) -> None:
        super().__init__()
        f = torch.as_tensor(taps, dtype=torch.float32)
        f = torch.outer(f, f)
        self.register_buffer("f", f / f.sum(), persistent=False)  # separable 2-D filter, unit DC gain
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        k = self.f.shape[0]
        f = self.f.to(x.dtype)[None, None].expand(c, 1, k, k)
        if self.down:  # pad k−2 in all so that the output is exactly H/2 × W/2
            p0, p1 = (k - 2) // 2, k - 2 - (k - 2) // 2
            return F.conv2d(F.pad(x, (p0, p1, p0, p1)), f, stride=2, groups=c)
        out = F.conv_transpose2d(x, f * 4, stride=2, groups=c)  # ×4 keeps the DC gain at 1
        s = (out.shape[-2] - 2 * h) // 2  # (H−1)·2 + k rows → the centred 2H
        return out[..., s:s + 2 * h, s:s + 2 * w]


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise (the Transformer paper 2017, as used by DDPM++)."""

    def __init__(self, channels: int, max_positions: int = 10_000) -> None:
        super().__init__()
        half = channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([a.cos(), a.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (Fourier-features paper 2020, as used by NCSN++); frequencies are saved."""

    def __init__(self, channels: int, scale: float = 16.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)  # fixed, and stored with the weights anyway
        self.register_buffer("freqs", torch.randn(channels // 2, generator=g) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = (2 * math.pi) * c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([a.cos(), a.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block (BigGAN style) with the embedding added after the first conv, optional up/down
    resampling and optional single-head self-attention."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_ch: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        taps: tuple[int, ...] = (1, 1),
    ) -> None:
        super().__init__()
        self.norm0 = group_norm(in_ch)
        self.resample = Resample(taps, down=down) if (up or down) else None
        self.conv0 = conv(in_ch, out_ch, 3)
        self.affine = linear(emb_ch, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv(out_ch, out_ch, 3, zero=True)
        self.skip = conv(in_ch, out_ch, 1) if (in_ch != out_ch or self.resample is not None) else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(out_ch)
            self.qkv = conv(out_ch, 3 * out_ch, 1)
            self.proj = conv(out_ch, out_ch, 1, zero=True)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h) + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.attention:
            n, c, hh, ww = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n, 3, 1, c, hh * ww).transpose(-1, -2).unbind(1)
            a = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v, one head
            x = (self.proj(a.transpose(-1, -2).reshape(n, c, hh, ww)) + x) * SKIP_SCALE
        return x
