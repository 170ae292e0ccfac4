"""``diffmem study``: an EMM search (mode ``emm``) or a ratio table at fixed sizes (mode ``ratio``) for
every combination of the values of one or more factors.

Directory of a study::

    config.json   the resolved StudyConfig          manifest.json   stage "study", status
    study.json    one entry per factor value        results.jsonl / results.csv   all rows, factor columns first
    values/<v>/   one EMM directory per value        jobs/           the jobs, shared by all values

A factor is any dotted field of the EMM config (``model.channels``, ``data.labels``,
``train.ema_decay``, …), or a free name whose values are objects of dotted fields set together
(``"conditioning": [{"data.labels": "none"}, {"data.labels": "random", "data.label_classes": 10}]``;
an optional ``"label"`` key names the value in tables and figures).
``base`` may name an EMM preset (``{"preset": "digits", "train": {"kimg": 256}}``): its fields with the
given ones merged over them. A factor value changes its base as a preset override does
(:func:`diffmem.config.replace_fields`: ``train.epochs`` clears the base's ``train.kimg``). ``train.batch``
scales the learning rate with it (lr × batch / base batch) unless ``train.lr`` is a factor too, as the
reference study did: each value's ``config.json``, the dry run and ``study.json`` (``derived``) show the lr
used. Every value's config is validated before anything is written (:func:`validate_study`).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_write_json, check_resumable, config_hash, dir_lock, write_manifest
from diffmem.config import EMMConfig, StudyConfig, replace_fields, replace_path, to_dict
from diffmem.errors import UsageError, bad
from diffmem.sweep.backends import Backend, LocalBackend
from diffmem.sweep.emm import EMMResult, run_emm, validate_emm
from diffmem.sweep.synthetic import SyntheticCurve
from diffmem.sweep.table import write_table

STUDY_STAGE = "study"


@dataclass
class StudyResult:
    config: StudyConfig
    values: list[tuple[dict[str, Any], EMMResult]]
    wall_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.config.name, "mode": self.config.mode, "factors": list(self.config.factors),
            "values": [{"factors": f, "dir": f"values/{value_slug(f)}", **r.summary(),
                        **({"derived": d} if (d := derived_fields(self.config, f)) else {})} for f, r in self.values],
            "n_trainings": sum(r.n_trainings for _, r in self.values),
            "n_trained_now": sum(r.n_trained_now for _, r in self.values),
            "wall_s": round(self.wall_s, 3),
        }


def value_slug(factors: dict[str, Any]) -> str:
    """A directory name for one combination of factor values, e.g. ``model.channels=16``."""
    text = ",".join(f"{k}={_fmt(v)}" for k, v in factors.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def value_label(factors: dict[str, Any]) -> str:
    """How one combination of factor values reads in tables and figures (a grouped value by itself)."""
    return ", ".join(_fmt(v) if isinstance(v, dict) else f"{k}={_fmt(v)}" for k, v in factors.items()) or "base"


def _fmt(v: Any) -> str:
    if isinstance(v, dict):  # a grouped value: {"data.labels": "random", "data.label_classes": 10[, "label": …]}
        if "label" in v:
            return str(v["label"])
        return "+".join(f"{k.rsplit('.', 1)[-1]}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(x) for x in v) or "none"
    return str(v).lower() if isinstance(v, bool) or v is None else str(v)


def value_fields(factors: dict[str, Any]) -> dict[str, Any]:
    """The dotted fields one combination of factor values sets: a factor's value is a field value, or an object
    of dotted fields set together (a grouped factor; its ``label`` names it)."""
    out: dict[str, Any] = {}
    for name, value in factors.items():
        fields = {k: v for k, v in value.items() if k != "label"} if isinstance(value, dict) else {name: value}
        if not fields:
            raise bad(f"factors.{name}", value,
                      'an object of at least one dotted field, e.g. {"data.labels": "unique"}')
        out.update(fields)
    return out


def derived_fields(cfg: StudyConfig, factors: dict[str, Any]) -> dict[str, Any]:
    """Fields a combination of factor values changes without naming them: ``train.lr`` scaled with
    ``train.batch`` (lr × batch / base batch, as the reference study varied the batch size) unless the
    combination sets ``train.lr`` too (nothing at the base's batch). The resolved config of each value holds the
    result; dry runs and ``study.json`` show it."""
    fields = value_fields(factors)
    if "train.batch" in fields and "train.lr" not in fields:
        batch = replace_path(cfg.base, "train.batch", fields["train.batch"]).train.batch
        if batch != cfg.base.train.batch:
            return {"train.lr": cfg.base.train.lr * batch / cfg.base.train.batch}
    return {}


def derived_text(cfg: StudyConfig, factors: dict[str, Any]) -> str:
    """The derived fields of a value in words (empty when there are none)."""
    lr = derived_fields(cfg, factors).get("train.lr")
    if lr is None:
        return ""
    batch = replace_path(cfg.base, "train.batch", value_fields(factors)["train.batch"]).train.batch
    return (f"train.lr {lr:g} (scaled with train.batch: base lr {cfg.base.train.lr:g} × batch {batch} / base batch "
            f"{cfg.base.train.batch})")


def expand(cfg: StudyConfig) -> list[tuple[dict[str, Any], EMMConfig]]:
    """Every combination of factor values and the EMM config it gives."""
    if cfg.mode not in ("emm", "ratio"):
        raise bad("mode", cfg.mode, "emm or ratio")
    if cfg.mode == "ratio" and not cfg.base.sizes:
        raise UsageError("base.sizes: mode 'ratio' needs the fixed sizes to measure (e.g. [128, 256, 512])")
    if cfg.mode == "emm" and cfg.base.sizes:
        raise UsageError("base.sizes: mode 'emm' searches the sizes; remove 'sizes' or use mode 'ratio'")
    for name, values in cfg.factors.items():
        if not isinstance(values, tuple) or not values:
            raise bad(f"factors.{name}", values, "a non-empty list of values")
    names = list(cfg.factors)
    out = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(cfg.factors[n] for n in names)):
        factors = dict(zip(names, combo))
        emm_cfg = replace_fields(cfg.base, {**value_fields(factors), **derived_fields(cfg, factors)})
        slug = value_slug(factors)
        if slug in seen:
            raise UsageError(f"factors: {value_label(seen[slug])!r} and {value_label(factors)!r} would share the "
                             f"directory values/{slug}; give each value a distinct label")
        seen[slug] = factors
        out.append((factors, emm_cfg))
    return out


def validate_study(cfg: StudyConfig) -> list[tuple[dict[str, Any], EMMConfig]]:
    """Every factor value's EMM config (:func:`expand`), each validated before any work (:func:`validate_emm`); a
    refusal names the value, then the field by its config path. Returns the plan."""
    plan = expand(cfg)
    for factors, emm_cfg in plan:
        try:
            validate_emm(emm_cfg)
        except UsageError as e:
            raise UsageError(f"value {value_label(factors)}: {e}") from e
    return plan


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    backend: Backend | None = None,
    synthetic: dict[str, SyntheticCurve] | None = None,  # slug → known curve instead of training (tests)
    progress: bool = False,
) -> StudyResult:
    """Run (or resume) the study ``cfg`` in ``out``."""
    t0 = time.perf_counter()
    out = Path(out)
    plan = validate_study(cfg)
    ident = {"study": to_dict(cfg), "synthetic": {k: to_dict(v) for k, v in (synthetic or {}).items()} or None}
    check_resumable(out, config_hash(ident), "a study", keep=("jobs", "values", ".lock"))
    backend = backend or LocalBackend()
    with dir_lock(out):
        atomic_write_json(out / "config.json", to_dict(cfg))
        write_manifest(out, STUDY_STAGE, ident, status="running")
        results = []
        for factors, emm_cfg in plan:
            slug = value_slug(factors)
            curve = (synthetic or {}).get(slug)
            r = run_emm(emm_cfg, out / "values" / slug, backend=backend, jobs_root=out / "jobs", synthetic=curve,
                        progress=progress)
            results.append((factors, r))
        rows = [{**{k: _fmt(v) for k, v in f.items()}, **row} for f, r in results for row in r.rows]
        write_table(out, rows, extra_keys=list(cfg.factors))
        res = StudyResult(cfg, results, time.perf_counter() - t0)
        atomic_write_json(out / "study.json", res.summary())
        write_manifest(out, STUDY_STAGE, ident, summary={"n_values": len(results)})
    return res
