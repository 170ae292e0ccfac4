"""One job of a sweep: build the subset → train with snapshots → sample every snapshot → measure.

A job is content-addressed by its resolved config: its directory under ``<sweep>/jobs/`` is named
``<kind>-s<size>-r<repeat>-<hash>`` and holds ``manifest.json`` (stage ``sweep-job``),
``result.json`` (one row per snapshot, and one for the closed-form optimum when asked) and the
stage artefacts (``dataset/``, ``run/``, ``snapshots/<kimg>/``, ``optimal/``, and ``heldout/`` when the
config asks for held-out images).

Held-out baseline (``heldout`` > 0 in the job config): the images of the source that follow the subset in
its priority order (same classes, resolution and mixing) are measured once per job against the subset
(the 1/3 rule's false-positive rate: ``heldout/measurement/``) and the k-means cells of the data-copying
test are fitted once (``heldout/reference.npz``). Every snapshot's (and the optimum's) C_T then costs one
assignment of its samples to the cells: C_T is computed for every snapshot, so it can be read along
training and at the best snapshot alike. A job whose manifest
says complete is read back, never redone; an interrupted job resumes stage by stage (the dataset and
every measured snapshot are reused, training resumes from its last state). A job whose run only
differs by its length from a complete job's in the same directory starts from that job's run
(:mod:`diffmem.sweep.lineage`).
A job whose subset another job of the sweep already measured the optimum of copies that measurement
instead of sampling it again.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmem.artefacts import (
    atomic_dir,
    atomic_save_npz,
    atomic_write_json,
    config_hash,
    is_complete,
    read_manifest,
    write_manifest,
)
from diffmem.config import DataConfig, MeasureConfig, ModelConfig, SampleConfig, TrainConfig, from_dict
from diffmem.data import build_dataset, load_dataset
from diffmem.data.build import heldout_set
from diffmem.errors import RunError
from diffmem.io import save_image_set
from diffmem.sweep.synthetic import synthetic_rows

log = logging.getLogger(__name__)

JOB_STAGE = "sweep-job"
SNAPSHOT_STAGE = "sweep-measurement"
HELDOUT_STAGE = "sweep-heldout"
ROW_KEYS = ("kind", "size", "repeat", "snapshot_kimg", "ratio", "ci_low", "ci_high", "n_memorized", "n_samples",
            "n_train", "threshold", "heldout_ratio", "heldout_memorized", "n_heldout", "c_t", "job")


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
        rows = synthetic_rows(spec)
    else:
        raise RunError(f"job {spec.dirname}: unknown kind {spec.kind!r}; expected train or synthetic")
    for r in rows:
        r["job"] = spec.dirname
    atomic_write_json(directory / "result.json", {"rows": rows})
    write_manifest(directory, JOB_STAGE, manifest_cfg, size=spec.size, repeat=spec.repeat, rows=rows,
                   job_s=round(time.perf_counter() - t0, 3))
    return rows


def _row(kind: str, spec: JobSpec, snapshot_kimg: float | None, summary: dict[str, Any],
         heldout: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind, "size": spec.size, "repeat": spec.repeat, "snapshot_kimg": snapshot_kimg,
        "ratio": float(summary["memorization_ratio"]), "ci_low": float(summary["ci_low"]),
        "ci_high": float(summary["ci_high"]), "n_memorized": int(summary["n_memorized"]),
        "n_samples": int(summary["n_samples"]), "n_train": int(summary["n_train"]),
        "threshold": float(summary["threshold"]),
        "heldout_ratio": None if heldout is None else float(heldout["memorization_ratio"]),
        "heldout_memorized": None if heldout is None else int(heldout["n_memorized"]),
        "n_heldout": None if heldout is None else int(heldout["n_heldout"]),
        "c_t": summary.get("c_t"),
    }


def _measure_into(final: Path, samples, train_set, measure_cfg, what: dict[str, Any], heldout=None,
                  index=None) -> dict[str, Any]:
    """Measure ``samples`` against ``train_set`` (or its prepared ``index``), and their C_T when a held-out
    reference is given: ``final/measurement/`` (summary and tables; no figures — a sweep measures many
    snapshots and its report draws the grids of the few it shows from ``samples.npz``), ``final/samples.npz``,
    and last the manifest that marks ``final`` complete."""
    from diffmem.measure import TableNames, full_summary, measure, write_measurement  # torch: only in a job

    m = measure(samples, index if index is not None else train_set, measure_cfg)
    copying = heldout.copying(samples, m.d1) if heldout is not None else None
    names = TableNames.of(samples, train_set, len(samples), len(train_set))
    final.mkdir(parents=True, exist_ok=True)
    write_measurement(m, final / "measurement", samples=samples, train=train_set, cfg=measure_cfg, names=names,
                      summary=full_summary(m, names, heldout, copying),
                      inputs={k: what[k] for k in ("snapshot_kimg", "optimal") if k in what}, overwrite=True,
                      figures=False)
    save_image_set(final / "samples.npz", samples)
    summary = {k: v for k, v in m.summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    if copying is not None:
        summary["c_t"] = copying["c_t"]
    write_manifest(final, SNAPSHOT_STAGE, what, summary=summary)
    return summary


def _heldout_reference(directory: Path, spec: JobSpec, data_cfg, train_set, measure_cfg, n_heldout: int,
                       n_samples: int):
    """The job's held-out reference (None when the subset leaves no image out): built once, then read back."""
    from diffmem.measure import (  # torch: only in a job
        HeldoutReference,
        TableNames,
        prepare_heldout,
        prepare_train,
        write_measurement,
    )
    from diffmem.measure.copying import Cells

    what = {"data": spec.config["data"], "measure": spec.config["measure"], "heldout": n_heldout, "n": n_samples}
    if is_complete(directory, HELDOUT_STAGE, what):
        m = read_manifest(directory) or {}
        if m.get("summary") is None:
            return None
        with np.load(directory / "reference.npz", allow_pickle=False) as z:
            cells = Cells(centroids=z["centroids"], seed=int(z["seed"]))
            return HeldoutReference(summary=m["summary"], d1=z["d1"], cells=cells, heldout_cells=z["heldout_cells"],
                                    train_cells=z["train_cells"], tau=measure_cfg.copying_tau)
    held = heldout_set(data_cfg, n_heldout)
    directory.mkdir(parents=True, exist_ok=True)
    if len(held) == 0:
        log.info("job %s: the subset holds every image of the source; no held-out baseline", spec.dirname)
        write_manifest(directory, HELDOUT_STAGE, what, summary=None)
        return None
    log.info("job %s: held-out baseline (%d images)", spec.dirname, len(held))
    ref = prepare_heldout(prepare_train(train_set), held, measure_cfg, n_samples)
    write_measurement(ref.measurement, directory / "measurement", samples=held, train=train_set, cfg=measure_cfg,
                      names=TableNames.of(held, train_set, len(held), len(train_set)), overwrite=True,
                      inputs={"heldout": f"{len(held)} images after the subset in the source's priority order"},
                      figures=False)
    atomic_save_npz(directory / "reference.npz", centroids=ref.cells.centroids, seed=np.int64(ref.cells.seed),
                    d1=ref.d1, heldout_cells=ref.heldout_cells, train_cells=ref.train_cells)
    write_manifest(directory, HELDOUT_STAGE, what, summary=ref.summary)
    return ref


