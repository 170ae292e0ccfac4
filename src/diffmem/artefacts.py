"""Artefact plumbing: atomic writes, config hashing, manifests, "is complete?" checks.

Every artefact directory holds a ``manifest.json``::

    {"stage": "dataset", "status": "complete", "config": {...}, "config_hash": "…",
     "inputs": {...}, "version": "0.1.0", "created": "…", ...extra}

An artefact either exists whole or not at all: files are written to a temporary sibling and
moved into place with ``os.replace``; whole directories are built in a temporary sibling
directory and renamed (see :func:`atomic_dir`). Temporaries are created with the modes the
umask allows (0644 files and 0755 directories under the usual 022), so artefacts shared on a
file system are as readable as any other file their owner writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diffmem import __version__
from diffmem.errors import RunError, UsageError, bad

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"  # the file dir_lock holds a directory's lock on


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, paths and NumPy scalars to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):  # JSON has no NaN or inf
        return None if obj != obj else ("inf" if obj > 0 else "-inf")
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(obj: Any, length: int = 16) -> str:
    """Content address of a (resolved) config: sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def array_hash(a: np.ndarray, length: int = 16) -> str:
    h = hashlib.sha256()
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:length]


TMP_ATTEMPTS = 100  # random names tried before giving up (a clash is astronomically rare)


def _tmp_name(path: Path, suffix: str = "") -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A new empty temporary file beside ``path``, created with mode 0666 less the umask.

    ``tempfile.mkstemp`` would create it 0600, and ``os.replace`` keeps that mode, so every artefact
    would end up unreadable to the group whatever the umask; ``os.open`` lets the umask decide.
    """
    for _ in range(TMP_ATTEMPTS):
        tmp = _tmp_name(path, suffix)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def _tmp_dir_sibling(path: Path) -> Path:
    """A new empty temporary directory beside ``path``, mode 0777 less the umask (``mkdtemp`` uses 0700)."""
    for _ in range(TMP_ATTEMPTS):
        tmp = _tmp_name(path)
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(path)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed) written atomically; object arrays are refused."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; only plain numeric arrays are saved")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


NEW_DIR = "a new or empty directory"


def _check_parents(path: Path, option: str) -> None:
    """A path whose nearest existing ancestor is not a directory cannot be created: a RunError (exit 1), as when
    the file system refuses to create it for any other reason (permissions), before any work starts."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"{option}: cannot create {str(path)!r}: {str(parent)!r} is a file, not a directory")
            return


def check_new_dir(out: str | os.PathLike, option: str = "--out", *, keep: tuple[str, ...] = (),
                  expected: str = NEW_DIR) -> Path:
    """``out`` as the directory of a new artefact: it does not exist yet, or it is an empty directory
    (entries named in ``keep`` aside: what a resumable command leaves there itself, such as ``.lock``).
    Anything else is a UsageError naming ``option``, the path, what it holds and ``expected``; a path below a
    regular file, a RunError (it cannot be created)."""
    given, out = os.fspath(out), Path(out)  # messages show the path as it was given
    _check_parents(out, option)
    if not out.exists():
        return out
    if not out.is_dir():
        raise bad(option, given, f"{expected} (it is a file)")
    others = sorted(p.name for p in out.iterdir() if p.name not in keep)
    if others:
        m = read_manifest(out)
        held = (f"a {m.get('stage')!r} artefact" if m and m.get("stage") else
                f"{len(others)} {'entry' if len(others) == 1 else 'entries'}: {', '.join(others[:3])}"
                f"{', …' if len(others) > 3 else ''}")
        raise bad(option, given, f"{expected} (it holds {held})")
    return out


