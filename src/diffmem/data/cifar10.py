"""CIFAR-10 as its authors distribute it, read without executing anything from the archive.

Two official layouts are read (the training split, ``data_batch_1`` … ``data_batch_5``, 50,000
images, in batch order; ``source_ids`` index into that order):

- the python version (``cifar-10-python.tar.gz``): each batch is a Python-2 pickle of a dict
  ``{"data": uint8 ndarray 10000×3072, "labels": [int], ...}``. It is parsed by a restricted
  unpickler whose ``find_class`` admits only the three names a pickled NumPy array refers to
  (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``; also the
  ``numpy._core`` spelling of NumPy 2) and maps them to data-only stand-ins: NumPy's own
  reconstruction code never runs, numeric dtypes only, every other global is refused;
- the binary version (``cifar-10-binary.tar.gz``): records of 1 label byte + 3,072 pixel bytes.

``PATH`` may also be the extracted folder (``cifar-10-batches-py`` or ``cifar-10-batches-bin``).
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from diffmem.artefacts import file_hash
from diffmem.data.source import Source
from diffmem.errors import UsageError, reason

log = logging.getLogger(__name__)

PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS  # binary version: label byte + R, G, B planes
PY_BATCH = re.compile(r"(^|/)data_batch_([1-5])$")
BIN_BATCH = re.compile(r"(^|/)data_batch_([1-5])\.bin$")
_SAFE_DTYPE_KINDS = "biuf"  # bool, signed, unsigned, float: plain numbers only


# ----------------------------------------------------------------------------------------------
# Restricted unpickling: data-only stand-ins for the names a pickled ndarray refers to


class _DTypeStub:
    """Stand-in for ``numpy.dtype(name, align, copy)`` followed by ``__setstate__``."""

    def __init__(self, name, align=False, copy=True):
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str):
            raise pickle.UnpicklingError(f"dtype name {name!r} is not a string")
        try:
            dt = np.dtype(name)
        except TypeError as e:
            raise pickle.UnpicklingError(f"dtype {name!r} is not a NumPy dtype") from e
        if dt.kind not in _SAFE_DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise pickle.UnpicklingError(f"dtype {name!r} is not a plain numeric dtype")
        self.dtype = dt

    def __setstate__(self, state):
        # state = (version, endian, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed dtype state")
        endian = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if endian not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"dtype byte order {endian!r} is not valid")
        if any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("structured or sub-array dtypes are refused")
        if endian in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(endian)


class _ArrayStub:
    """Stand-in for the empty array ``_reconstruct`` makes; ``__setstate__`` fills ``.array``."""

    def __init__(self):
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        # state = (version, shape, dtype, is_fortran, rawdata); version is absent in old pickles
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed ndarray state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DTypeStub):
            raise pickle.UnpicklingError("ndarray state without a plain dtype")
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"ndarray shape {shape!r} is not valid")
        if isinstance(raw, str):  # a Python-2 str read as text
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("ndarray payload is not raw bytes (object arrays are refused)")
        n = int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize
        if len(raw) != n:
            raise pickle.UnpicklingError(f"ndarray payload has {len(raw)} bytes; shape {shape} needs {n}")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C")  # read-only view of the payload


class _Admitted:
    """An admitted global: callable as the original would be, and closed to ``BUILD``."""

    __slots__ = ("fn", "name")

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, *args):
        if self.fn is None:
            raise pickle.UnpicklingError(f"calling {self.name} is refused")
        return self.fn(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"setting the state of {self.name} is refused")


_NDARRAY = _Admitted(None, "numpy.ndarray")  # only ever passed to _reconstruct as its class


def _reconstruct(cls, shape, typecode):
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of a class other than numpy.ndarray is refused")
    return _ArrayStub()


_RECONSTRUCT = _Admitted(_reconstruct, "numpy.core.multiarray._reconstruct")
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Admitted(_DTypeStub, "numpy.dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and NumPy numeric arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is refused (only plain data and "
                                         "numeric arrays are read)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are refused")


def _unstub(obj):
    """Replace array stand-ins by the arrays they hold, through dicts, lists and tuples."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("an ndarray without its data")
        return obj.array
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _unstub(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unstub(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unstub(v) for v in obj)
    if isinstance(obj, (_DTypeStub, _Admitted)):
        raise pickle.UnpicklingError("a bare dtype or class in the data")
    return obj


def restricted_loads(data: bytes):
    """Unpickle ``data`` admitting plain data and numeric arrays only.

    Python-2 strings come back as ``bytes`` (no decoding of the pixel payload); dict keys are
    decoded to ``str``.
    """
    return _unstub(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())


# ----------------------------------------------------------------------------------------------
# Archive reading


def _read_members(path: Path, pattern: re.Pattern, meta_names: tuple[str, ...]) -> tuple[dict, bytes | None]:
    """{batch number: bytes} of the members matching ``pattern``, and the meta file, from a tar or folder."""
    batches: dict[int, bytes] = {}
    meta = None
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path).as_posix()
            m = pattern.search(rel)
            if m and p.is_file():
                batches[int(m.group(2))] = p.read_bytes()
            elif p.name in meta_names and p.is_file():
                meta = p.read_bytes()
        return batches, meta
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            m = pattern.search(member.name)
            base = member.name.rsplit("/", 1)[-1]
            if m or base in meta_names:
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} is truncated")
                if m:
                    batches[int(m.group(2))] = data
                else:
                    meta = data
    return batches, meta


