"""The one progress bar every long stage shows: tqdm on stderr, never on stdout (which ``--json`` owns)."""

from __future__ import annotations

import sys


def progress_bar(total: int | float | None, desc: str, unit: str = "it", *, enabled: bool | None = None,
                 initial: int = 0, leave: bool = False):
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=leave)
