"""Dataset sources: the ``--source`` / ``--mix`` specification and the simple loaders.

A source specification is ``KIND`` or ``KIND:ARG``:

- ``digits``: scikit-learn's 1,797 8×8 handwritten digits (ships with scikit-learn; offline);
- ``shapes`` or ``shapes:res=16,classes=10,diversity=0.5,n=5000``: procedurally drawn shapes;
- ``cifar10:PATH``: the CIFAR-10 archive as distributed (python or binary version);
- ``zip:PATH``: an image zip with a ``dataset.json`` label list (EDM's dataset tool layout);
- ``folder:PATH``: image files; labels from sub-folder names (sorted), unlabeled when flat;
- ``npz:PATH``: the diffmem ``.npz`` layout (``images`` uint8 N×C×H×W, optional ``labels``).

Every loader returns a :class:`Source`; every bad input raises a one-line
:class:`~diffmem.errors.UsageError` that names the option (``--source`` or ``--mix``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffmem.errors import UsageError

log = logging.getLogger(__name__)

SOURCE_KINDS = ("digits", "shapes", "cifar10", "zip", "folder", "npz")
SOURCE_FORMS = ("digits, shapes[:res=R,classes=C,diversity=D,n=N,channels=1|3,seed=S], cifar10:PATH, zip:PATH, "
                "folder:PATH or npz:PATH")


@dataclass(frozen=True)
class Source:
    """All images of one source, before any subset is drawn."""

    images: np.ndarray  # uint8 M×C×H×W
    labels: np.ndarray | None  # int64 M with values 0..len(class_names)-1, or None (unlabeled)
    class_names: tuple[str, ...] = ()  # one per label value; () when unlabeled
    spec: str = ""  # the specification it was loaded from
    inputs: dict = field(default_factory=dict)  # content hashes of the files read
    names: np.ndarray | None = None  # str M: relative path in the folder or zip; None: no file names

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image_names(self) -> np.ndarray:
        """Each image's name: its file name where it has one, else ``KIND:INDEX`` (``digits:1234``)."""
        if self.names is not None:
            return self.names
        from diffmem.io import names_array

        kind = self.spec.partition(":")[0] or "source"
        return names_array([f"{kind}:{i}" for i in range(len(self))])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.labels is not None else 0


def reason(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line: ``"ClassName: message"`` with whitespace collapsed."""
    text = " ".join(f"{e.__class__.__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def split_spec(spec: str, option: str) -> tuple[str, str]:
    """``"cifar10:/data/x.tar.gz"`` → ``("cifar10", "/data/x.tar.gz")``; checks the kind."""
    kind, sep, arg = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise UsageError(f"{option}: {spec!r} is not a known source; expected {SOURCE_FORMS}")
    if kind in ("cifar10", "zip", "folder", "npz") and not arg:
        raise UsageError(f"{option}: {spec!r} needs a path; expected {kind}:PATH")
    if kind == "digits" and sep:
        raise UsageError(f"{option}: {spec!r} takes no arguments; expected digits")
    return kind, arg


def existing_path(arg: str, option: str, spec: str, want_dir: bool = False) -> Path:
    """The path of a ``KIND:PATH`` spec, checked to exist (and to be a file or a directory)."""
    p = Path(arg).expanduser()
    if not p.exists():
        raise UsageError(f"{option}: {spec!r}: {arg!r} does not exist")
    if want_dir and not p.is_dir():
        raise UsageError(f"{option}: {spec!r}: {arg!r} is not a directory; expected a folder of images")
    return p


def load_source(spec: str, option: str = "--source") -> Source:
    """Load every image of the source named by ``spec`` (see the module docstring)."""
    kind, arg = split_spec(spec, option)
    if kind == "digits":
        return load_digits(spec)
    if kind == "shapes":
        from diffmem.data.shapes import load_shapes

        return load_shapes(arg, option, spec)
    if kind == "cifar10":
        from diffmem.data.cifar10 import load_cifar10

        return load_cifar10(existing_path(arg, option, spec), option, spec)
    if kind == "zip":
        from diffmem.data.zipfolder import load_zip

        return load_zip(existing_path(arg, option, spec), option, spec)
    if kind == "folder":
        return load_folder(existing_path(arg, option, spec, want_dir=True), option, spec)
    return load_npz_source(existing_path(arg, option, spec), option, spec)


def relabel(raw: np.ndarray, names: list[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map arbitrary integer labels to 0..C−1 in sorted order; names default to the original values."""
    values, labels = np.unique(raw, return_inverse=True)
    if names is None:
        names = [str(int(v)) for v in values]
    else:
        names = [names[int(v)] if 0 <= int(v) < len(names) else str(int(v)) for v in values]
    return labels.astype(np.int64).reshape(-1), tuple(names)


# ----------------------------------------------------------------------------------------------
# digits


def digits_uint8(v: np.ndarray) -> np.ndarray:
    """scikit-learn digit intensities 0..16 → uint8 0..255: ⌊v·255/16 + ½⌋ (round half up)."""
    return np.floor(np.asarray(v, dtype=np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def _digits_table() -> np.ndarray:
    """scikit-learn's digits table (1,797 rows: 64 intensities 0..16, then the digit).

    Read straight from the CSV file scikit-learn ships (importing ``sklearn.datasets`` costs
    seconds); through ``sklearn.datasets.load_digits`` when that file is not where expected.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise UsageError("--source: 'digits' needs scikit-learn, which is not installed; pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        if table.shape == (1797, 65):
            return table
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    return np.concatenate([d.data, d.target[:, None]], axis=1)


def load_digits(spec: str = "digits") -> Source:
    """scikit-learn's 1,797 8×8 digits as uint8 1×8×8 images with labels 0..9."""
    table = _digits_table()
    images = digits_uint8(table[:, :64]).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    return Source(images=np.ascontiguousarray(images), labels=labels,
                  class_names=tuple(str(i) for i in range(10)), spec=spec,
                  inputs={"sklearn_digits": "scikit-learn's digits (1,797 images)"})


# ----------------------------------------------------------------------------------------------
# npz


def load_npz_source(path: Path, option: str, spec: str) -> Source:
    """A diffmem ``.npz``: ``labels`` (if any) ≥ 0 are classes; all −1 means unlabeled."""
    from diffmem.artefacts import file_hash
    from diffmem.io import load_npz

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


# ----------------------------------------------------------------------------------------------
# folder


def load_folder(folder: Path, option: str, spec: str) -> Source:
    """Images below ``folder`` (natural order of relative paths, which name them); each first-level
    sub-folder is a class (classes numbered in sorted order of the sub-folder names).

    Images directly in ``folder`` (and no sub-folders with images) make an unlabeled source.
    """
    from diffmem.artefacts import array_hash
    from diffmem.io import list_image_files, names_array, read_image_file, stack_images

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
