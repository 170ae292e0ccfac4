"""``diffmem report DIR``: a Markdown and an HTML page (``report.md``, ``report.html``, ``figures/``)
for an EMM or a study directory, written from what the directory holds (nothing is recomputed).

The page is built as a list of blocks (:mod:`diffmem.report.blocks`) rendered twice, once to Markdown and
once to HTML, so both always say the same. Intervals are given at the search's ``measure.confidence`` and
the line is drawn at its 1 − ε, as its ``config.json`` says.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_write_text, read_manifest
from diffmem.errors import UsageError
from diffmem.fmt import pct
from diffmem.fmt import size as _size
from diffmem.report import figures
from diffmem.report.blocks import Block, Code, Figure, Heading, Paragraph, Table, to_html, to_markdown
from diffmem.report.frontier import frontier_blocks
from diffmem.sweep.estimate import straddles
from diffmem.sweep.study import value_label
from diffmem.sweep.table import read_table


def _load(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _emm_text(s: dict[str, Any], threshold: float, confidence: float) -> str:
    lo, hi = s["bracket"]
    if s.get("emm") is not None:
        return (f"EMM ≈ **{_size(s['emm'])}** training images ({pct(confidence)} interval [{_size(s['ci'][0])}, "
                f"{_size(s['ci'][1])}]); bracket: |D| = {_size(lo)} memorizes ≥ {pct(threshold)}, "
                f"|D| = {_size(hi)} does not")
    if lo is None:
        return f"EMM < {_size(hi)}: the smallest size measured does not memorize ≥ {pct(threshold)}"
    return f"EMM ≥ {_size(lo)}: the largest size measured still memorizes ≥ {pct(threshold)}"


def _heldout_cells(p: dict[str, Any]) -> list[str]:
    """The held-out columns of a point: held-out ratio with its interval and held-out count, C_T."""
    if "heldout_ratio" not in p:
        return ["—", "—"]
    lo, hi = p["heldout_ci"]
    ct = "—" if p.get("c_t") is None else f"{p['c_t']:+.2f}"
    return [f"{p['heldout_ratio']:.3f} [{lo:.3f}, {hi:.3f}] of {p['n_heldout']:,}", ct]


def _points_table(s: dict[str, Any], threshold: float, confidence: float) -> Table:
    opt = s.get("optimal") or {}
    held = any("heldout_ratio" in p for p in s["points"])
    rows = []
    for p in s["points"]:
        o = opt.get(str(p["size"]))
        flag = "straddles" if straddles(p["ci"], threshold) else ""
        if p.get("lower_bound"):  # frontier mode: the run stopped once it memorized
            flag = "lower bound (run stopped once memorized)"
        rows.append([f"{p['size']:,}", f"{p['ratio']:.3f}", f"[{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]",
                     f"{p['best_snapshot_kimg'] or 0:g}", f"{p['n_samples']:,}", "—" if o is None else f"{o:.3f}",
                     *(_heldout_cells(p) if held else []), flag])
    heads = ["held-out ratio (rule's false positives)", "C_T (best snapshot)"] if held else []
    return Table(["|D|", "ratio", f"{pct(confidence)} interval", "best snapshot (kimg)", "samples", "optimum ratio",
                  *heads, f"interval vs {pct(threshold)}"], rows)


HELDOUT_NOTE = ("Held-out baseline: the images of the source that follow each subset in its priority order (same "
                "classes and resolution) were never trained on. Their own ratio is the false-positive rate of the "
                "d₁/d₂ rule on this data; C_T is the data-copying statistic of \"A Non-Parametric Test to Detect "
                "Data-Copying in Generative Models\" (AISTATS 2020) at the best snapshot: ≪ 0 copying, ≈ 0 samples "
                "as far from the training set as fresh images, ≫ 0 underfitting.")


def _grids(directory: Path, jobs_root: Path, rows: list[dict[str, Any]], points: list[dict[str, Any]],
           figdir: Path, prefix: str, sizes: set[int] | None = None) -> list[Block]:
    """sample | NN₁ | NN₂ grids of each size's best snapshot, copied from the measurement directories."""
    blocks: list[Block] = []
    for p in points:
        if sizes is not None and p["size"] not in sizes:
            continue
        cand = [r for r in rows if r.get("kind") == "train" and r["size"] == p["size"]
                and r.get("snapshot_kimg") == p["best_snapshot_kimg"]]
        for r in cand[:1]:
            dst = figdir / f"{prefix}grid-s{p['size']}.png"
            if _draw_grid(jobs_root / r["job"], r["snapshot_kimg"], dst):
                blocks.append(Figure(dst.relative_to(directory),
                                     f"|D| = {p['size']:,}, snapshot {r['snapshot_kimg']:g} kimg: sample | NN₁ | NN₂ "
                                     f"(ratio {r['ratio']:.3f} of {r['n_samples']:,} samples memorized)"))
    return blocks


