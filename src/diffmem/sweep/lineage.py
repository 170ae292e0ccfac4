"""Jobs of one lineage: equal but for the run's length. A longer job starts from the longest shorter one.

The frontier search trains a size first to a short budget and later, when a larger budget needs it,
to a longer one. The longer job is content-addressed by its own config (length included), so it is
never taken for the shorter one; when the same jobs directory holds a complete job of the same
config with a shorter run, the longer job starts from it:

- the run is extended (:func:`diffmem.train.extend.extend_run`): its shorter run's snapshots are kept
  and training resumes from that run's last state, which gives the same weights as training straight;
- the snapshots the two runs share are not sampled and measured again: their measurement directories
  are copied and keyed to the new job's config (the same weights measured the same way);
- the closed-form optimum's measurement (which does not depend on the run) is copied.

Without such a job the run trains from the start, with the same results.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_dir, config_hash, is_complete, read_manifest, write_manifest
from diffmem.config import ModelConfig, TrainConfig, from_dict
from diffmem.sweep.jobs import JOB_STAGE, SNAPSHOT_STAGE, JobSpec, optimal_what, snapshot_what

log = logging.getLogger(__name__)


def _strip(config: dict[str, Any]) -> dict[str, Any]:
    """A train job's config without the run's length."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "kimg"}}


def lineage_key(spec: JobSpec) -> str:
    """What a job and its extensions share: the hash of its config without the run's length."""
    return config_hash({"kind": spec.kind, "config": _strip(spec.config)})


def find_shorter(spec: JobSpec, root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The complete job in ``root`` of the same lineage with the longest run shorter than ``spec``'s
    (its directory and config), or None."""
    from diffmem.train.checkpoints import STATE_FILE  # diffmem.train imports torch: only when jobs run

    kimg = spec.config["train"].get("kimg")
    if kimg is None or not root.is_dir():
        return None
    key, best = lineage_key(spec), None
    for d in root.glob(f"{spec.kind}-s{spec.size}-r{spec.repeat}-*"):
        m = read_manifest(d)
        if not m or m.get("stage") != JOB_STAGE or m.get("status") != "complete":
            continue
        if not is_complete(d / "run", "run") or not (d / "run" / STATE_FILE).is_file():
            continue  # its run was removed: nothing to start from
        cfg = (m.get("config") or {}).get("config") or {}
        other = (cfg.get("train") or {}).get("kimg")
        if other is None or not other < kimg:
            continue
        if lineage_key(JobSpec(spec.kind, spec.size, spec.repeat, cfg)) == key and (best is None or other > best[2]):
            best = (d, cfg, other)
    return None if best is None else best[:2]


def _copy_measurement(src: Path, dst: Path, what: dict[str, Any]) -> None:
    """Copy the complete measurement directory ``src`` to ``dst``, keyed to ``what``, whole or not at all."""
    m = read_manifest(src) or {}
    with atomic_dir(dst, overwrite=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        write_manifest(tmp, SNAPSHOT_STAGE, what, summary=m.get("summary"))


def start_from_shorter(spec: JobSpec, directory: Path, data_dir: Path) -> bool:
    """Start the job's run (and its measurements) from the longest shorter job of its lineage, if any;
    True when it did. Does nothing once the job's run has a training state of its own."""
    from diffmem.train.checkpoints import STATE_FILE, list_snapshots  # torch: only when jobs run
    from diffmem.train.extend import extend_run

    run = directory / "run"
    if spec.kind != "train" or (run / STATE_FILE).exists() or is_complete(run, "run"):
        return False
    found = find_shorter(spec, directory.parent)
    if found is None:
        return False
    src, cfg = found
    c = spec.config
    extend_run(src / "run", run, data_dir, from_dict(ModelConfig, c["model"], "job.model"),
               from_dict(TrainConfig, c["train"], "job.train"))
    for kimg, _ in list_snapshots(run):
        name = f"{kimg:010.3f}"
        if is_complete(src / "snapshots" / name, SNAPSHOT_STAGE, snapshot_what(cfg, kimg)):
            _copy_measurement(src / "snapshots" / name, directory / "snapshots" / name, snapshot_what(c, kimg))
    if c.get("optimal") and cfg.get("optimal") and is_complete(src / "optimal", SNAPSHOT_STAGE, optimal_what(cfg)):
        _copy_measurement(src / "optimal", directory / "optimal", optimal_what(c))
    log.info("job %s starts from %s", spec.dirname, src.name)
    return True
