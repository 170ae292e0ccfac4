"""Weights on disk: denoiser snapshots and resumable training states, all safetensors (no pickle).

- A **snapshot** (``checkpoints/snapshot-<kimg>.safetensors``, ``final.safetensors``) holds the EMA
  weights of the denoiser with the resolved :class:`ModelConfig` as JSON in the metadata, so it
  rebuilds its model with nothing else.
- The **training state** (``state.safetensors``) holds the raw weights (``model.*``), the EMA
  (``ema.*``), Adam's moments (``opt.<i>.*``), and in the metadata the step, images seen and the
  run's config hash. Every random draw of training derives from (seed, step), so the step is the
  whole random state. A SHA-256 digest of all tensors guards against damage.

Files are written whole or not at all (temporary sibling + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from diffmem import __version__
from diffmem.artefacts import atomic_write_bytes, to_jsonable
from diffmem.config import ModelConfig, from_dict
from diffmem.errors import UsageError, bad
from diffmem.nn import build_denoiser
from diffmem.nn.unet import NETWORK_LAYOUT

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "diffmem-denoiser"
STATE_FORMAT = "diffmem-train-state"
STATE_FILE = "state.safetensors"
FINAL_FILE = "final.safetensors"
SNAPSHOT_DIR = "checkpoints"
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d+(?:\.\d+)?)\.safetensors$")


def snapshot_name(kimg: float) -> str:
    """``snapshot-000128.000.safetensors``: sortable by name, exact to one image at any batch size."""
    return f"snapshot-{kimg:010.3f}.safetensors"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of ``tensors`` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU with storage of its own (safetensors refuses views into a shared flat buffer)."""
    t = t.detach().cpu().contiguous()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and ``meta`` (JSON values; the digest and version added) as one safetensors file, whole."""
    tensors = {k: _own(v) for k, v in tensors.items()}
    meta = {**meta, "digest": tensor_digest(tensors), "version": __version__}
    text_meta = {k: v if isinstance(v, str) else json.dumps(to_jsonable(v)) for k, v in meta.items()}
    atomic_write_bytes(path, st_save(tensors, metadata=text_meta))


def read_tensors(path: Path, fmt: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file :func:`write_tensors` wrote with format ``fmt``; damaged or foreign
    files are refused in one line that calls it ``what``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise UsageError(f"{path}: damaged or not a safetensors file ({e.__class__.__name__}); "
                         f"expected a diffmem {what}") from e
    if meta.get("format") != fmt:
        raise bad(str(path), meta.get("format"), f"a diffmem {what} ({fmt!r})", shown=f"format {meta.get('format')!r}")
    if meta.get("digest") != tensor_digest(tensors):
        raise UsageError(f"{path}: damaged (its tensors do not match their SHA-256 digest); "
                         f"expected an intact {what}")
    return tensors, meta


# ----------------------------------------------------------------------------------------------
# Snapshots of the denoiser


def save_denoiser(path: str | os.PathLike, denoiser: torch.nn.Module, cfg: ModelConfig, **meta: Any) -> None:
    """Write ``denoiser``'s weights and ``cfg`` (JSON metadata) to ``path`` atomically."""
    write_tensors(Path(path), dict(denoiser.state_dict()),
                  {"format": SNAPSHOT_FORMAT, "config": cfg, "network_layout": NETWORK_LAYOUT, **meta})


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[float, Path]]:
    """(kimg, path) of every snapshot of a run, sorted by kimg."""
    d = Path(run_dir) / SNAPSHOT_DIR
    if not d.is_dir():
        return []
    out = [(float(m.group(1)), p) for p in d.iterdir() if (m := _SNAPSHOT_RE.match(p.name))]
    return sorted(out)


def _resolve(run: Path, snapshot_kimg: float | None) -> Path:
    if run.is_file():
        return run
    if not run.is_dir():
        raise UsageError(f"run: {str(run)!r} does not exist; expected a run directory or a .safetensors file")
    if snapshot_kimg is None:
        if (run / FINAL_FILE).is_file():
            return run / FINAL_FILE
        snaps = list_snapshots(run)
        raise UsageError(f"run: {str(run)!r} has no {FINAL_FILE} (the run is not finished); "
                         f"choose one of its {len(snaps)} snapshots with snapshot_kimg")
    snaps = list_snapshots(run)
    if not snaps:
        raise UsageError(f"snapshot_kimg: {str(run)!r} has no snapshots in {SNAPSHOT_DIR}/; expected a run directory")
    return min(snaps, key=lambda kp: (abs(kp[0] - snapshot_kimg), kp[0]))[1]


def load_denoiser(
    run: str | os.PathLike,
    snapshot_kimg: float | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, ModelConfig]:
    """Rebuild a denoiser (eval mode) from a snapshot file ``run``, or from a run dir (its final weights, or the
    snapshot nearest ``snapshot_kimg``)."""
    file = _resolve(Path(run), snapshot_kimg)
    tensors, meta = read_tensors(file, SNAPSHOT_FORMAT, "denoiser snapshot")
    layout = meta.get("network_layout", "1")
    if layout != str(NETWORK_LAYOUT):
        raise bad(str(file), layout, f"layout {NETWORK_LAYOUT} (the snapshot was written by an earlier diffmem whose "
                  "networks compute a different function from the same weights; train it again)",
                  shown=f"network layout {layout}")
    try:
        cfg = from_dict(ModelConfig, json.loads(meta["config"]), where=f"{file}: config")
    except (KeyError, ValueError) as e:
        raise UsageError(f"{file}: metadata holds no readable model config; expected a diffmem snapshot") from e
    denoiser = build_denoiser(cfg)
    try:
        denoiser.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{file}: weights do not fit its config ({str(e).splitlines()[0]})") from e
    log.info("loaded %s (%s)", file, cfg.precond)
    return denoiser.to(device).eval().requires_grad_(False), cfg


# ----------------------------------------------------------------------------------------------
# Resumable training state


def save_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    nimg: int,
    config_hash: str,
) -> None:
    """Write the full training state atomically (see the module docstring for the layout)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for i, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    write_tensors(Path(path), tensors, {"format": STATE_FORMAT, "step": step, "nimg": nimg, "config_hash": config_hash})


def load_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    config_hash: str,
) -> tuple[int, int]:
    """Load a state written by :func:`save_state` into the given objects; returns (step, nimg)."""
    tensors, meta = read_tensors(Path(path), STATE_FORMAT, "training state")
    if meta.get("config_hash") != config_hash:
        raise UsageError(f"{path}: belongs to a run of a different config; expected config hash {config_hash}")
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        head, _, rest = name.partition(".")
        if head in groups:
            groups[head][rest] = t
        elif head == "opt":
            i, _, key = rest.partition(".")
            opt_state.setdefault(int(i), {})[key] = t
        else:
            raise UsageError(f"{path}: unexpected tensor {name!r}; expected a diffmem training state")
    try:
        model.load_state_dict(groups["model"], strict=True)
        ema.load_state_dict(groups["ema"], strict=True)
        optimizer.load_state_dict({"state": opt_state, "param_groups": optimizer.state_dict()["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: does not fit this model ({str(e).splitlines()[0]}); "
                         "expected the state of this run") from e
    return int(json.loads(meta["step"])), int(json.loads(meta["nimg"]))
