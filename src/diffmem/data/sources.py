"""Dataset sources: the ``--source`` / ``--mix`` specification and the table of loaders.

A source specification is ``KIND`` or ``KIND:ARG``:

- ``digits``: scikit-learn's 1,797 8×8 handwritten digits (ships with scikit-learn; offline);
- ``shapes`` or ``shapes:res=16,classes=10,diversity=0.5,n=5000``: procedurally drawn shapes;
- ``cifar10:PATH``: the CIFAR-10 archive as distributed (python or binary version);
- ``zip:PATH``: an image zip with a ``dataset.json`` label list (EDM's dataset tool layout);
- ``folder:PATH``: image files; labels from sub-folder names (sorted), unlabeled when flat;
- ``npz:PATH``: the diffmem ``.npz`` layout (``images`` uint8 N×C×H×W, optional ``labels``).

Every loader returns a :class:`~diffmem.data.source.Source`; every bad input raises a one-line
:class:`~diffmem.errors.UsageError` that names the option it is given (``data.source`` or ``data.mix``, which
``diffmem data`` shows as ``--source`` and ``--mix``). A new source is one
module with a loader ``(arg, option, spec) -> Source`` and one row of :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffmem.data.cifar10 import load_cifar10
from diffmem.data.digits import load_digits
from diffmem.data.files import load_folder, load_npz_source
from diffmem.data.shapes import load_shapes
from diffmem.data.source import Source
from diffmem.data.zipfolder import load_zip
from diffmem.errors import UsageError


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: how its specification is written and the loader that reads it."""

    form: str  # the specification as the help and the errors show it
    takes: str  # what follows "KIND:": "nothing", "params" (optional k=v,…), "path" or "dir" (must exist)
    load: Callable[..., Source]  # (arg, option, spec) → every image; arg is a Path when takes is path or dir


SOURCES: dict[str, SourceKind] = {
    "digits": SourceKind("digits", "nothing", lambda arg, option, spec: load_digits(spec, option)),
    "shapes": SourceKind("shapes[:res=R,classes=C,diversity=D,n=N,channels=1|3,seed=S]", "params", load_shapes),
    "cifar10": SourceKind("cifar10:PATH", "path", load_cifar10),
    "zip": SourceKind("zip:PATH", "path", load_zip),
    "folder": SourceKind("folder:PATH", "dir", load_folder),
    "npz": SourceKind("npz:PATH", "path", load_npz_source),
}
SOURCE_KINDS = tuple(SOURCES)
PATH_KINDS = tuple(k for k, s in SOURCES.items() if s.takes in ("path", "dir"))  # kinds whose argument is a path
SOURCE_FORMS = ", ".join(s.form for s in list(SOURCES.values())[:-1]) + f" or {list(SOURCES.values())[-1].form}"


def split_spec(spec: str, option: str) -> tuple[str, str]:
    """``"cifar10:/data/x.tar.gz"`` → ``("cifar10", "/data/x.tar.gz")``; checks the kind."""
    kind, sep, arg = spec.partition(":")
    if kind not in SOURCES:
        raise UsageError(f"{option}: {spec!r} is not a known source; expected {SOURCE_FORMS}")
    if kind in PATH_KINDS and not arg:
        raise UsageError(f"{option}: {spec!r} needs a path; expected {kind}:PATH")
    if SOURCES[kind].takes == "nothing" and sep:
        raise UsageError(f"{option}: {spec!r} takes no arguments; expected {kind}")
    return kind, arg


def existing_path(arg: str, option: str, spec: str, want_dir: bool = False) -> Path:
    """The path of a ``KIND:PATH`` spec, checked to exist (and to be a file or a directory)."""
    p = Path(arg).expanduser()
    if not p.exists():
        raise UsageError(f"{option}: {spec!r}: {arg!r} does not exist")
    if want_dir and not p.is_dir():
        raise UsageError(f"{option}: {spec!r}: {arg!r} is not a directory; expected a folder of images")
    return p


def check_spec(spec: str, option: str = "data.source") -> None:
    """Refuse a source specification of an unknown kind, or whose file or folder does not exist, without reading
    it (a sweep checks its sources before any work)."""
    kind, arg = split_spec(spec, option)
    if SOURCES[kind].takes in ("path", "dir"):
        existing_path(arg, option, spec, want_dir=SOURCES[kind].takes == "dir")


def load_source(spec: str, option: str = "data.source") -> Source:
    """Load every image of the source named by ``spec`` (see the module docstring); ``option`` is what errors call
    it."""
    kind, arg = split_spec(spec, option)
    k = SOURCES[kind]
    if k.takes in ("path", "dir"):
        return k.load(existing_path(arg, option, spec, want_dir=k.takes == "dir"), option, spec)
    return k.load(arg, option, spec)


def absolute_spec(spec: str) -> str:
    """``KIND:PATH`` with PATH made absolute (so a job reads the same files from any working directory);
    any other specification as it is."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in PATH_KINDS and rest and not Path(rest).is_absolute():
        return f"{kind}:{Path(rest).resolve()}"
    return spec
