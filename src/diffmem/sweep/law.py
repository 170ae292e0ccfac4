"""The law of the frontier: τ_mem(|D|) = a · |D|^α fitted to the measured onsets, and the EMM it predicts.

τ_mem(|D|) is the budget (kimg) at which a training set of |D| images first reaches a memorization
ratio of 1 − ε. "Why diffusion models don't memorize: the role of implicit dynamical regularization
in training" (2025) finds that it grows linearly with |D| (α = 1), which makes the frontier EMM(T) a
straight line on log–log axes. This module measures α rather than assuming it.

- **Onset of one size.** Its ratio at each budget it was trained to (best snapshot up to the budget,
  pooled over repeats: :mod:`diffmem.sweep.frontier`) never decreases. The onset lies between the last
  budget below 1 − ε and the first at or above it, and is interpolated there linearly in
  logit(ratio) against log kimg (ratios clipped to [1/2n, 1 − 1/2n] for n samples). That is exact for
  a ratio that rises as a logistic in log budget, as the synthetic surfaces do and the measured curves
  roughly do; the ratio itself, interpolated linearly, bends the onsets at the coarse spacing of the
  first snapshots (64 → 128 kimg is a factor 2) and biased α low by 4–10 % on synthetic surfaces of
  known α. A size already at 1 − ε at its first snapshot is
  censored from below (τ ≤ that budget); one still below it at its last is censored from above
  (τ > that budget). Censored sizes do not enter the fit.
- **Fit.** Least squares of log τ on log |D| over the sizes with an interpolated onset (at least 2).
  The interval of α is a percentile bootstrap over those sizes (resample them with replacement, refit;
  seeded, so the same data give the same interval). It needs at least 5 sizes: over 3 or 4 it is
  little more than the range of the few pairwise slopes, and would claim a precision the data lack.
- **The frontier's own slope**, as a cross-check that needs no onsets: least squares of log EMM(T) on
  log T over the budgets whose bracket is as narrow as the search asks (``bracket_factor``: an EMM
  interpolated inside a wider bracket says little); under the law it is 1/α. It has no interval (the
  budgets share their sizes, so their EMMs are not independent).
- **Prediction.** Inverting the law, EMM(T) = (T / a)^(1/α); its interval is the percentile interval
  of the same prediction over the bootstrap fits.
- **Hold-out.** The same fit on the snapshots up to half the final budget predicts the EMM at the
  final budget, which is compared with the EMM measured there: within ±20 % the law holds here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffmem import fmt
from diffmem.seeds import LAW_BOOTSTRAP
from diffmem.sweep.frontier import TOL, BudgetEMM, bracket_ok, frontier

N_BOOT = 2000  # bootstrap refits for α's interval
MIN_BOOT_SIZES = 5  # fewer sizes give an interval that is only the spread of a few pairwise slopes
HOLDOUT_TOLERANCE = 0.20  # the law holds here when the hold-out prediction is within ±20 % of the measured EMM
PREDICT_FACTORS = (2.0, 4.0)  # budgets beyond the final one at which the law predicts the EMM


@dataclass(frozen=True)
class Onset:
    """τ_mem of one size: interpolated, or censored (``kimg`` None) with the budget that bounds it."""

    size: int
    kimg: float | None
    below: float | None  # the last budget still below 1 − ε (None: memorized at its first snapshot)
    above: float | None  # the first budget at or above 1 − ε (None: not memorized by its last snapshot)

    def summary(self) -> dict[str, Any]:
        return {"size": self.size, "kimg": self.kimg, "below": self.below, "above": self.above}


def _logit(p: float, n: int) -> float:
    """log(p / (1 − p)) with p clipped to [1/2n, 1 − 1/2n] (a ratio of n samples can be 0 or 1)."""
    p = min(max(p, 0.5 / n), 1 - 0.5 / n)
    return math.log(p / (1 - p))


def onsets(front: Sequence[BudgetEMM], threshold: float) -> list[Onset]:
    """τ_mem of every size with exact points in ``front`` (lower-bound points are left out)."""
    curves: dict[int, list[tuple[float, float, int]]] = {}
    for b in front:
        for p in b.points:
            if p.size not in b.partial:
                curves.setdefault(p.size, []).append((b.kimg, p.ratio, p.n_samples))
    out = []
    for size, seq in sorted(curves.items()):
        seq.sort()
        j = next((i for i, (_, r, _) in enumerate(seq) if r >= threshold), None)
        if j is None:
            out.append(Onset(size, None, seq[-1][0], None))
        elif j == 0:
            out.append(Onset(size, None, None, seq[0][0]))
        else:
            (T0, r0, n0), (T1, r1, n1) = seq[j - 1], seq[j]
            # logit(ratio) linear in log budget between the two snapshots, at 1 − ε (r0 < threshold ≤ r1)
            l0, l1, lt = _logit(r0, n0), _logit(r1, n1), _logit(threshold, max(n0, n1))
            w = (lt - l0) / (l1 - l0) if l1 > l0 else 1.0
            w = min(max(w, 0.0), 1.0)
            tau = math.exp(math.log(T0) + w * (math.log(T1) - math.log(T0)))
            out.append(Onset(size, float(min(max(tau, T0), T1)), T0, T1))  # within its snapshots, rounding too
    return out


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slope and intercept of least squares y ≈ c + α·x along the last axis, and where the slope is defined."""
    xm, ym = x.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    sxx = ((x - xm) ** 2).sum(-1)
    ok = sxx > 1e-12
    alpha = np.where(ok, ((x - xm) * (y - ym)).sum(-1) / np.where(ok, sxx, 1.0), np.nan)
    return alpha, ym[..., 0] - alpha * xm[..., 0], ok


