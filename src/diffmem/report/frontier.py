"""The frontier section of an EMM report: the EMM at every training budget, and the law τ_mem = a·|D|^α.

Everything drawn is read from ``emm.json`` (``frontier`` and ``law``); nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffmem import fmt
from diffmem.fmt import pct
from diffmem.plotting import pyplot
from diffmem.report.blocks import Block, Figure, Heading, Paragraph, Table
from diffmem.report.figures import save_report_figure
from diffmem.sweep.frontier import frontier_table
from diffmem.sweep.law import law_lines


def _log(ax, which: str) -> None:
    """A log axis labelled in plain numbers at 1, 2 and 5 × 10^k (no crowded minor labels)."""
    from matplotlib import ticker  # matplotlib loads on the first figure (see diffmem.plotting)

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def emm_vs_budget(front: Sequence[Mapping[str, Any]], law: Mapping[str, Any], path: Path, confidence: float) -> Path:
    """Left: EMM against the budget (kimg), log–log: the EMM with its interval (at ``confidence``), the bracket as a
    band, the fitted law (dashed, bootstrap band) beyond the budgets trained, the hold-out prediction for the final
    budget. Right: the budget in images seen per training image at the EMM, T·1000 / EMM(T), against T."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    est = [b for b in front if b["emm"] is not None]
    T = [b["kimg"] for b in est]
    E = [b["emm"] for b in est]
    lo = [b["ci"][0] if b["ci"][0] is not None else b["emm"] for b in est]
    hi = [b["ci"][1] if b["ci"][1] is not None else b["emm"] for b in est]
    closed = [b for b in front if None not in b["bracket"]]
    if closed:
        ax1.fill_between([b["kimg"] for b in closed], [b["bracket"][0] for b in closed],
                         [b["bracket"][1] for b in closed], color="C1", alpha=0.18, step="mid",
                         label="bracket (memorizes, does not)")
    ax1.errorbar(T, E, yerr=[[e - x for e, x in zip(E, lo)], [x - e for e, x in zip(E, hi)]], marker="o", ms=4,
                 capsize=3, color="C0", ls="", label=f"EMM ({pct(confidence)} interval)")
    below = [b for b in front if b["below_range"]]
    if below:  # EMM < the smallest size measured
        ax1.plot([b["kimg"] for b in below], [b["bracket"][1] for b in below], marker="v", ls="", color="C4",
                 label="EMM below the smallest size measured")
    above = [b for b in front if b["above_range"]]
    if above:  # EMM ≥ the largest size measured
        ax1.plot([b["kimg"] for b in above], [b["bracket"][0] for b in above], marker="^", ls="", color="C4",
                 label="EMM above the largest size measured")
    curve = [c for c in law.get("curve_budget") or [] if c["emm"] is not None]
    if curve:
        cT = [c["kimg"] for c in curve]
        ax1.plot(cT, [c["emm"] for c in curve], ls="--", color="C2",
                 label=f"law: α = {law['fit']['alpha']:.2f} (fitted to every onset)")
        band = [c for c in curve if c["ci"]]
        if band:
            ax1.fill_between([c["kimg"] for c in band], [c["ci"][0] for c in band], [c["ci"][1] for c in band],
                             color="C2", alpha=0.12)
        ax1.axvline(front[-1]["kimg"], color="k", lw=0.8, ls=":")
        ax1.text(front[-1]["kimg"], 0.02, " final budget", transform=ax1.get_xaxis_transform(), fontsize=7)
    h = law.get("holdout") or {}
    if h.get("predicted_emm") is not None:
        ci = h.get("predicted_ci") or (h["predicted_emm"], h["predicted_emm"])
        ax1.errorbar([h["final_kimg"]], [h["predicted_emm"]],
                     yerr=[[h["predicted_emm"] - ci[0]], [ci[1] - h["predicted_emm"]]], marker="D", ms=6, capsize=3,
                     color="C3", ls="", label=f"predicted from budgets ≤ {fmt.kimg(h['fit_upto_kimg'])} kimg")
    _log(ax1, "x")
    _log(ax1, "y")
    shown = E + [b["bracket"][i] for b in front for i in (0, 1) if b["bracket"][i] is not None]
    shown += [c["emm"] for c in curve] + ([h["predicted_emm"]] if h.get("predicted_emm") is not None else [])
    if shown:  # the data and the fitted line; a wide bootstrap band is cut rather than squashing them
        ax1.set_ylim(min(shown) / 1.5, max(shown) * 1.5)
    ax1.set_xlabel("training budget (kimg = thousands of images seen; log scale)")
    ax1.set_ylabel("EMM (training images; log scale)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7, loc="upper left")
    # the budget in images seen per training image of a set of EMM(T) images: T·1000 / EMM(T), constant under α = 1
    y = [t * 1000 / e for t, e in zip(T, E)]
    ax2.errorbar(T, y, yerr=[[v - t * 1000 / h for v, t, h in zip(y, T, hi)], [t * 1000 / w - v for v, t, w in
                                                                             zip(y, T, lo)]],
                 marker="o", ms=4, capsize=3, color="C0", ls="", label=f"at the EMM ({pct(confidence)} interval)")
    if curve:
        ax2.plot([c["kimg"] for c in curve], [c["kimg"] * 1000 / c["emm"] for c in curve], ls="--", color="C2",
                 label="law (flat when α = 1)")
    if not est:
        ax2.text(0.5, 0.5, "no EMM inside the sizes measured", ha="center", transform=ax2.transAxes)
    _log(ax2, "x")
    ax2.set_ylim(0, max([v for v in y] + [1.0]) * 1.6)
    ax2.set_xlabel("training budget (kimg; log scale)")
    ax2.set_ylabel("images seen per training image at the EMM (epochs)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle("The memorization frontier: the largest training set still memorized for each budget", fontsize=10)
    return save_report_figure(fig, path)


def onset_vs_size(law: Mapping[str, Any], path: Path) -> Path:
    """τ_mem against |D| on log–log axes: interpolated onsets with the snapshots that bound them, censored
    sizes as triangles, the fitted line with its bootstrap band, and the linear law (α = 1) for reference."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ons = law.get("onsets") or []
    inner = [o for o in ons if o["kimg"] is not None]
    if inner:
        ax.errorbar([o["size"] for o in inner], [o["kimg"] for o in inner],
                    yerr=[[o["kimg"] - o["below"] for o in inner], [o["above"] - o["kimg"] for o in inner]],
                    marker="o", ms=4, capsize=3, ls="", color="C0",
                    label="onset (interpolated; bars: the snapshots around it)")
    early = [o for o in ons if o["below"] is None]
    if early:
        ax.plot([o["size"] for o in early], [o["above"] for o in early], marker="v", ls="", color="C1",
                label="memorized at its first snapshot (τ ≤ it)")
    late = [o for o in ons if o["above"] is None]
    if late:
        ax.plot([o["size"] for o in late], [o["below"] for o in late], marker="^", ls="", color="C4",
                label="not memorized by its last snapshot (τ > it)")
    fit = law.get("fit")
    curve = law.get("curve_size") or []
    if fit and curve:
        ci = fit.get("alpha_ci")
        text = f"τ = {fit['a']:.3g}·|D|^{fit['alpha']:.2f}" + (f", α ∈ [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        xs = [c["size"] for c in curve]
        ax.plot(xs, [c["kimg"] for c in curve], ls="--", color="C2", label=text)
        band = [c for c in curve if c["ci"]]
        if band:
            ax.fill_between([c["size"] for c in band], [c["ci"][0] for c in band], [c["ci"][1] for c in band],
                            color="C2", alpha=0.15)
        # the linear law through the fit at the geometric middle of the sizes fitted
        mid = (xs[0] * xs[-1]) ** 0.5
        t_mid = fit["a"] * mid ** fit["alpha"]
        ax.plot(xs, [t_mid * x / mid for x in xs], ls=":", color="k", lw=0.9, label="α = 1 (linear law), for reference")
    _log(ax, "x")
    _log(ax, "y")
    ax.set_xlabel("training-set size |D| (log scale)")
    ax.set_ylabel("τ_mem: first budget at 1 − ε (kimg; log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return save_report_figure(fig, path)


def frontier_blocks(directory: Path, s: Mapping[str, Any], figdir: Path, *, confidence: float) -> list[Block]:
    """Report blocks of the frontier (none when the search has a single budget); intervals at ``confidence``."""
    front = s.get("frontier") or []
    if len(front) < 2:
        return []
    law = s.get("law") or {}
    t = s["threshold"]
    header, rows = frontier_table(front, confidence)
    f1 = emm_vs_budget(front, law, figdir / "frontier.png", confidence)
    blocks: list[Block] = [
        Heading(2, "Frontier: the EMM at every training budget"),
        Paragraph(f"For each snapshot budget T, each size's ratio is its best snapshot up to T, and EMM(T) is the "
                  f"largest |D| still memorizing ≥ {pct(t)} at T (interpolated in log |D|, as above). A size whose run "
                  "stopped once it memorized counts as memorizing at later budgets (its ratio is then a lower bound). "
                  f"{s.get('training_kimg', 0):,.0f} kimg of training in all."),
        Table(header, rows),
        Figure(f1.relative_to(directory), f"Left: EMM against the training budget (kimg) with its {pct(confidence)} "
                                          "interval, the bracket (band), the fitted law (dashed) and the hold-out "
                                          "prediction (diamond). Right: the same budgets in images seen per training "
                                          "image at the EMM (constant under the linear law)"),
        Heading(2, "The law τ_mem = a·|D|^α"),
        Paragraph("τ_mem(|D|) is the budget at which a training set of |D| images first reaches 1 − ε. A linear law "
                  "(α = 1) makes the frontier a straight line of slope 1 on log–log axes and the images seen per "
                  "training image at the EMM a constant (\"Why diffusion models don't memorize: the role of implicit "
                  "dynamical regularization in training\", 2025)."),
    ]
    blocks += [Paragraph(line + ".") for line in law_lines(law, t)]
    if law.get("onsets"):
        f2 = onset_vs_size(law, figdir / "onsets.png")
        blocks.append(Figure(f2.relative_to(directory), "τ_mem against |D| (log–log): onsets, censored sizes, the "
                                                        "fitted law with its bootstrap band, and α = 1 for reference"))
    return blocks
