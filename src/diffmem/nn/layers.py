"""Building blocks of the DDPM++ / NCSN++ U-Net (score-SDE paper 2021): resampling, embeddings, blocks.

Written from the papers' descriptions: BigGAN-style residual blocks with GroupNorm and SiLU, the
noise embedding added inside each block, single-head self-attention, FIR resampling with a box
filter ``[1, 1]`` (DDPM++) or ``[1, 3, 3, 1]`` (NCSN++), and residual sums scaled by 1/√2.

Initialisation follows the EDM paper's (2022) reimplementation of these networks, which the
memorization study trained: Xavier-uniform weights and zero biases everywhere; the last layer of each
residual branch (a block's second convolution, the attention projection, the output convolution)
Xavier × 1e-5, so that it starts near zero but not at it; the attention's q/k/v projection Xavier × √0.2.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SKIP_SCALE = math.sqrt(0.5)  # residual sums are scaled by 1/√2 (score-SDE paper 2021, §H)
NEAR_ZERO = 1e-5  # init scale of the last layer of a residual branch
ATTN_QKV = math.sqrt(0.2)  # init scale of the attention's q/k/v projection


def xavier_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Xavier-uniform in place, times ``scale``: U(±scale·√(6 / (fan_in + fan_out)))."""
    with torch.no_grad():
        nn.init.xavier_uniform_(weight)
        weight.mul_(scale)
    return weight


def conv(in_ch: int, out_ch: int, kernel: int, *, scale: float = 1.0) -> nn.Conv2d:
    """A 'same'-padded convolution: Xavier-uniform weights times ``scale``, zero bias."""
    c = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    xavier_(c.weight, scale)
    nn.init.zeros_(c.bias)
    return c


def linear(in_f: int, out_f: int) -> nn.Linear:
    lin = nn.Linear(in_f, out_f)
    xavier_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, C/4) groups (fewer where that does not divide C), ε = 1e-6."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _fir(taps: tuple[int, ...]) -> torch.Tensor:
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()  # separable 2-D filter, unit DC gain


class Resample(nn.Module):
    """Depthwise FIR resampling by 2: ``down`` filters then keeps every other pixel; up zero-stuffs then filters."""

    def __init__(self, taps: tuple[int, ...], down: bool) -> None:
        super().__init__()
        self.register_buffer("f", _fir(taps), persistent=False)
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


class ConvDown(nn.Module):
    """A 3×3 convolution *then* FIR downsampling by 2, fused: the convolution is zero-padded wide enough
    (1 + (k−1)//2 pixels) for the filter to need no padding of its own. NCSN++'s progressive input path."""

    def __init__(self, in_ch: int, out_ch: int, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(xavier_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("f", _fir(taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.f.shape[0]
        h = F.conv2d(x, self.weight.to(x.dtype), padding=1 + (k - 1) // 2)
        f = self.f.to(x.dtype)[None, None].expand(h.shape[1], 1, k, k)
        return F.conv2d(h, f, stride=2, groups=h.shape[1]) + self.bias.to(x.dtype)[:, None, None]


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise (the Transformer paper 2017, as used by DDPM++): [sin, cos] of
    c_noise·f_i with f_i = 10,000^(−i/(n−1)), i = 0 … n−1, so the lowest frequency is exactly 1e-4."""

    def __init__(self, channels: int, max_positions: int = 10_000) -> None:
        super().__init__()
        half = channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = torch.outer(c_noise.to(self.freqs.dtype), self.freqs)
        return torch.cat([a.sin(), a.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (Fourier-features paper 2020, as used by NCSN++): [sin, cos] of
    2π·f_i·c_noise with f_i ~ N(0, 16²); the frequencies are saved with the weights."""

    def __init__(self, channels: int, scale: float = 16.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)  # fixed, and stored with the weights anyway
        self.register_buffer("freqs", torch.randn(channels // 2, generator=g) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        a = torch.outer(c_noise.to(self.freqs.dtype), (2 * math.pi) * self.freqs)
        return torch.cat([a.sin(), a.cos()], dim=1)


class LabelEmbedding(nn.Module):
    """A Linear layer (Xavier-uniform weight, zero bias) on √L·one_hot(label), stored as an L×C table.

    ``table[label]·√L + bias`` is that Linear's output, and under Adam the table moves exactly as the
    Linear's weight would (the √L sits in the forward pass, not in the stored values).
    """

    def __init__(self, label_dim: int, channels: int) -> None:
        super().__init__()
        bound = math.sqrt(6 / (label_dim + channels))  # Xavier bound of the L → C Linear
        self.weight = nn.Parameter(torch.empty(label_dim, channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.scale = math.sqrt(label_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return F.embedding(labels, self.weight) * self.scale + self.bias


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
        self.conv1 = conv(out_ch, out_ch, 3, scale=NEAR_ZERO)
        self.skip = conv(in_ch, out_ch, 1) if (in_ch != out_ch or self.resample is not None) else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(out_ch)
            self.qkv = conv(out_ch, 3 * out_ch, 1, scale=ATTN_QKV)
            self.proj = conv(out_ch, out_ch, 1, scale=NEAR_ZERO)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h) + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.attention:
            n, c, hh, ww = x.shape
            # q, k, v: n × 1 head × HW × c (output channel 3i + j of qkv is channel i of q, k, v for j = 0, 1, 2)
            q, k, v = self.qkv(self.norm2(x)).reshape(n, c, 3, hh * ww).permute(2, 0, 3, 1)[:, :, None].unbind(0)
            a = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v, one head
            x = (self.proj(a[:, 0].transpose(1, 2).reshape(n, c, hh, ww)) + x) * SKIP_SCALE
        return x