def _held_what(c: dict[str, Any]) -> dict[str, Any]:
    """The held-out part of a measurement's key: measurements with C_T differ from those without."""
    n_heldout = int(c.get("heldout", 0))
    return {"heldout": n_heldout} if n_heldout > 0 else {}


def snapshot_what(c: dict[str, Any], kimg: float) -> dict[str, Any]:
    """What the measurement of the snapshot at ``kimg`` of the job of config ``c`` is keyed by."""
    return {"snapshot_kimg": kimg, "run": c["model"], "train": c["train"], "data": c["data"], "sample": c["sample"],
            "measure": c["measure"], "n": int(c["n_samples"]), "seed": int(c["sample_seed"]), **_held_what(c)}


def optimal_what(c: dict[str, Any]) -> dict[str, Any]:
    """What the measurement of the closed-form optimum of the job of config ``c`` is keyed by."""
    return {"optimal": True, "data": c["data"], "sample": c["sample"], "measure": c["measure"],
            "n": int(c["n_samples"]), "seed": int(c["sample_seed"]), **_held_what(c)}


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
    import torch  # torch: only in a job

    from diffmem.devices import resolve_device
    from diffmem.measure import prepare_train
    from diffmem.runtime import run_concurrently
    from diffmem.sample import generate
    from diffmem.sample.labels import present_classes
    from diffmem.sample.optimal import dataset_optimum
    from diffmem.sweep.lineage import start_from_shorter  # lineage imports this module
    from diffmem.train import train
    from diffmem.train.checkpoints import list_snapshots, load_denoiser
    from diffmem.train.loop import resolve_configs

    c = spec.config
    data_cfg = from_dict(DataConfig, c["data"], "job.data")
    model_cfg = from_dict(ModelConfig, c["model"], "job.model")
    train_cfg = from_dict(TrainConfig, c["train"], "job.train")
    sample_cfg = from_dict(SampleConfig, c["sample"], "job.sample")
    measure_cfg = from_dict(MeasureConfig, c["measure"], "job.measure")
    n, seed = int(c["n_samples"]), int(c["sample_seed"])
    device = resolve_device(sample_cfg.device, "sample.device")

    data_dir = build_dataset(data_cfg, directory / "dataset")
    resolve_configs(data_dir, model_cfg, train_cfg)  # what the config alone could not tell, checked against the data
    train_set, label_classes = load_dataset(data_dir)
    classes = present_classes(train_set.labels) if label_classes else None
    n_heldout = int(c.get("heldout", 0))
    heldout = (_heldout_reference(directory / "heldout", spec, data_cfg, train_set, measure_cfg, n_heldout, n)
               if n_heldout > 0 else None)
    held_summary = heldout.summary if heldout is not None else None

    start_from_shorter(spec, directory, data_dir)

    # (row kind, snapshot kimg, directory, identity, sampling task) of every measurement of the job
    plan: list[tuple[str, float | None, Path, dict[str, Any], Any]] = []
    if c.get("optimal"):
        def optimum() -> Any:
            log.info("job %s: sampling the closed-form optimum (%d samples)", spec.dirname, n)
            denoiser, opt_classes = dataset_optimum(train_set, label_classes, device=device)
            return generate(denoiser, n, seed, sample_cfg, classes=opt_classes)

        plan.append(("optimal", None, directory / "optimal", optimal_what(c), optimum))

    run_dir = train(data_dir, directory / "run", model_cfg, train_cfg, progress=False)
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"job {spec.dirname}: training wrote no snapshots in {run_dir}")
    for kimg, path in snapshots:
        def snapshot(kimg: float = kimg, path: Path = path) -> Any:
            log.info("job %s: sampling snapshot %.3f kimg (%d samples)", spec.dirname, kimg, n)
            return generate(load_denoiser(path, device=str(device))[0], n, seed, sample_cfg, classes=classes)

        plan.append(("train", float(kimg), directory / "snapshots" / f"{kimg:010.3f}", snapshot_what(c, kimg),
                     snapshot))

    if c.get("optimal") and _measured(directory / "optimal", plan[0][3]) is None:
        _copy_shared_optimum(directory, plan[0][3])
    todo = [p for p in plan if _measured(p[2], p[3]) is None]
    if todo:
        index = prepare_train(train_set)  # once for every measurement of the job
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        for (_, _, final, what, _), samples in zip(todo, run_concurrently([p[4] for p in todo], threads)):
            _measure_into(final, samples, train_set, measure_cfg, what, heldout, index)
    return [_row(kind, spec, kimg, _measured(final, what), held_summary) for kind, kimg, final, what, _ in plan]
