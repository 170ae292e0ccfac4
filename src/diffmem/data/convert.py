"""Bringing images to one shape on the fly: ``--channels 1|3`` and ``--resize R`` (``diffmem measure``).

- **Channels.** Grayscale → RGB repeats the one plane three times. RGB → grayscale is the ITU-R BT.601
  luma Y = 0.299 R + 0.587 G + 0.114 B, rounded half up, computed exactly in integers:
  Y = ⌊(299 R + 587 G + 114 B + 500) / 1000⌋. A fourth (alpha) plane is dropped first.
- **Resolution.** The resampling of ``diffmem data --resolution`` (:func:`diffmem.data.resize.downsample`:
  the exact box average by default, Lanczos-3 on request); only downsampling, square images only.

Channels are converted before resizing (fewer planes to resample). The same :class:`Conversion` is applied
to samples, training images and held-out images alike, one image at a time for folders and zips (so a
folder may mix shapes) or to a whole array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffmem.data.resize import RESAMPLE_FILTERS, downsample
from diffmem.errors import bad

CHANNEL_CHOICES = (1, 3)
BT601 = (299, 587, 114)  # luma weights ×1000 (ITU-R BT.601)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 N×C×H×W (C = 1, 3 or 4) → N×``channels``×H×W: replicate gray, BT.601 luma, alpha dropped."""
    c = images.shape[1]
    if c == 4:  # RGBA: the alpha plane carries no picture
        images, c = images[:, :3], 3
    if c == channels:
        return np.ascontiguousarray(images)
    if channels == 3:  # c == 1
        return np.ascontiguousarray(np.repeat(images, 3, axis=1))
    # ITU-R BT.601 luma, rounded half up, exact in integers
    r, g, b = (images[:, i].astype(np.uint32) for i in range(3))
    y = (BT601[0] * r + BT601[1] * g + BT601[2] * b + 500) // 1000
    return y.astype(np.uint8)[:, None]


@dataclass(frozen=True)
class Conversion:
    """What to do to every image before it is compared: nothing (the default), channels, resolution."""

    resize: int | None = None  # downsample to R×R (the resampling of ``diffmem data --resolution``)
    channels: int | None = None  # 1 (BT.601 luma) or 3 (gray replicated)
    resample: str = "box"  # box | lanczos

    def check(self) -> None:
        """Refuse bad settings before any image is read (one line naming the option)."""
        if self.resize is not None and self.resize < 1:
            raise bad("--resize", self.resize, "a positive image side R (images are downsampled to R×R)")
        if self.channels is not None and self.channels not in CHANNEL_CHOICES:
            raise bad("--channels", self.channels, "1 (grayscale, BT.601 luma) or 3 (RGB)")
        if self.resample not in RESAMPLE_FILTERS:
            raise bad("--resample", self.resample, f"one of {', '.join(RESAMPLE_FILTERS)}")

    @property
    def identity(self) -> bool:
        return self.resize is None and self.channels is None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×C×H×W → the converted images (the same array when there is nothing to do)."""
        if self.channels is not None:
            images = to_channels(images, self.channels)
        if self.resize is not None:
            images = downsample(images, self.resize, self.resample, "--resize")
        return images

    def one(self, image: np.ndarray) -> np.ndarray:
        """One uint8 C×H×W image converted."""
        return self(image[None])[0] if not self.identity else image

    def describe(self) -> dict[str, object]:
        """The settings as recorded in ``summary.json``."""
        return {"resize": self.resize, "channels": self.channels, "resample": self.resample,
                "luma": "ITU-R BT.601: Y = 0.299 R + 0.587 G + 0.114 B, rounded half up"
                if self.channels == 1 else None}