@dataclass(frozen=True)
class PowerLaw:
    """τ_mem = a · |D|^α fitted on log–log, with its bootstrap over sizes."""

    a: float
    alpha: float
    sizes: tuple[int, ...]  # the sizes fitted (interpolated onsets)
    confidence: float
    boot_log_a: np.ndarray = field(repr=False, compare=False)  # log a of each bootstrap fit
    boot_alpha: np.ndarray = field(repr=False, compare=False)  # α of each bootstrap fit

    @property
    def alpha_ci(self) -> tuple[float, float] | None:
        """Percentile interval of α over the bootstrap fits (None with fewer than MIN_BOOT_SIZES sizes)."""
        if len(self.boot_alpha) == 0:
            return None
        q = (1 - self.confidence) / 2
        lo, hi = np.quantile(self.boot_alpha, [q, 1 - q])
        return float(lo), float(hi)

    def onset(self, size: float) -> float:
        """τ_mem(size) = a · size^α (kimg)."""
        return self.a * size ** self.alpha

    def emm(self, kimg: float) -> float | None:
        """EMM at budget ``kimg``: the size whose onset is ``kimg``, (T / a)^(1/α); None unless α > 0 (or when it
        is beyond any number)."""
        if not self.alpha > 0:
            return None
        log_emm = (math.log(kimg) - math.log(self.a)) / self.alpha
        return float(math.exp(log_emm)) if log_emm < 700 else None

    def emm_ci(self, kimg: float) -> tuple[float, float] | None:
        """Percentile interval of the predicted EMM over all the bootstrap fits; a fit with α ≤ 0 never
        reaches the onset at any size, so it counts as an EMM beyond any number (None when the fits are too
        few, or when so many are that flat that the interval has no upper end)."""
        if len(self.boot_alpha) == 0:
            return None
        up = self.boot_alpha > 0
        log_emm = np.full(self.boot_alpha.shape, np.inf)
        log_emm[up] = (math.log(kimg) - self.boot_log_a[up]) / self.boot_alpha[up]
        return self._interval(log_emm)

    def onset_ci(self, size: float) -> tuple[float, float] | None:
        """Percentile interval of τ_mem(size) over the bootstrap fits."""
        if len(self.boot_alpha) == 0:
            return None
        return self._interval(self.boot_log_a + self.boot_alpha * math.log(size))

    def _interval(self, log_values: np.ndarray) -> tuple[float, float] | None:
        q = (1 - self.confidence) / 2
        lo, hi = np.quantile(np.exp(np.minimum(log_values, 700.0)), [q, 1 - q])  # exp(700): beyond any size
        return None if hi >= math.exp(700.0) else (float(lo), float(hi))

    def summary(self) -> dict[str, Any]:
        return {"a": self.a, "alpha": self.alpha, "alpha_ci": self.alpha_ci, "sizes": list(self.sizes),
                "n_boot": int(len(self.boot_alpha)), "boot_seed": LAW_BOOTSTRAP, "confidence": self.confidence}


