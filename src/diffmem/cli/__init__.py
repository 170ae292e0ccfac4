"""The ``diffmem`` command line: argument parsing only; every command calls the library.

Each command lives in its own module of this package and provides ``HELP`` (one line),
``EXAMPLES`` (text), ``add_arguments(parser)`` and ``run(args) -> int``. Options that mean the same
on several commands (``--json``, ``--no-progress``, ``--threads``, ``--debug``) come from the helpers
in :mod:`diffmem.cli.common`.
Errors: one line on stderr, exit code 2 for bad usage or input, 1 for a failure while running,
no traceback unless ``--debug``; the library's config paths in it read as the command's flags
(:mod:`diffmem.cli.flags`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from diffmem import __version__
from diffmem.cli.common import add_debug_argument, apply_threads
from diffmem.cli.flags import to_flags
from diffmem.errors import DiffmemError, one_line, reason

COMMANDS = ("data", "train", "sample", "measure", "emm", "study", "report")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="diffmem",
        description="Measure and study memorization in diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  diffmem emm --preset digits --out out/digits-emm      # the embedded-default experiment\n"
        "  diffmem measure --samples gen/ --train train.npz       # audit any model's samples\n"
        "run 'diffmem COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        mod = importlib.import_module(f"diffmem.cli.{name}")
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog="examples:\n" + mod.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_debug_argument(p)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    debug = getattr(args, "debug", False)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from diffmem.runtime import tune_allocator

    tune_allocator()  # no page faults on every step's tensors (diffmem.runtime); results are unchanged
    try:
        apply_threads(args)
        return int(args._run(args) or 0)
    except DiffmemError as e:
        if debug:
            traceback.print_exc()
        print(f"diffmem {args.command}: error: {to_flags(one_line(e), args.command)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"diffmem {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure while running
        if debug:
            traceback.print_exc()
        print(f"diffmem {args.command}: failed: {reason(e, limit=None)} "
              "(rerun with --debug for details)", file=sys.stderr)
        return 1
