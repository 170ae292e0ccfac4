"""Small helpers shared by the command modules: JSON output, progress bars, number parsing."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from typing import Any

from diffmem.artefacts import to_jsonable
from diffmem.errors import UsageError


def print_json(obj: Any) -> None:
    """The one JSON object a ``--json`` command prints on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(obj), sort_keys=True) + "\n")


def parse_fraction(text: str, option: str) -> float:
    """``1/3``, ``0.333`` → float; a clear error otherwise."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError) as e:
        raise UsageError(f"{option}: {text!r} is not valid; expected a number such as 1/3 or 0.5") from e




def not_built(name: str) -> int:
    raise UsageError(f"'diffmem {name}' is not built yet in this version; see the README for what works now")