def fit_law(ons: Sequence[Onset], *, confidence: float = 0.95, n_boot: int = N_BOOT,
            seed: int = LAW_BOOTSTRAP) -> PowerLaw | None:
    """Fit τ_mem = a·|D|^α to the interpolated onsets (None with fewer than 2 sizes)."""
    pts = [(o.size, o.kimg) for o in ons if o.kimg is not None]
    if len({s for s, _ in pts}) < 2:
        return None
    x = np.log([float(s) for s, _ in pts])
    y = np.log([float(t) for _, t in pts])
    # least squares on log–log: log τ = log a + α · log |D|
    alpha, log_a, _ = _ols(x, y)
    boot_a, boot_alpha = np.empty(0), np.empty(0)
    if len(pts) >= MIN_BOOT_SIZES:
        idx = np.random.default_rng(seed).integers(0, len(pts), size=(n_boot, len(pts)))
        ba, bc, ok = _ols(x[idx], y[idx])
        boot_alpha, boot_a = ba[ok], bc[ok]  # resamples of a single size have no slope
    return PowerLaw(a=float(math.exp(log_a)), alpha=float(alpha), sizes=tuple(s for s, _ in pts),
                    confidence=confidence, boot_log_a=boot_a, boot_alpha=boot_alpha)


def frontier_slope(front: Sequence[BudgetEMM], bracket_factor: float) -> dict[str, Any] | None:
    """Least squares of log EMM(T) on log T over the budgets with an estimate inside a bracket at most
    ``bracket_factor`` wide (None with fewer than 2 such budgets)."""
    pts = [(b.kimg, b.estimate.emm) for b in front if b.estimate.emm is not None and bracket_ok(b, bracket_factor)]
    if len(pts) < 2:
        return None
    slope, _, _ = _ols(np.log([t for t, _ in pts]), np.log([e for _, e in pts]))
    return {"slope": float(slope), "alpha": float(1 / slope) if slope > 0 else None, "budgets": len(pts)}


def _prediction(law: PowerLaw, kimg: float) -> dict[str, Any]:
    ci = law.emm_ci(kimg)
    why = None if ci is not None else (
        f"too few sizes to bootstrap (fewer than {MIN_BOOT_SIZES})" if len(law.boot_alpha) == 0 else
        "no upper end: too many bootstrap fits are flat (α ≤ 0, or an EMM beyond any number)")
    return {"kimg": kimg, "emm": law.emm(kimg), "ci": ci, "no_ci": why}


def holdout(rows: Sequence[Mapping[str, Any]], threshold: float, measured: BudgetEMM,
            confidence: float = 0.95) -> dict[str, Any]:
    """Fit on the snapshots up to half the final budget, predict the EMM at the final budget, compare."""
    half = measured.kimg / 2
    out: dict[str, Any] = {"fit_upto_kimg": half, "final_kimg": measured.kimg, "tolerance": HOLDOUT_TOLERANCE,
                           "measured_emm": measured.estimate.emm, "measured_ci": list(measured.estimate.ci)}
    early = [r for r in rows if r.get("snapshot_kimg") is None or float(r["snapshot_kimg"]) <= half + TOL]
    law = fit_law(onsets(frontier(early, threshold, confidence), threshold), confidence=confidence)
    if law is None:
        out["reason"] = f"fewer than 2 sizes reach {fmt.pct(threshold)} between two snapshots up to {half:g} kimg"
        return out
    pred = law.emm(measured.kimg)
    out.update({"sizes": list(law.sizes), "alpha": law.alpha, "alpha_ci": law.alpha_ci, "a": law.a,
                "predicted_emm": pred, "predicted_ci": law.emm_ci(measured.kimg)})
    if measured.estimate.emm is None:
        out["reason"] = "the EMM at the final budget lies outside the sizes measured; nothing to compare with"
    elif pred is None:
        out["reason"] = f"the fit up to {half:g} kimg has α = {law.alpha:.3g} ≤ 0: it predicts no EMM"
    else:
        err = pred / measured.estimate.emm - 1
        out.update({"error": err, "within_tolerance": abs(err) <= HOLDOUT_TOLERANCE})
    return out


