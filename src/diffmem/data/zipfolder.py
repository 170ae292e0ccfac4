"""Image zips as EDM's dataset tool writes them: images plus an optional ``dataset.json``.

Layout: image members (e.g. ``00000/img00000000.png``) in natural order of their names (the sorted
order for EDM's zero-padded names), each image named by its member name, and
``dataset.json`` = ``{"labels": [["00000/img00000000.png", 6], ...]}`` (or ``"labels": null``
for an unlabeled set). Members are read in memory, never extracted; a member name that could
escape a folder (absolute, ``..``, a drive letter, a backslash) makes the whole archive refused.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from diffmem.artefacts import file_hash
from diffmem.data.source import Source, relabel
from diffmem.errors import UsageError, bad, reason
from diffmem.io import (
    IMAGE_SUFFIXES,
    SHAPE_HINT,
    Convert,
    names_array,
    natural_key,
    read_converted,
    read_image_file,
    stack_images,
)

MAX_MEMBER_BYTES = 64 << 20  # refuse single members that would expand beyond this (zip bombs)
_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_member_name(name: str) -> bool:
    """True when a member name is absolute or could climb out of the extraction folder."""
    if name.startswith(("/", "\\")) or "\\" in name or _DRIVE.match(name) or "\x00" in name:
        return True
    return any(part == ".." for part in name.split("/"))


def _read_image(data: bytes, name: str, what: str) -> np.ndarray:
    return read_image_file(io.BytesIO(data), name=f"{what}: member {name!r}")


def _labels_from_json(raw: bytes, names: list[str], what: str) -> np.ndarray | None:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{what}: dataset.json is not valid JSON ({reason(e)})") from e
    entries = meta.get("labels") if isinstance(meta, dict) else None
    if entries is None:
        if not isinstance(meta, dict) or "labels" not in meta:
            raise UsageError(f"{what}: dataset.json has no 'labels' key; expected "
                             '{"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}')
        return None
    if not isinstance(entries, list):
        raise UsageError(f"{what}: dataset.json 'labels' is {type(entries).__name__}; expected a list of "
                         "[file name, integer label] pairs")
    table: dict[str, int] = {}
    for e in entries:
        ok = isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
        if not ok or isinstance(e[1], bool) or not isinstance(e[1], int):
            raise bad(f"{what}: dataset.json label entry", str(e)[:80], "[file name, integer label]")
        table[e[0].replace("\\", "/")] = e[1]
    missing = [n for n in names if n not in table]
    if missing:
        raise UsageError(f"{what}: dataset.json has no label for {missing[0]!r} ({len(missing)} images "
                         "unlabeled); expected one label per image")
    return np.array([table[n] for n in names], dtype=np.int64)


def read_zip_images(path: Path, what: str, convert: Convert | None = None,
                    hint: str = SHAPE_HINT) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every image member of the zip (natural order of names), the names, and the labels of
    ``dataset.json`` as written there (None when it is absent or says ``"labels": null``).

    ``convert`` applies to each image before they are stacked; ``what`` starts every error message.
    """
    if path.is_dir():
        raise UsageError(f"{what} is a directory; expected a .zip file (use folder:PATH for a folder)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            for i in infos:
                if unsafe_member_name(i.filename):
                    raise UsageError(f"{what}: member name {i.filename!r} escapes the archive folder; "
                                     "refusing the archive")
                if i.file_size > MAX_MEMBER_BYTES:
                    raise UsageError(f"{what}: member {i.filename!r} expands to {i.file_size} bytes; "
                                     f"expected at most {MAX_MEMBER_BYTES}")
            names = sorted((i.filename for i in infos if i.filename.lower().endswith(IMAGE_SUFFIXES)),
                           key=natural_key)
            if not names:
                raise UsageError(f"{what} holds no image members ({', '.join(IMAGE_SUFFIXES)})")
            arrays = [read_converted(lambda n=n: _read_image(zf.read(n), n, what), convert) for n in names]
            meta = zf.read("dataset.json") if "dataset.json" in zf.namelist() else None
    except UsageError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise UsageError(f"{what} is not a readable zip archive ({reason(e)})") from e
    images = stack_images(arrays, names, what, hint)
    labels = None
    if meta is not None:
        labels = _labels_from_json(meta, names, what)
        if labels is not None and labels.size and labels.min() < 0:
            raise UsageError(f"{what}: dataset.json has negative label {int(labels.min())}; expected labels ≥ 0")
    return images, names_array(names), labels


def load_zip(path: Path, option: str, spec: str) -> Source:
    """Every image member of the zip (natural order of names) with the labels of ``dataset.json``."""
    images, names, raw = read_zip_images(path, f"{option}: {spec!r}")
    labels, class_names = None, ()
    if raw is not None:
        labels, class_names = relabel(raw)
    return Source(images=images, labels=labels, class_names=class_names, spec=spec, names=names,
                  inputs={str(path): file_hash(path)})
