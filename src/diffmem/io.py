"""Image arrays on disk (the layout: README.md, "Files"): ``.npz`` files, artefact directories, image folders and
zips.

An image set is ``images`` uint8 N×C×H×W, optional ``labels`` int64 N (−1 = unlabeled), optional
``seeds`` int64 N and optional ``names`` str N (fixed-width unicode, so it loads without pickling):
each image's name, its relative path in the folder or zip it came from. Loading never unpickles
(``allow_pickle=False``).

Order: the files of a folder or a zip are read in natural order of their relative paths (runs of
digits compare as numbers: ``2.png`` before ``10.png``; then plain string order), the same on every
machine. Tables carry each image's index *and* name, so nothing depends on the order.
"""

from __future__ import annotations

import os
import re
import typing
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffmem.artefacts import atomic_dir, atomic_save_npz, read_manifest, write_manifest
from diffmem.errors import UsageError

Convert = Callable[[np.ndarray], np.ndarray]  # uint8 N×C×H×W → uint8 N×C'×H'×W' (diffmem.data.convert)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# files an artefact directory may hold its images in, in order of preference
ARTEFACT_FILES = ("dataset.npz", "samples.npz")


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # uint8 N×C×H×W
    labels: np.ndarray | None = None  # int64 N, −1 = unlabeled
    seeds: np.ndarray | None = None  # int64 N
    source_ids: np.ndarray | None = None  # int64 N
    names: np.ndarray | None = None  # str N: relative path in the folder or zip each image came from

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def names_array(names: Sequence[str]) -> np.ndarray:
    """Names as a fixed-width unicode array (saved and loaded without pickling)."""
    a = np.asarray([str(n) for n in names], dtype=str)
    return a if a.size else np.zeros(0, dtype="<U1")


def default_names(n: int, seeds: np.ndarray | None = None) -> np.ndarray:
    """Names for images that have none: ``seed-000123`` for generated samples with a seed, else ``#12``."""
    if seeds is not None:
        return names_array([f"seed-{int(s):06d}" if s >= 0 else f"#{i}" for i, s in enumerate(seeds)])
    return names_array([f"#{i}" for i in range(n)])


def image_names(s: ImageSet) -> np.ndarray:
    """The names of an image set: its own, or :func:`default_names`."""
    return s.names if s.names is not None else default_names(len(s), s.seeds)


def save_image_set(path: str | os.PathLike, s: ImageSet, **extra: np.ndarray) -> None:
    arrays = {"images": s.images}
    for k in ("labels", "seeds", "source_ids", "names"):
        v = getattr(s, k)
        if v is not None:
            arrays[k] = v
    arrays.update(extra)
    atomic_save_npz(path, **arrays)


def sample_file_name(seed: int) -> str:
    """The file a generated sample is exported to: named by its seed (``seed-000123.png``)."""
    return f"seed-{int(seed):06d}.png"


def save_image_folder(out: str | os.PathLike, s: ImageSet, config: typing.Any, **extra: typing.Any) -> Path:
    """Write generated samples as one PNG per sample, named by its seed, into the new directory ``out``
    (built aside and renamed: all or nothing), with a ``manifest.json`` (stage ``samples``: the config,
    ``extra`` and each file's seed and label). Image-folder tools (FID and the like) read the PNGs;
    :func:`load_images` reads them back with their names, seeds and labels."""
    from PIL import Image

    if s.seeds is None:
        raise UsageError("samples: no seeds; expected generated samples (each named by its seed)")
    names = [sample_file_name(x) for x in s.seeds]
    if len(set(names)) != len(names):
        raise UsageError("samples: two samples share a seed; expected one file per seed")
    labels = s.labels if s.labels is not None else np.full(len(s), -1, np.int64)
    out = Path(out)
    with atomic_dir(out) as tmp:
        for name, img in zip(names, s.images):
            Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(tmp / name, format="PNG")
        files = [{"name": n, "seed": int(sd), "label": int(lb)} for n, sd, lb in zip(names, s.seeds, labels)]
        write_manifest(tmp, "samples", config, files=files, n_samples=len(s), image_shape=list(s.shape), **extra)
    return out


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


