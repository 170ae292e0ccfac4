"""Sources read from files in diffmem's own layouts: ``npz:PATH`` (the ``.npz`` image array) and ``folder:PATH``
(image files; labels from the first level of sub-folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffmem.artefacts import array_hash, file_hash
from diffmem.data.source import Source, relabel
from diffmem.errors import UsageError
from diffmem.io import list_image_files, load_npz, names_array, read_image_file, stack_images


def load_npz_source(path: Path, option: str, spec: str) -> Source:
    """A diffmem ``.npz``: ``labels`` (if any) ≥ 0 are classes; all −1 means unlabeled."""
    if path.is_dir():
        raise UsageError(f"{option}: {spec!r} is a directory; expected a .npz file (use folder:PATH for images)")
    try:
        s = load_npz(path)
    except UsageError as e:
        raise UsageError(f"{option}: {e}") from e
    labels, names = None, ()
    if s.labels is not None and np.any(s.labels >= 0):
        if np.any(s.labels < 0):
            n_neg = int(np.sum(s.labels < 0))
            raise UsageError(f"{option}: {spec!r} has {n_neg} unlabeled images (label −1) among labeled ones; "
                             "expected all images labeled or none")
        labels, names = relabel(s.labels)
    return Source(images=s.images, labels=labels, class_names=names, spec=spec, names=s.names,
                  inputs={str(path): file_hash(path)})


def load_folder(folder: Path, option: str, spec: str) -> Source:
    """Images below ``folder`` (natural order of relative paths, which name them); each first-level
    sub-folder is a class (classes numbered in sorted order of the sub-folder names).

    Images directly in ``folder`` (and no sub-folders with images) make an unlabeled source.
    """
    files = list_image_files(folder)
    if not files:
        raise UsageError(f"{option}: {spec!r} holds no image files (.png, .jpg, …)")
    top = [p for p in files if p.parent == folder]
    nested = [p for p in files if p.parent != folder]
    if top and nested:
        raise UsageError(f"{option}: {spec!r} has images both directly in it ({top[0].name}) and in "
                         f"sub-folders ({nested[0].relative_to(folder)}); expected one or the other")
    rel = [p.relative_to(folder).as_posix() for p in files]
    try:
        arrays = [read_image_file(p) for p in files]
        images = stack_images(arrays, rel, f"{option}: {spec!r}")
    except UsageError as e:
        msg = str(e)
        raise UsageError(msg if msg.startswith(option) else f"{option}: {msg}") from e
    labels, names = None, ()
    if nested:
        class_of = [p.relative_to(folder).parts[0] for p in files]
        names = tuple(sorted(set(class_of)))
        index = {n: i for i, n in enumerate(names)}
        labels = np.array([index[c] for c in class_of], dtype=np.int64)
    return Source(images=images, labels=labels, class_names=names, spec=spec, names=names_array(rel),
                  inputs={str(folder): array_hash(images)})
