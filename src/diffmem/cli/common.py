"""What the command modules share: the options that mean the same on every command, JSON output, number parsing.

Each shared option is added by one helper here, so it has one spelling, one help text and one behaviour
wherever it appears:

- ``--debug`` (every command): tracebacks and debug logging;
- ``--json``: the result as one JSON object on stdout and nothing else there;
- ``--no-progress``: no progress bars (bars go to stderr, and only when it is a terminal);
- ``--threads N``: the CPU threads of this process's numerical work, set by :func:`apply_threads` before the
  command runs;
- ``--dry-run``: print what would run (the resolved config; for a sweep, also its trainings) and stop.

Also here: printing the one JSON object, parsing fractions, and naming the config file a refusal came from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from diffmem.artefacts import to_jsonable
from diffmem.errors import UsageError, bad

DEBUG_HELP = "show tracebacks and debug logging"
JSON_HELP = "print the result as one JSON object on stdout and nothing else there"
NO_PROGRESS_HELP = "hide the progress bars (shown on stderr when it is a terminal)"
DRY_RUN_HELP = ("print what would run (the resolved config, in full with --json; emm and study: the trainings "
                "planned) and stop, writing nothing")
THREADS_HELP = ("CPU threads of this process for torch and the NumPy BLAS (default: their own choice; 1 is often "
                "fastest for small models on a busy machine)")


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug``: tracebacks and debug logging (on every command)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json``: the command prints its result with :func:`print_json` and nothing else on stdout."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: read back with :func:`show_progress`."""
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: applied by :func:`apply_threads`, which the command line calls before any command runs."""
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def add_dry_run_argument(parser: argparse.ArgumentParser) -> None:
    """``--dry-run``: the command prints its resolved config (with ``--json``: as one JSON object) and returns."""
    parser.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows progress bars: stderr is a terminal and ``--no-progress`` was not given."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def apply_threads(args: argparse.Namespace) -> None:
    """Set the CPU threads ``--threads`` asks for (nothing when the command has no such option or it is not given)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    from diffmem.devices import set_threads  # imports torch: only when asked

    set_threads(n, "--threads")


def print_json(obj: Any) -> None:
    """The one JSON object a ``--json`` command prints on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(obj), sort_keys=True) + "\n")


def parse_fraction(text: str, option: str) -> float:
    """``1/3``, ``0.333`` → float; a clear error otherwise."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError) as e:
        raise bad(option, text, "a number such as 1/3 or 0.5") from e


@contextlib.contextmanager
def from_config_file(path: str | None) -> Iterator[None]:
    """Refusals raised in the block name the config file the config came from first (``FILE: train.ema_mode: …``);
    nothing changes when there is none (``path`` None: a preset)."""
    try:
        yield
    except UsageError as e:
        if path is None:
            raise
        raise UsageError(f"{path}: {e}") from e
