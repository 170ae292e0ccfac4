"""Extending a finished run to a longer duration without training its steps again.

Every draw of training derives from (seed, step) — the data order, σ and noise, dropout — and no
schedule depends on the total duration: the lr warm-up and the EMA depend on the images seen so far
only. The first s steps of a run are therefore the same whatever its ``kimg``, and a run of K₁ kimg is
the prefix of the run of K₂ > K₁ with an otherwise equal config. :func:`extend_run` starts the longer
run in its own directory from the shorter one: it copies the snapshots the longer run would also
write, re-binds the last training state to the longer run's identity, and leaves the rest to
:func:`diffmem.train.train`, which resumes there. The result equals the longer run trained straight,
bit for bit on the CPU with a fixed thread count (tested); on a GPU as closely as a resumed run
matches an uninterrupted one. Both runs keep their own directory, manifest and config hash, so a run
is never taken for a shorter or longer one.

Only the duration may differ, and only in ``kimg`` (a duration in epochs is a different number of
images per size). A schedule that depended on the total duration (an lr decay to the end, say) would
break the prefix property; the test that extends a run and compares it with the straight run guards
against one being added.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

from diffmem import artefacts
from diffmem.config import ModelConfig, TrainConfig
from diffmem.errors import UsageError, bad
from diffmem.train.checkpoints import (
    SNAPSHOT_DIR,
    STATE_FILE,
    STATE_FORMAT,
    list_snapshots,
    read_tensors,
    write_tensors,
)
from diffmem.train.loop import STATS_FILE, locked_run_dir, prepare_run_dir, resolve_configs, run_identity
from diffmem.train.schedule import step_crosses

log = logging.getLogger(__name__)


def _without_duration(resolved: dict) -> dict:
    """A resolved run config without what may differ between a run and its extension."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in resolved.items()}
    for key in ("kimg", "device"):
        out["train"].pop(key, None)
    out["data"].pop("path", None)
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a whole file: a hard link where the file system allows it, else a copy moved into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.copy.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def extend_run(src: str | os.PathLike, dst: str | os.PathLike, data: str | os.PathLike, model_cfg: ModelConfig,
               train_cfg: TrainConfig) -> Path:
    """Start the run ``train_cfg`` (``kimg`` longer than the finished run ``src``'s) in ``dst`` from ``src``.

    ``dst`` must be new, or a run directory of exactly this config that holds no training state yet
    (an extension interrupted before its state was written); a ``dst`` that already holds a state or
    the finished run is left alone. Then call :func:`diffmem.train.train` with the same arguments.
    """
    src, dst = Path(src), Path(dst)
    m = artefacts.read_manifest(src)
    if m is None or m.get("stage") != "run" or m.get("status") != "complete":
        raise UsageError(f"src: {str(src)!r} is not a finished run directory; expected a complete run to extend")
    old = m.get("config") or {}
    old_kimg = (old.get("train") or {}).get("kimg")
    if train_cfg.kimg is None or train_cfg.epochs is not None or old_kimg is None:
        raise bad("train.kimg", train_cfg.kimg, f"a duration in kimg to extend {str(src)!r} (both runs' durations "
                  "in kimg)")
    if not train_cfg.kimg > old_kimg:
        raise bad("train.kimg", train_cfg.kimg, f"a longer duration than the {old_kimg:g} kimg of {str(src)!r}")
    _, _, resolved = resolve_configs(Path(data), model_cfg, train_cfg)
    new = artefacts.to_jsonable(resolved)
    if _without_duration(old) != _without_duration(new):
        diff = artefacts.first_difference(_without_duration(old), _without_duration(new))
        raise UsageError(f"src: {str(src)!r} is a run of a different config ({diff}); only train.kimg may differ")
    ident = run_identity(resolved)
    with locked_run_dir(dst):
        if (dst / STATE_FILE).exists() or prepare_run_dir(dst, resolved, ident):
            return dst  # already extended (or finished): train() resumes or returns
        tensors, meta = read_tensors(src / STATE_FILE, STATE_FORMAT, "training state")
        steps = max(1, math.ceil(old_kimg * 1000 / train_cfg.batch - 1e-9))
        if int(meta.get("step", -1)) != steps:
            raise UsageError(f"{src / STATE_FILE}: holds step {meta.get('step')}; expected the run's last step {steps}")
        # the snapshots of the shorter run that the longer one writes too (its last may be off the snapshot grid)
        nimg = steps * train_cfg.batch
        for kimg, path in list_snapshots(src):
            if kimg * 1000 < nimg - 0.5 or step_crosses(nimg, train_cfg.batch, train_cfg.snapshot_kimg):
                _link_or_copy(path, dst / SNAPSHOT_DIR / path.name)
        if (src / STATS_FILE).exists():
            artefacts.atomic_write_bytes(dst / STATS_FILE, (src / STATS_FILE).read_bytes())
        # the state last: once it is there, the extension is whole and train() resumes from it
        write_tensors(dst / STATE_FILE, tensors, {k: v for k, v in meta.items() if k not in ("digest", "version")}
                      | {"config_hash": ident})
    log.info("extending %s (%g kimg) into %s (%g kimg) from step %d", src, old_kimg, dst, train_cfg.kimg, steps)
    return dst
