"""Optional dependencies: import one where it is used, or say in one line which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from diffmem.errors import UsageError


def require(module: str, extra: str, option: str) -> ModuleType:
    """``import module``, or a UsageError (exit 2) naming ``option`` and the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"{option}: needs the {module} package, which is not installed; install the [{extra}] "
                         f"extra: pip install 'diffmem[{extra}]'") from e