def _draw_grid(job: Path, snapshot_kimg: float, dst: Path) -> bool:
    """The grid of a job's snapshot into ``dst``: the measurement's own ``grid.png`` when it has one, else drawn
    from its table, its samples and the job's dataset (sweeps measure without figures); False when the job's
    files are gone."""
    snap = job / "snapshots" / f"{snapshot_kimg:010.3f}"
    if (snap / "measurement" / "grid.png").is_file():
        shutil.copyfile(snap / "measurement" / "grid.png", dst)
        return True
    if not all(p.exists() for p in (snap / "measurement" / "table.npz", snap / "samples.npz", job / "dataset")):
        return False
    from diffmem.data import load_dataset  # the measurement stack: only when a grid is drawn
    from diffmem.io import load_npz
    from diffmem.measure.outputs import plot_grid_from

    train, _ = load_dataset(job / "dataset")
    plot_grid_from(snap / "measurement", load_npz(snap / "samples.npz"), train, dst)
    return True


def _jobs_root(directory: Path) -> Path:
    m = read_manifest(directory) or {}
    return (directory / m.get("jobs_root", "jobs")).resolve()


def _levels(cfg: dict[str, Any]) -> tuple[float, float]:
    """(1 − ε, the confidence of every interval) of a resolved EMM config (``config.json``)."""
    return 1.0 - cfg["epsilon"], cfg["measure"]["confidence"]


def emm_blocks(directory: Path, figdir: Path) -> list[Block]:
    s = _load(directory / "emm.json")
    cfg = _load(directory / "config.json")
    rows = read_table(directory)
    t, conf = _levels(cfg)
    f1 = figures.ratio_vs_size([{"label": "trained", "points": s["points"], "emm": s["emm"], "ci": s["ci"],
                                 "optimal": s.get("optimal")}], t, figdir / "ratio_vs_size.png")
    f2 = figures.ratio_vs_progress(rows, t, figdir / "ratio_vs_progress.png")
    blocks: list[Block] = [
        Heading(1, f"EMM of {cfg['data']['source']} — {directory.name}"),
        Paragraph(_emm_text(s, t, conf) + "."),
        Paragraph(f"Memorized: d(x, NN₁)/d(x, NN₂) < {cfg['measure']['threshold']:.4g}; ratio = fraction of "
                  f"{cfg['n_samples']:,} generated samples per measurement, best snapshot per run; ε = "
                  f"{cfg['epsilon']:g}; intervals at {pct(conf)} confidence. Trainings: {s['n_trainings']} "
                  f"({s.get('n_trained_now', 0)} in the last invocation); wall time of the last invocation "
                  f"{s['wall_s']:,.1f} s."),
        _points_table(s, t, conf),
        *([Paragraph(HELDOUT_NOTE)] if any("heldout_ratio" in p for p in s["points"]) else []),
        Figure(f1.relative_to(directory), f"Memorization ratio against |D| ({pct(conf)} intervals), the {pct(t)} "
                                          "line, the EMM (dotted) with its interval (shaded), the closed-form optimum "
                                          "(dashed)"),
        Figure(f2.relative_to(directory), f"Memorization ratio against training progress, one line per size, and the "
                                          f"{pct(t)} line"),
    ]
    blocks += _grids(directory, _jobs_root(directory), rows, s["points"], figdir, "")
    blocks += frontier_blocks(directory, s, figdir, confidence=conf)
    blocks += _reproduce(directory, cfg, "emm")
    return blocks


def _ratio_cell(v: dict[str, Any], size: int) -> str:
    p = next((p for p in v["points"] if p["size"] == size), None)
    return "—" if p is None else f"{p['ratio']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]"