def check_resumable(out: str | os.PathLike, identity: str, what: str, *, key: str = "config_hash",
                    stage: str | None = None, config: Any = None, keep: tuple[str, ...] = (),
                    option: str = "--out") -> dict[str, Any] | None:
    """``out`` for a resumable stage: a directory holding that stage's own work (the manifest whose ``key`` is
    ``identity``, returned), or a new or empty one (:func:`check_new_dir`, entries in ``keep`` aside). Anything
    else is refused in one line that names ``what`` the stage is ("an EMM search") and how the work there differs:
    the first field in which its config differs from ``config`` when it is the same ``stage``, else its stage."""
    m = read_manifest(out)
    if m is not None and m.get(key) != identity:
        old = m.get("config")
        same_stage = stage is not None and m.get("stage") == stage
        detail = (first_difference(old, to_jsonable(config)) if same_stage and config is not None
                  else f"stage {m.get('stage')!r}")
        raise UsageError(f"{option}: {os.fspath(out)!r} holds {what} of a different config ({detail}); "
                         "choose a new directory or rerun with the same config to resume")
    if m is None:
        check_new_dir(out, option, keep=keep, expected=f"a new directory, or {what} directory to resume")
    return m


def first_difference(old: Any, new: Any, where: str = "") -> str:
    """The first field (in key order, by its dotted path) in which two JSON configs differ, as
    ``train.lr: 0.002 there vs 0.001 now``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return first_difference(old.get(k), new.get(k), f"{where}.{k}" if where else k)
    return f"{where or 'config'}: {json.dumps(old)} there vs {json.dumps(new)} now"


def check_new_file(path: str | os.PathLike, option: str = "--out", expected: str = "a file name") -> Path:
    """``path`` as a file to write (a new one, or one to replace): not a directory, and not below a file."""
    given, path = os.fspath(path), Path(path)
    _check_parents(path, option)
    if path.is_dir():
        raise bad(option, given, f"{expected} (it is a directory)")
    return path


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it to ``final`` on success.

    ``final`` must be new or empty unless ``overwrite`` (:func:`check_new_dir`). On any exception the
    temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    if not overwrite:
        check_new_dir(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_dir_sibling(final)
    except OSError as e:
        raise RunError(f"cannot create {final}: {e.strerror or e}") from e
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temporary(name: str) -> bool:
    """Whether a file or directory name is one of an atomic write's temporaries (``.<name>.<random>.tmp…``)."""
    return name.startswith(".") and ".tmp" in name


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Remove the temporaries (``.<name>.<random>.tmp…``) that killed atomic writes left below ``directory``;
    returns how many. Call it only while holding ``dir_lock(directory)``: a live writer's look the same."""
    removed = 0
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in [*files, *dirs]:
            if is_temporary(name):
                p = Path(root) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed += 1
        dirs[:] = [d for d in dirs if not is_temporary(d)]
    return removed


def write_manifest(
    directory: str | os.PathLike,
    stage: str,
    config: Any,
    *,
    status: str = "complete",
    inputs: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``manifest.json`` atomically and return it."""
    cfg = to_jsonable(config)
    manifest = {
        "stage": stage,
        "status": status,
        "config": cfg,
        "config_hash": config_hash(cfg),
        "inputs": to_jsonable(inputs or {}),
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **to_jsonable(extra),
    }
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when there is none or it is unreadable."""
    path = Path(directory) / MANIFEST
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def is_complete(directory: str | os.PathLike, stage: str, config: Any | None = None) -> bool:
    """True when ``directory`` holds a complete artefact of ``stage`` (and of ``config`` if given)."""
    m = read_manifest(directory)
    if m is None or m.get("stage") != stage or m.get("status") != "complete":
        return False
    return config is None or m.get("config_hash") == config_hash(config)


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for as long as the block runs.

    A second process that asks for the same directory is refused at once with a clear message
    rather than both writing into it. The lock is an advisory ``flock`` on ``directory/.lock`` (:data:`LOCK_FILE`);
    the kernel drops it when the holder exits, so a killed process never leaves a stale lock.
    """
    import fcntl

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunError(f"{option}: cannot use {str(directory)!r}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(f"{option}: {str(directory)!r} is in use by another diffmem process "
                             f"(pid {holder}); wait for it to finish or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
