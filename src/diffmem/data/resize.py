"""Antialiased downsampling of uint8 N×C×H×W images to R×R (``--resolution``).

- ``box``: the exact area average, rounded half up. When H and W are multiples of R it is the
  integer mean of each block; otherwise each output pixel averages the input pixels it covers,
  weighted by the covered fraction (a separable float64 weight matrix).
- ``lanczos``: Pillow's Lanczos-3 filter, widened by the scale factor (antialiasing), per plane.
"""

from __future__ import annotations

import numpy as np

from diffmem.errors import UsageError, bad

RESAMPLE_FILTERS = ("box", "lanczos")


def block_mean(images: np.ndarray, r: int) -> np.ndarray:
    """Exact box downsample by an integer factor: each output pixel is ⌊mean of its block + ½⌋."""
    n, c, h, w = images.shape
    fh, fw = h // r, w // r
    blocks = images.reshape(n, c, r, fh, r, fw).astype(np.uint32)
    total = blocks.sum(axis=(3, 5))  # exact integer sums
    area = fh * fw
    return ((2 * total + area) // (2 * area)).astype(np.uint8)  # ⌊total/area + ½⌋ in integers


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """W[i, j] = the part of input pixel j inside output pixel i = [i·s, (i+1)·s), divided by s = n_in/n_out."""
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    j = np.arange(n_in)[None, :]
    return np.clip(np.minimum(lo + s, j + 1) - np.maximum(lo, j), 0.0, None) / s


def area_average(images: np.ndarray, r: int) -> np.ndarray:
    """Box downsample to R×R by any factor: y = W x Wᵀ per plane, rounded half up."""
    wh, ww = area_weights(images.shape[2], r), area_weights(images.shape[3], r)
    y = np.einsum("ij,ncjk,lk->ncil", wh, images.astype(np.float64), ww)
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def _pil_lanczos(images: np.ndarray, r: int) -> np.ndarray:
    from PIL import Image

    flt = Image.Resampling.LANCZOS
    n, c = images.shape[:2]
    out = np.empty((n, c, r, r), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):  # one 8-bit plane at a time: works for any channel count
            im = Image.fromarray(np.ascontiguousarray(images[i, ch]))  # 2-D uint8 → mode "L"
            out[i, ch] = np.asarray(im.resize((r, r), resample=flt))
    return out


def downsample(images: np.ndarray, r: int, method: str = "box", option: str = "--resolution") -> np.ndarray:
    """``images`` uint8 N×C×H×W → uint8 N×C×R×R with an antialiasing filter.

    R equal to the current size returns the images unchanged; R larger is refused.
    """
    if method not in RESAMPLE_FILTERS:
        raise bad("--resample", method, f"one of {', '.join(RESAMPLE_FILTERS)}")
    n, c, h, w = images.shape
    if r < 1:
        raise bad(option, r, "a positive integer")
    if r > min(h, w):
        raise UsageError(f"{option}: {r} is larger than the source's {h}×{w} images; expected at most {min(h, w)} "
                         "(only downsampling is supported)")
    if r == h == w:
        return images
    if h != w:
        raise UsageError(f"{option}: the source's images are {h}×{w}, not square; expected square images "
                         "to resize to R×R")
    if method == "box":
        return block_mean(images, r) if h % r == 0 else area_average(images, r)
    return _pil_lanczos(images, r)