def _python_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = restricted_loads(data)
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise ValueError(f"{name} is not a CIFAR-10 batch dict with 'data' and 'labels'")
    x, y = d["data"], np.asarray(d["labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != PIXELS:
        raise ValueError(f"{name}: 'data' is not a uint8 N×3072 array")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: 'labels' is not one integer per image")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _binary_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise ValueError(f"{name} has {len(data)} bytes, not a whole number of {RECORD_BYTES}-byte records")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)


def load_cifar10(path: Path, option: str, spec: str) -> Source:
    """The 50,000 training images of CIFAR-10 (python or binary version) with labels 0..9."""
    try:
        batches, meta = _read_members(path, PY_BATCH, ("batches.meta",))
        kind = "python"
        if not batches:
            batches, meta = _read_members(path, BIN_BATCH, ("batches.meta.txt",))
            kind = "binary"
        if not batches:
            raise ValueError("no data_batch_1..5 (python) or data_batch_1..5.bin (binary) inside")
        missing = sorted(set(range(1, 6)) - set(batches))
        if missing:
            log.warning("%s: batches %s are missing; reading the %d present", spec, missing, len(batches))
        parse = _python_batch if kind == "python" else _binary_batch
        parts = [parse(batches[k], f"data_batch_{k}") for k in sorted(batches)]
        names = _class_names(meta, kind)
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, pickle.UnpicklingError,
            IndexError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise UsageError(f"{option}: {spec!r} is not a readable CIFAR-10 archive "
                         f"({reason(e)}); expected the official cifar-10-python.tar.gz "
                         "or cifar-10-binary.tar.gz") from e
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"{option}: {spec!r} has labels outside 0..9 ({labels.min()}..{labels.max()})")
    inputs = {str(path): file_hash(path) if path.is_file() else f"{kind} folder"}
    log.info("%s: %d images (%s version)", spec, len(labels), kind)
    return Source(images=images, labels=labels, class_names=names, spec=spec, inputs=inputs)


def _class_names(meta: bytes | None, kind: str) -> tuple[str, ...]:
    default = tuple(str(i) for i in range(10))
    if meta is None:
        return default
    if kind == "python":
        names = restricted_loads(meta).get("label_names")
        if isinstance(names, list):
            names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    else:
        names = [line.strip() for line in meta.decode("latin1").splitlines() if line.strip()]
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        return default
    return tuple(names)