def study_blocks(directory: Path, figdir: Path) -> list[Block]:
    s = _load(directory / "study.json")
    cfg = _load(directory / "config.json")
    curves, values = [], []
    blocks: list[Block] = [Heading(1, f"Study {s['name']} — factors {', '.join(s['factors']) or '(none)'}")]
    for v in s["values"]:
        label = value_label(v["factors"])
        curves.append({"label": label, "points": v["points"], "emm": v["emm"], "ci": v["ci"],
                       "optimal": v.get("optimal")})
        t_v, conf_v = _levels(_load(directory / v["dir"] / "config.json"))  # ε and confidence may be factors
        values.append({"label": label, **v, "threshold": t_v, "confidence": conf_v})
    levels = {(v["threshold"], v["confidence"]) for v in values}
    t, conf = levels.pop() if len(levels) == 1 else _levels(cfg["base"])
    each = "" if not levels else " (the base's; each value's own in its section)"
    sizes = sorted({p["size"] for v in values for p in v["points"]})
    if s["mode"] == "emm" or len(sizes) > 1:
        f1 = figures.ratio_vs_size(curves, t, figdir / "ratio_vs_size.png", title=s["name"])
        blocks.append(Figure(f1.relative_to(directory), f"Memorization ratio against |D| per factor value, the "
                                                        f"{pct(t)} line{each} and each value's EMM (dotted, interval "
                                                        "shaded)"))
    if s["mode"] == "ratio":
        f3 = figures.ratio_vs_factor(values, t, ", ".join(s["factors"]), figdir / "ratio_vs_factor.png",
                                     title=s["name"])
        blocks.append(Figure(f3.relative_to(directory), f"Memorization ratio against the factor's value at each fixed "
                                                        f"size ({pct(conf)} intervals) and the {pct(t)} line{each}"))
        blocks.append(Table(["factor value"] + [f"ratio at |D| = {n:,} ({pct(conf)} interval{each})" for n in sizes]
                            + ["best snapshot (kimg)", "samples"],
                            [[v["label"]] + [_ratio_cell(v, n) for n in sizes] +
                             [" / ".join(f"{p['best_snapshot_kimg'] or 0:g}" for p in v["points"]),
                              f"{max((p['n_samples'] for p in v['points']), default=0):,}"] for v in values]))
    else:
        f2 = figures.emm_vs_factor(values, ", ".join(s["factors"]), figdir / "emm_vs_factor.png", confidence=conf)
        blocks.append(Figure(f2.relative_to(directory), f"EMM against the factor's value with its {pct(conf)} "
                                                        f"interval{each}"))
        blocks.append(Table(["factor value", "EMM", f"{pct(conf)} interval{each}", "bracket", "trainings"],
                            [[v["label"], _size(v["emm"]), f"[{_size(v['ci'][0])}, {_size(v['ci'][1])}]",
                              f"[{_size(v['bracket'][0])}, {_size(v['bracket'][1])}]", str(v["n_trainings"])]
                             for v in values]))
    jobs_root = directory / "jobs"
    for i, v in enumerate(values):
        sub = directory / v["dir"]
        rows = read_table(sub)
        blocks.append(Heading(2, v["label"]))
        blocks.append(Paragraph(_emm_text(v, v["threshold"], v["confidence"]) + "."))
        blocks.append(_points_table(v, v["threshold"], v["confidence"]))
        f = figures.ratio_vs_progress(rows, v["threshold"], figdir / f"v{i}-ratio_vs_progress.png", title=v["label"])
        blocks.append(Figure(f.relative_to(directory), f"{v['label']}: ratio against training progress per size"))
        near = {x for x in v["bracket"] if x is not None}
        blocks += _grids(directory, jobs_root, rows, v["points"], figdir, f"v{i}-", sizes=near)
    blocks.append(Paragraph(f"Trainings: {s['n_trainings']}; wall time of the last invocation {s['wall_s']:,.1f} s."))
    blocks += _reproduce(directory, cfg, "study")
    return blocks


def _reproduce(directory: Path, cfg: dict[str, Any], command: str) -> list[Block]:
    m = read_manifest(directory) or {}
    d = shlex.quote(str(directory))
    return [
        Heading(2, "Reproduce"),
        Paragraph(f"diffmem {m.get('version', '?')}. The resolved config below is `{directory.name}/config.json`; "
                  "rerunning on the same directory reuses every finished run."),
        Code(f"diffmem {command} --config {d}/config.json --out {d}\ndiffmem report {d}"),
        Heading(2, "Resolved configuration"),
        Code(json.dumps(cfg, indent=2)),
    ]


def render_report(directory: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/`` into ``directory``; return the HTML path."""
    directory = Path(directory)
    m = read_manifest(directory)
    if m is None or m.get("stage") not in ("emm", "study"):
        raise UsageError(f"DIR: {str(directory)!r} is not an emm or study directory (no manifest of stage "
                         "'emm' or 'study'); expected the --out of 'diffmem emm' or 'diffmem study'")
    if m.get("status") != "complete":
        raise UsageError(f"DIR: {str(directory)!r} holds an unfinished {m['stage']} (status {m.get('status')!r}); "
                         f"rerun 'diffmem {m['stage']}' on it to finish, then report")
    figdir = directory / "figures"
    figdir.mkdir(exist_ok=True)
    blocks = emm_blocks(directory, figdir) if m["stage"] == "emm" else study_blocks(directory, figdir)
    atomic_write_text(directory / "report.md", to_markdown(blocks))
    title = blocks[0].text if isinstance(blocks[0], Heading) else directory.name
    atomic_write_text(directory / "report.html", to_html(blocks, title))
    used = {directory / b.path for b in blocks if isinstance(b, Figure)}
    for png in figdir.glob("*.png"):  # figures of an earlier rendering that this report no longer shows
        if png not in used:
            png.unlink()
    return directory / "report.html"
