"""Antialiased downsampling of uint8 N×C×H×W images to R×R (``--resolution``).

- ``box``: the area average. When H and W are multiples of R it is computed exactly in NumPy
  (mean of each block, rounded half up); otherwise Pillow's BOX filter (area-weighted) is used.
- ``lanczos``: Pillow's Lanczos-3 filter, widened by the scale factor (antialiasing), per image.
"""

from __future__ import annotations

import numpy as np

from diffmem.errors import UsageError

RESAMPLE_FILTERS = ("box", "lanczos")


def block_mean(images: np.ndarray, r: int) -> np.ndarray:
    """Exact box downsample by an integer factor: each output pixel is ⌊mean of its block + ½⌋."""
    n, c, h, w = images.shape
    fh, fw = h // r, w // r
    blocks = images.reshape(n, c, r, fh, r, fw).astype(np.uint32)
    total = blocks.sum(axis=(3, 5))  # exact integer sums
    area = fh * fw
    return ((2 * total + area) // (2 * area)).astype(np.uint8)  # ⌊total/area + ½⌋ in integers


def _pil_resize(images: np.ndarray, r: int, method: str) -> np.ndarray:
    from PIL import Image

    flt = Image.Resampling.BOX if method == "box" else Image.Resampling.LANCZOS
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
        raise UsageError(f"--resample: {method!r} is not valid; expected one of {', '.join(RESAMPLE_FILTERS)}")
    n, c, h, w = images.shape
    if r < 1:
        raise UsageError(f"{option}: {r} is not valid; expected a positive integer")
    if r > min(h, w):
        raise UsageError(f"{option}: {r} is larger than the source's {h}×{w} images; expected at most {min(h, w)} "
                         "(only downsampling is supported)")
    if r == h == w:
        return images
    if h != w:
        raise UsageError(f"{option}: the source's images are {h}×{w}, not square; expected square images "
                         "to resize to R×R")
    if method == "box" and h % r == 0:
        return block_mean(images, r)
    return _pil_resize(images, r, method)