def read_npz(path: str | os.PathLike, names: tuple[str, ...], required: str, expected: str) -> dict[str, np.ndarray]:
    """The arrays ``names`` that a ``.npz`` file holds (``required`` must be there), never unpickling.

    A file that does not start as a zip archive is refused before ``np.load`` sees it (it would take
    anything else for a pickle); object arrays are refused. ``expected`` ends the missing-array message.
    """
    path = Path(path)
    what = str(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load would take anything else for a pickle
            raise UsageError(f"{what}: not a .npz archive (it does not start as a zip file); "
                             "expected arrays saved with numpy.savez")
        with np.load(path, allow_pickle=False) as z:
            if required not in z.files:
                raise UsageError(f"{what}: no {required!r} array (has {sorted(z.files)}); expected {expected}")
            return {k: z[k] for k in names if k in z.files}
    except UsageError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise UsageError(f"{what}: holds object arrays, which are never unpickled; "
                             "expected plain numeric arrays") from e
        raise UsageError(f"{what}: not a readable .npz file ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"{what}: not a readable .npz file ({e})") from e


def load_npz(path: str | os.PathLike) -> ImageSet:
    what = str(path)
    arrays = read_npz(path, ("images", "labels", "seeds", "source_ids", "names"), "images", "the diffmem npz layout")
    images = _check_images(arrays["images"], what)
    n = images.shape[0]
    extra = {k: _int_vector(v, n, k, what) for k, v in arrays.items() if k not in ("images", "names")}
    if "names" in arrays:
        names = arrays["names"]
        if names.dtype.kind != "U" or names.shape != (n,):
            raise UsageError(f"{what}: 'names' has dtype {names.dtype} and shape {names.shape}; expected {n} "
                             "unicode strings (one name per image)")
        extra["names"] = names
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


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key: runs of digits compare as numbers (``img2`` < ``img10``), ties broken by the plain string."""
    parts = _DIGITS.split(name)  # text, digits, text, digits, …: same kind at the same position
    return tuple((int(p), p) if i % 2 else p for i, p in enumerate(parts)) + (name,)


def list_image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files below ``folder`` in natural order of their relative paths; symlinked directories are
    not followed."""
    folder = Path(folder)
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                out.append(Path(root) / name)
        if not recursive:
            break
    return sorted(out, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


SHAPE_HINT = "convert them to one shape first"


def stack_images(arrays: list[np.ndarray], names: list[str], what: str, hint: str = SHAPE_HINT) -> np.ndarray:
    """Stack C×H×W images, refusing mixed shapes or channel counts with one clear line ending in ``hint``."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        for a, name in zip(arrays, names):
            if a.shape != first:
                kind = "channels (grayscale and RGB mixed)" if a.shape[1:] == first[1:] else "sizes"
                raise UsageError(f"{what}: images differ in {kind}: {names[0]} is {first}, {name} is {a.shape}; "
                                 f"{hint}")
    return np.stack(arrays)


def read_converted(read: Callable[[], np.ndarray], convert: Convert | None) -> np.ndarray:
    """One C×H×W image from ``read()``, passed through ``convert`` when given."""
    a = read()
    return a if convert is None else convert(a[None])[0]


def _samples_manifest(folder: Path, names: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Seeds and labels of the files of a samples folder written by ``diffmem sample --out DIR/``."""
    m = read_manifest(folder)
    files = m.get("files") if m and m.get("stage") == "samples" else None
    if not isinstance(files, list):
        return None, None
    by_name = {f.get("name"): f for f in files if isinstance(f, dict)}
    rows = [by_name.get(str(n), {}) for n in names]

    def column(key: str) -> np.ndarray | None:
        values = [r.get(key) for r in rows]
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        return np.array(values, dtype=np.int64) if ok else None

    return column("seed"), column("label")


def load_image_folder(folder: str | os.PathLike, convert: Convert | None = None, hint: str = SHAPE_HINT) -> ImageSet:
    """Every image below ``folder`` (natural order), named by its relative path; ``convert`` applies to each
    image before they are stacked. A folder written by ``diffmem sample`` also gives each image its seed and
    label (from its ``manifest.json``)."""
    folder = Path(folder)
    files = list_image_files(folder)
    if not files:
        raise UsageError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    names = [p.relative_to(folder).as_posix() for p in files]
    arrays = [read_converted(lambda p=p: read_image_file(p), convert) for p in files]
    images = stack_images(arrays, names, str(folder), hint)
    name_arr = names_array(names)
    seeds, labels = _samples_manifest(folder, name_arr)
    return ImageSet(images=images, names=name_arr, seeds=seeds, labels=labels)


def load_images(path: str | os.PathLike, convert: Convert | None = None, hint: str = SHAPE_HINT) -> ImageSet:
    """Load an image set from a ``.npz``, an artefact directory, an image folder or an image zip.

    ``path`` may carry the ``npz:``, ``folder:`` or ``zip:`` prefix of a data source; a file ending in
    ``.zip`` is read as an image zip (plain, or EDM-style with ``dataset.json`` labels). ``convert``
    (e.g. a :class:`diffmem.data.convert.Conversion`) is applied to every image; ``hint`` ends the
    refusal of mixed shapes.
    """
    text = str(path)
    kind, sep, rest = text.partition(":")
    if sep and kind in ("npz", "folder", "zip") and rest and not Path(text).exists():
        path, forced = rest, kind
    else:
        forced = None
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file or directory")
    if forced == "folder" and not p.is_dir():
        raise UsageError(f"{text}: {str(path)!r} is not a directory; expected a folder of images")
    if p.is_file():
        if forced == "zip" or (forced is None and p.suffix.lower() == ".zip"):
            from diffmem.data.zipfolder import read_zip_images  # diffmem.data imports this module: a cycle at the top

            images, names, labels = read_zip_images(p, str(path), convert, hint)
            return ImageSet(images=images, names=names, labels=labels)
        if forced == "npz" or p.suffix.lower() == ".npz":
            return _converted(load_npz(p), convert)
        raise UsageError(f"{path}: unsupported file type {p.suffix!r}; expected .npz, .zip, an artefact directory "
                         "or an image folder")
    if forced in ("zip", "npz"):
        raise UsageError(f"{text}: {str(path)!r} is a directory; expected a .{forced} file")
    if forced is None:
        for name in ARTEFACT_FILES:
            if (p / name).is_file():
                return _converted(load_npz(p / name), convert)
        npzs = sorted(p.glob("*.npz"))
        if len(npzs) == 1 and not list_image_files(p, recursive=False):
            return _converted(load_npz(npzs[0]), convert)
    return load_image_folder(p, convert, hint)


def _converted(s: ImageSet, convert: Convert | None) -> ImageSet:
    if convert is None:
        return s
    return ImageSet(images=np.ascontiguousarray(convert(s.images)), labels=s.labels, seeds=s.seeds,
                    source_ids=s.source_ids, names=s.names)


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
