"""The two kinds of error the command line distinguishes, and how an error reads.

``UsageError`` is bad usage or bad input (exit code 2); ``RunError`` is a failure while running
(exit code 1). Messages are one line that names the option or file, the bad value and what is
expected, e.g. ``--size: 5000 is more than the source 'digits' holds (1797 images)``; :func:`bad` writes the
common form ``OPTION: VALUE is not valid; expected …``. :func:`one_line` and :func:`reason` fold another
library's exception onto one line.
"""

from __future__ import annotations


class DiffmemError(Exception):
    exit_code = 1


class UsageError(DiffmemError, ValueError):
    """Bad usage or bad input: exit code 2."""

    exit_code = 2


class RunError(DiffmemError, RuntimeError):
    """A failure while running: exit code 1."""

    exit_code = 1


def bad(option: str, value: object, expected: str, *, shown: str | None = None) -> UsageError:
    """The one-line usage error ``OPTION: VALUE is not valid; expected …``, naming the option (or the config
    path, such as ``measure.copying_tau``), the value (as ``repr``, or as ``shown`` says it, e.g. ``shape (3,)``)
    and what is expected."""
    text = repr(value) if shown is None else shown
    return UsageError(f"{option}: {text} is not valid; expected {expected}")


def one_line(e: BaseException) -> str:
    """An exception's message folded onto one line (torch, PIL, zip and Ray messages often span several)."""
    return " ".join(str(e).split())


def reason(e: BaseException, limit: int | None = 160) -> str:
    """An exception as one line that names its class, ``"ClassName: message"``, cut at ``limit`` characters
    (None: whole) — for an error that wraps one from a library."""
    text = f"{e.__class__.__name__}: {one_line(e)}".rstrip()
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
