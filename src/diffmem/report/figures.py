"""The report's figures (matplotlib through :mod:`diffmem.plotting`), in the style of the reference study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffmem.fmt import pct
from diffmem.plotting import pyplot, save_png


def save_report_figure(fig, path: Path) -> Path:
    """A report figure: 110 dpi, cropped to what is drawn."""
    return save_png(fig, path, dpi=110, bbox_inches="tight")


def _optimum_label(label: str | None) -> str:
    return "closed-form optimum" if not label or label == "trained" else f"{label}: closed-form optimum"


def ratio_vs_size(curves: Sequence[dict[str, Any]], threshold: float, path: Path, title: str = "") -> Path:
    """Memorization ratio against |D| (log axis), one curve per factor value, with the 1 − ε line and the EMM.

    Each curve: ``label``, ``points`` (size, ratio, ci), ``emm``, ``ci`` (interval of the EMM) and
    optionally ``optimal`` ({size: ratio}, drawn dashed as the theoretical reference).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(curves):
        color = colors[i % len(colors)]
        pts = sorted(c["points"], key=lambda p: p["size"])
        x = [p["size"] for p in pts]
        y = [p["ratio"] for p in pts]
        err = [[p["ratio"] - p["ci"][0] for p in pts], [p["ci"][1] - p["ratio"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=color, label=c.get("label") or "trained")
        if c.get("emm"):
            ax.axvline(c["emm"], color=color, ls=":", lw=1.2, label=f"EMM ≈ {c['emm']:,.0f}")
            lo, hi = c.get("ci") or (None, None)
            if lo is not None and hi is not None:
                ax.axvspan(lo, hi, color=color, alpha=0.12)
        opt = c.get("optimal") or {}
        if opt:
            xs = sorted(int(s) for s in opt)
            ax.plot(xs, [opt[str(s)] if str(s) in opt else opt[s] for s in xs], ls="--", marker="x", ms=4,
                    color=color, alpha=0.6, label=_optimum_label(c.get("label")))
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    ax.text(0.01, threshold, f"{pct(threshold)}", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training-set size |D| (log scale)")
    ax.set_ylabel("memorization ratio (fraction of samples)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return save_report_figure(fig, path)


def ratio_vs_progress(rows: Sequence[dict[str, Any]], threshold: float, path: Path, title: str = "") -> Path:
    """Memorization ratio against training progress (kimg), one line per size (and repeat)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    runs: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("kind") == "train" and r.get("snapshot_kimg") is not None:
            runs.setdefault((r["size"], r["repeat"]), []).append((r["snapshot_kimg"], r["ratio"]))
    sizes = sorted({s for s, _ in runs})
    cmap = plt.get_cmap("viridis")
    for (size, rep), pts in sorted(runs.items()):
        pts.sort()
        color = cmap(sizes.index(size) / max(1, len(sizes) - 1))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=color,
                label=f"|D| = {size:,}" if rep == 0 else None, alpha=1.0 if rep == 0 else 0.5)
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    ax.set_xlabel("training progress (kimg = thousands of training images shown)")
    ax.set_ylabel("memorization ratio (fraction of samples)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return save_report_figure(fig, path)


def ratio_vs_factor(values: Sequence[dict[str, Any]], threshold: float, factor: str, path: Path,
                    title: str = "") -> Path:
    """Memorization ratio against the factor's value (categorical axis), one series per fixed size."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = [v["label"] for v in values]
    sizes = sorted({p["size"] for v in values for p in v["points"]})
    width = 0.5 / max(1, len(sizes))
    for j, size in enumerate(sizes):
        xs, ys, lo, hi = [], [], [], []
        for x, v in enumerate(values):
            for p in v["points"]:
                if p["size"] == size:
                    xs.append(x + (j - (len(sizes) - 1) / 2) * width)
                    ys.append(p["ratio"])
                    lo.append(p["ratio"] - p["ci"][0])
                    hi.append(p["ci"][1] - p["ratio"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=5, capsize=3, ls="", label=f"|D| = {size:,}")
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    ax.text(0.01, threshold, f"{pct(threshold)}", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0,
                  fontsize=8)
    ax.set_xlabel(factor)
    ax.set_ylabel("memorization ratio (fraction of samples)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return save_report_figure(fig, path)


def emm_vs_factor(values: Sequence[dict[str, Any]], factor: str, path: Path, *, confidence: float) -> Path:
    """EMM against the factor's value with its interval (bracket shown where there is no estimate)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = [v["label"] for v in values]
    xs = list(range(len(values)))
    for x, v in zip(xs, values):
        lo, hi = v.get("ci") or (None, None)
        b_lo, b_hi = v.get("bracket") or (None, None)
        if v.get("emm") is not None:
            ax.errorbar([x], [v["emm"]], yerr=[[v["emm"] - (lo or v["emm"])], [(hi or v["emm"]) - v["emm"]]],
                        marker="o", capsize=4, color="C0")
        if b_lo is not None or b_hi is not None:  # the bracket as a bar
            ax.plot([x + 0.12] * 2, [b_lo or (b_hi or 1) / 2, b_hi or (b_lo or 1) * 2], color="C1", lw=3, alpha=0.5)
    ax.set_xticks(xs, labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel(factor)
    ax.set_ylabel("EMM (training images; log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"EMM (dot, {pct(confidence)} interval) and bracket (bar) per factor value", fontsize=10)
    return save_report_figure(fig, path)
