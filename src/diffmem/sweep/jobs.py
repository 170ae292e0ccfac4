"""One job of a sweep: build the subset → train with snapshots → sample every snapshot → measure.

A job is content-addressed by its resolved config: its directory under ``<sweep>/jobs/`` is named
``<kind>-s<size>-r<repeat>-<hash>`` and holds ``manifest.json`` (stage ``sweep-job``),
``result.json`` (one row per snapshot, and one for the closed-form optimum when asked) and the
stage artefacts (``dataset/``, ``run/``, ``snapshots/<kimg>/``, ``optimal/``). A job whose manifest
says complete is read back, never redone; an interrupted job resumes stage by stage (the dataset and
every measured snapshot are reused, training resumes from its last state). A job whose subset another
job of the sweep already measured the optimum of copies that measurement instead of sampling it again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmem.artefacts import (
    atomic_dir,
    atomic_write_json,
    config_hash,
    is_complete,
    read_manifest,
    write_manifest,
)
from diffmem.errors import RunError

log = logging.getLogger(__name__)

JOB_STAGE = "sweep-job"
SNAPSHOT_STAGE = "sweep-measurement"
ROW_KEYS = ("kind", "size", "repeat", "snapshot_kimg", "ratio", "ci_low", "ci_high", "n_memorized", "n_samples",
            "n_train", "threshold", "job")


@dataclass(frozen=True)
class JobSpec:
    """What one job computes: ``kind`` (train | synthetic), the size, the repeat and its resolved config."""

    kind: str
    size: int
    repeat: int
    config: dict[str, Any]

    @property
    def key(self) -> str:
        return config_hash({"kind": self.kind, "config": self.config})

    @property
    def dirname(self) -> str:
        return f"{self.kind}-s{self.size}-r{self.repeat}-{self.key}"


def job_dir(root: Path, spec: JobSpec) -> Path:
    return Path(root) / spec.dirname


def read_result(directory: Path, spec: JobSpec) -> list[dict[str, Any]] | None:
    """The rows of a complete job of exactly this config, or None."""
    if not is_complete(directory, JOB_STAGE, {"kind": spec.kind, "config": spec.config}):
        return None
    m = read_manifest(directory)
    rows = m.get("rows") if m else None
    return rows if isinstance(rows, list) else None


def run_job(spec: JobSpec, directory: str | Path) -> list[dict[str, Any]]:
    """Run (or resume, or read back) one job and return its rows."""
    directory = Path(directory)
    done = read_result(directory, spec)
    if done is not None:
        return done
    directory.mkdir(parents=True, exist_ok=True)
    manifest_cfg = {"kind": spec.kind, "config": spec.config}
    write_manifest(directory, JOB_STAGE, manifest_cfg, status="running", size=spec.size, repeat=spec.repeat)
    t0 = time.perf_counter()
    if spec.kind == "train":
        rows = _train_job(spec, directory)
    elif spec.kind == "synthetic":
        from diffmem.sweep.synthetic import synthetic_rows

        rows = synthetic_rows(spec)
    else:
        raise RunError(f"job {spec.dirname}: unknown kind {spec.kind!r}; expected train or synthetic")
    for r in rows:
        r["job"] = spec.dirname
    atomic_write_json(directory / "result.json", {"rows": rows})
    write_manifest(directory, JOB_STAGE, manifest_cfg, size=spec.size, repeat=spec.repeat, rows=rows,
                   job_s=round(time.perf_counter() - t0, 3))
    return rows


def _row(kind: str, spec: JobSpec, snapshot_kimg: float | None, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind, "size": spec.size, "repeat": spec.repeat, "snapshot_kimg": snapshot_kimg,
        "ratio": float(summary["memorization_ratio"]), "ci_low": float(summary["ci_low"]),
        "ci_high": float(summary["ci_high"]), "n_memorized": int(summary["n_memorized"]),
        "n_samples": int(summary["n_samples"]), "n_train": int(summary["n_train"]),
        "threshold": float(summary["threshold"]),
    }


def _measure_into(final: Path, samples, train_set, measure_cfg, what: dict[str, Any], index=None) -> dict[str, Any]:
    """Measure ``samples`` against ``train_set`` (or its prepared ``index``): ``final/measurement/`` (summary,
    table, figures), ``final/samples.npz``, and last the manifest that marks ``final`` complete."""
    from diffmem.io import save_image_set
    from diffmem.measure import measure, write_measurement

    m = measure(samples, index if index is not None else train_set, measure_cfg)
    final.mkdir(parents=True, exist_ok=True)
    write_measurement(m, final / "measurement", samples=samples, train=train_set, cfg=measure_cfg,
                      inputs={k: what[k] for k in ("snapshot_kimg", "optimal") if k in what}, overwrite=True)
    save_image_set(final / "samples.npz", samples)
    summary = {k: v for k, v in m.summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    write_manifest(final, SNAPSHOT_STAGE, what, summary=summary)
    return summary


def _measured(final: Path, what: dict[str, Any]) -> dict[str, Any] | None:
    if not is_complete(final, SNAPSHOT_STAGE, what):
        return None
    m = read_manifest(final)
    return m.get("summary") if m else None


def _copy_shared_optimum(directory: Path, what: dict[str, Any]) -> bool:
    """Copy the optimum's finished measurement from a sibling job of the same subset (dataset content hashes,
    sampler, measurement, n and seed all equal): studies over model or training factors share it."""
    mine = (read_manifest(directory / "dataset") or {}).get("hashes")
    if not mine:
        return False
    for other in sorted(directory.parent.iterdir()):
        if other == directory or not is_complete(other / "optimal", SNAPSHOT_STAGE, what):
            continue
        if (read_manifest(other / "dataset") or {}).get("hashes") != mine:
            continue
        with atomic_dir(directory / "optimal", overwrite=True) as tmp:
            shutil.copytree(other / "optimal", tmp, dirs_exist_ok=True)
        log.info("job %s: the closed-form optimum of this subset copied from %s", directory.name, other.name)
        return True
    return False


def _train_job(spec: JobSpec, directory: Path) -> list[dict[str, Any]]:
    """Dataset → training with snapshots → samples and measurement per snapshot (+ the optimum).

    The sampling of every snapshot (and of the optimum) still to be measured runs after the training,
    several at once on a CPU with threads to spare (:func:`diffmem.runtime.run_concurrently`; samples do
    not depend on it); the training side of the nearest-neighbour search is prepared once for all of them.
    """
    import torch

    from diffmem.config import DataConfig, MeasureConfig, ModelConfig, SampleConfig, TrainConfig, from_dict
    from diffmem.data import build_dataset, load_dataset
    from diffmem.devices import resolve_device
    from diffmem.measure import prepare_train
    from diffmem.runtime import run_concurrently
    from diffmem.sample import OptimalDenoiser, generate
    from diffmem.sample.generate import present_classes
    from diffmem.train import train
    from diffmem.train.checkpoints import list_snapshots, load_denoiser

    c = spec.config
    data_cfg = from_dict(DataConfig, c["data"], "job.data")
    model_cfg = from_dict(ModelConfig, c["model"], "job.model")
    train_cfg = from_dict(TrainConfig, c["train"], "job.train")
    sample_cfg = from_dict(SampleConfig, c["sample"], "job.sample")
    measure_cfg = from_dict(MeasureConfig, c["measure"], "job.measure")
    n, seed = int(c["n_samples"]), int(c["sample_seed"])
    device = resolve_device(sample_cfg.device)

    data_dir = build_dataset(data_cfg, directory / "dataset")
    train_set, label_classes = load_dataset(data_dir)
    classes = present_classes(train_set.labels) if label_classes else None
    # (row kind, snapshot kimg, directory, identity, denoiser factory) of every measurement of the job
    plan: list[tuple[str, float | None, Path, dict[str, Any], Any]] = []
    if c.get("optimal"):
        what = {"optimal": True, "data": c["data"], "sample": c["sample"], "measure": c["measure"], "n": n,
                "seed": seed}
        plan.append(("optimal", None, directory / "optimal", what, lambda: OptimalDenoiser(
            train_set.images, labels=train_set.labels if label_classes else None, label_dim=label_classes,
            device=device)))

    run_dir = train(data_dir, directory / "run", model_cfg, train_cfg, progress=False)
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"job {spec.dirname}: training wrote no snapshots in {run_dir}")
    for kimg, path in snapshots:
        what = {"snapshot_kimg": kimg, "run": c["model"], "train": c["train"], "data": c["data"],
                "sample": c["sample"], "measure": c["measure"], "n": n, "seed": seed}
        plan.append(("train", float(kimg), directory / "snapshots" / f"{kimg:010.3f}", what,
                     lambda path=path: load_denoiser(path, device=str(device))[0]))

    if c.get("optimal") and _measured(directory / "optimal", plan[0][3]) is None:
        _copy_shared_optimum(directory, plan[0][3])
    todo = [p for p in plan if _measured(p[2], p[3]) is None]

    def sampler(kimg: float | None, make_denoiser) -> Any:
        def task():
            log.info("job %s: sampling %s (%d samples)", spec.dirname,
                     "the closed-form optimum" if kimg is None else f"snapshot {kimg:.3f} kimg", n)
            return generate(make_denoiser(), n, seed, sample_cfg, classes=classes)
        return task

    if todo:
        index = prepare_train(train_set)  # once for every measurement of the job
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        tasks = [sampler(kimg, make) for _, kimg, _, _, make in todo]
        for (_, _, final, what, _), samples in zip(todo, run_concurrently(tasks, threads)):
            _measure_into(final, samples, train_set, measure_cfg, what, index)
    return [_row(kind, spec, kimg, _measured(final, what)) for kind, kimg, final, what, _ in plan]
