"""How numbers read in what diffmem prints and writes (terminal lines, reports, tables): one rule each."""

from __future__ import annotations


def size(x: float | None) -> str:
    """A number of images (or an EMM, or a bound on one): ``1,234``; ``—`` when there is none."""
    return "—" if x is None else f"{x:,.0f}"


def kimg(x: float) -> str:
    """A training budget in kimg: ``64``, ``12,864``, ``0.032`` — up to six significant digits, so budgets of
    paper scale (tens of thousands of kimg) print whole, never as ``1.286e+04``."""
    return f"{x:,.6g}"


def pct(x: float) -> str:
    """A fraction as a percentage with as many digits as it has: 0.95 → ``95 %``, 0.975 → ``97.5 %``; for
    confidence levels and the 1 − ε threshold, which rounding would misstate."""
    return f"{x * 100:.4g} %"