def law_report(rows: Sequence[Mapping[str, Any]], front: Sequence[BudgetEMM], threshold: float,
               bracket_factor: float, confidence: float = 0.95) -> dict[str, Any]:
    """Everything ``emm.json`` says about the law: onsets, fit, predictions, hold-out, and the fitted
    curves the report draws (so the report recomputes nothing)."""
    ons = onsets(front, threshold)
    law = fit_law(ons, confidence=confidence)
    out: dict[str, Any] = {"onsets": [o.summary() for o in ons], "fit": None, "predictions": [],
                           "holdout": None, "frontier_slope": frontier_slope(front, bracket_factor), "curve_budget": [],
                           "curve_size": []}
    if not front:
        return out
    final = front[-1]
    out["holdout"] = holdout(rows, threshold, final, confidence)
    if law is None:
        return out
    out["fit"] = law.summary()
    ci = law.alpha_ci
    out["linear"] = None if ci is None else ci[0] <= 1.0 <= ci[1]  # α's interval holds 1: the linear law
    out["predictions"] = [_prediction(law, f * final.kimg) for f in PREDICT_FACTORS]
    lo_T = front[0].kimg
    out["curve_budget"] = [_prediction(law, float(T)) for T in
                           np.geomspace(lo_T, PREDICT_FACTORS[-1] * final.kimg, 24)]
    fitted = [o.size for o in ons if o.kimg is not None]
    out["curve_size"] = [{"size": float(s), "kimg": law.onset(s), "ci": law.onset_ci(s)}
                         for s in np.geomspace(min(fitted) / 1.2, max(fitted) * 1.2, 24)]
    return out


def _ci(ci: Sequence[float | None] | None) -> str:
    return "(no interval)" if not ci else f"[{fmt.size(ci[0])}, {fmt.size(ci[1])}]"


def law_lines(law: Mapping[str, Any], threshold: float) -> list[str]:
    """The law in words, one sentence per line, every number with what it is (CLI and report alike)."""
    ons = law.get("onsets") or []
    fit = law.get("fit")
    exact = [o for o in ons if o["kimg"] is not None]
    out = [f"onsets: {len(ons)} sizes, {len(exact)} reach {fmt.pct(threshold)} between two snapshots (logit of the "
           f"ratio interpolated in log kimg), {sum(o['below'] is None for o in ons)} already at their first snapshot, "
           f"{sum(o['above'] is None for o in ons)} not by their last"]
    if fit is None:
        out.append("law: not fitted (it needs the onsets of at least 2 sizes)")
    else:
        ci = fit.get("alpha_ci")
        if ci is None:
            verdict = f"no interval for α (the bootstrap over sizes needs at least {MIN_BOOT_SIZES})"
        else:
            holds = ci[0] <= 1.0 <= ci[1]
            verdict = (f"{fmt.pct(fit['confidence'])} interval of α [{ci[0]:.3f}, {ci[1]:.3f}] (bootstrap over sizes, "
                       f"{fit['n_boot']:,} refits): {'holds' if holds else 'excludes'} 1, "
                       f"{'consistent with' if holds else 'not'} the linear law")
        out.append(f"law: τ_mem = {fit['a']:.4g} · |D|^{fit['alpha']:.3f} kimg, least squares on log–log over "
                   f"{len(fit['sizes'])} sizes; {verdict}")
    fs = law.get("frontier_slope")
    if fs:
        alpha = "—" if fs["alpha"] is None else f"{fs['alpha']:.3f}"
        out.append(f"the frontier itself: EMM ∝ T^{fs['slope']:.3f} over the {fs['budgets']} budgets bracketed as "
                   f"narrowly as asked (least squares on log–log), i.e. α = 1/slope = {alpha}, without an interval "
                   "(the budgets share their sizes)")
    for p in law.get("predictions") or []:
        ci = f"{_ci(p['ci'])} over the bootstrap fits" if p["ci"] else \
            f"no interval ({p.get('no_ci') or 'too few sizes to bootstrap'})"
        out.append(f"predicted EMM at {fmt.kimg(p['kimg'])} kimg (beyond the budgets trained): {fmt.size(p['emm'])} "
                   f"training images, {ci}")
    h = law.get("holdout")
    if h:
        head = (f"hold-out: fitted on the snapshots up to {fmt.kimg(h['fit_upto_kimg'])} kimg"
                + (f" ({len(h['sizes'])} sizes, α = {h['alpha']:.3f})" if h.get("sizes") else ""))
        if "error" in h:
            err = h["error"]
            verdict = (f"within ±{h['tolerance']:.0%}: the law holds here" if h["within_tolerance"] else
                       f"outside ±{h['tolerance']:.0%}: the law does not hold here, the prediction is off by "
                       f"{abs(err):.0%}")
            out.append(f"{head}, it predicts EMM {fmt.size(h['predicted_emm'])} {_ci(h['predicted_ci'])} at "
                       f"{fmt.kimg(h['final_kimg'])} kimg, where {fmt.size(h['measured_emm'])} "
                       f"{_ci(h['measured_ci'])} is "
                       f"measured: error {err:+.1%} ({verdict})")
        else:
            out.append(f"{head}: no check ({h['reason']})")
    return out
