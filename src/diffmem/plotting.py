"""matplotlib for every figure diffmem draws: the Agg backend (files only, never a window) and PNGs written whole.

matplotlib takes about a second to import, so it is imported on the first figure, not with the package.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from diffmem.artefacts import atomic_write_bytes


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib  # about a second: only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` as a PNG (a temporary file, then renamed: whole or not at all) and close it;
    ``savefig`` are matplotlib's options (``dpi``, ``bbox_inches``, …)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    atomic_write_bytes(path, buf.getvalue())
    pyplot().close(fig)
    return Path(path)
