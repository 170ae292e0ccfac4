"""Image arrays on disk (the layout: README.md, "Files"): ``.npz`` files, artefact directories and image folders.

An image set is ``images`` uint8 N×C×H×W, optional ``labels`` int64 N (−1 = unlabeled) and
optional ``seeds`` int64 N. Loading never unpickles (``allow_pickle=False``).
"""

from __future__ import annotations

import os
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.artefacts import atomic_save_npz
from diffmem.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# files an artefact directory may hold its images in, in order of preference
ARTEFACT_FILES = ("dataset.npz", "samples.npz")


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # uint8 N×C×H×W
    labels: np.ndarray | None = None  # int64 N, −1 = unlabeled
    seeds: np.ndarray | None = None  # int64 N
    source_ids: np.ndarray | None = None  # int64 N

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def save_image_set(path: str | os.PathLike, s: ImageSet, **extra: np.ndarray) -> None:
    arrays = {"images": s.images}
    for k in ("labels", "seeds", "source_ids"):
        v = getattr(s, k)
        if v is not None:
            arrays[k] = v
    arrays.update(extra)
    atomic_save_npz(path, **arrays)


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 3:  # N×H×W grayscale
        images = images[:, None]
    if images.ndim != 4:
        raise UsageError(f"{what}: 'images' has shape {images.shape}; expected N×C×H×W")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number):
            raise UsageError(f"{what}: 'images' has dtype {images.dtype}; expected uint8")
        if not np.all(np.isfinite(images)):
            raise UsageError(f"{what}: 'images' holds NaN or inf; expected uint8 pixel values")
        if images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images)):
            raise UsageError(f"{what}: 'images' has dtype {images.dtype} with values outside uint8; "
                             "expected uint8 pixel values 0..255")
        images = images.astype(np.uint8)
    if images.shape[0] == 0:
        raise UsageError(f"{what}: holds no images")
    if images.shape[1] not in (1, 3, 4):
        raise UsageError(f"{what}: images have {images.shape[1]} channels; expected 1, 3 or 4 (N×C×H×W)")
    return np.ascontiguousarray(images)


def _int_vector(a: np.ndarray, n: int, name: str, what: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.integer):
        raise UsageError(f"{what}: {name!r} has dtype {a.dtype}; expected integers")
    if a.shape != (n,):
        raise UsageError(f"{what}: {name!r} has shape {a.shape}; expected ({n},)")
    return a.astype(np.int64)


def load_npz(path: str | os.PathLike) -> ImageSet:
    path = Path(path)
    what = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take anything else for a pickle
            raise UsageError(f"{what}: not a .npz archive (it does not start as a zip file); "
                             "expected arrays saved with numpy.savez")
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise UsageError(f"{what}: no 'images' array (has {sorted(z.files)}); expected the diffmem npz layout")
            arrays = {k: z[k] for k in ("images", "labels", "seeds", "source_ids") if k in z.files}
    except UsageError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise UsageError(f"{what}: holds object arrays, which are never unpickled; "
                             "expected plain numeric arrays") from e
        raise UsageError(f"{what}: not a readable .npz file ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"{what}: not a readable .npz file ({e})") from e
    images = _check_images(arrays["images"], what)
    n = images.shape[0]
    extra = {k: _int_vector(v, n, k, what) for k, v in arrays.items() if k != "images"}
    return ImageSet(images=images, **extra)


def read_image_file(path: str | os.PathLike | typing.BinaryIO, name: str | None = None) -> np.ndarray:
    """One image file (a path or a binary file object) as uint8 C×H×W.

    Grayscale gives C=1, anything else RGB C=3 (alpha dropped, palettes expanded); 16-bit and
    32-bit grayscale are scaled to 8 bits, never clipped. ``name`` labels errors for file objects.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or str(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                a = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
            else:
                im = im.convert("L") if im.mode in ("1", "L", "LA") else im.convert("RGB")
                a = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise UsageError(f"{label}: refused: image too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{label}: not a readable image ({e.__class__.__name__}: {e})") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files below ``folder`` in a stable (sorted) order; symlinked directories are not followed."""
    folder = Path(folder)
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                out.append(Path(root) / name)
        if not recursive:
            break
    return out


def stack_images(arrays: list[np.ndarray], names: list[str], what: str) -> np.ndarray:
    """Stack C×H×W images, refusing mixed shapes or channel counts with one clear line."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        for a, name in zip(arrays, names):
            if a.shape != first:
                kind = "channels (grayscale and RGB mixed)" if a.shape[1:] == first[1:] else "sizes"
                raise UsageError(f"{what}: images differ in {kind}: {names[0]} is {first}, {name} is {a.shape}; "
                                 "convert them to one shape first")
    return np.stack(arrays)


def load_image_folder(folder: str | os.PathLike) -> ImageSet:
    files = list_image_files(folder)
    if not files:
        raise UsageError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    arrays = [read_image_file(p) for p in files]
    images = stack_images(arrays, [str(p) for p in files], str(folder))
    return ImageSet(images=images)


def load_images(path: str | os.PathLike) -> ImageSet:
    """Load an image set from a ``.npz``, an artefact directory or an image folder."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return load_npz(p)
        raise UsageError(f"{path}: unsupported file type {p.suffix!r}; expected .npz, an artefact directory "
                         "or an image folder")
    for name in ARTEFACT_FILES:
        if (p / name).is_file():
            return load_npz(p / name)
    npzs = sorted(p.glob("*.npz"))
    if len(npzs) == 1 and not list_image_files(p, recursive=False):
        return load_npz(npzs[0])
    return load_image_folder(p)


# ----------------------------------------------------------------------------------------------
# Pixel scale: uint8 images ↔ the model's [-1, 1] scale (one place for both directions)


def to_model_scale(images):
    """uint8 (NumPy or torch) → float32 torch tensor in [-1, 1]: x = u / 127.5 − 1."""
    import torch

    t = torch.as_tensor(images)
    return t.to(torch.float32) / 127.5 - 1.0


def to_uint8(x):
    """Model-scale tensor → uint8 tensor, quantised as the reference study did: x·127.5 + 128, clipped."""
    import torch

    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
