"""The command line as a whole: every command reachable and listed, every documented command line valid."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import diffmem.cli
from diffmem.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "REPRODUCTION.md", *sorted((ROOT / "docs").glob("*.md"))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_module_is_a_command():
    # the modules on disk, not the COMMANDS list: a command module that is not wired up fails here
    on_disk = {p.stem for p in Path(diffmem.cli.__file__).parent.glob("*.py")} - {"__init__", "common"}
    assert set(_subparsers(build_parser())) == on_disk == set(COMMANDS)


def test_top_level_help_has_one_row_per_command():
    out = subprocess.run([sys.executable, "-m", "diffmem", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listing = out.stdout.split("examples:")[0]  # the parser's own listing, not the examples below it
    rows = dict(re.findall(r"^ {4}(\w+) +(\S.*)$", listing, flags=re.M))
    assert set(rows) == set(COMMANDS)
    for name in COMMANDS:  # each row starts with the command's own one-line summary
        summary = __import__(f"diffmem.cli.{name}", fromlist=["HELP"]).HELP
        assert summary.startswith(rows[name].strip()), (name, rows[name])


def _command_lines(text: str) -> list[str]:
    """``diffmem COMMAND …`` lines of a text: fenced or indented code lines and inline code spans."""
    text = text.replace("\\\n", " ")  # shell line continuations
    found = []
    command = r"diffmem\s+(?:" + "|".join(COMMANDS) + r")\b"
    for line in text.splitlines():
        found += [m.group(1) for m in re.finditer(r"(?:^\s*|-m )(" + command + r"[^`#]*)", line)]
        found += [m.group(1) for m in re.finditer(r"`(" + command + r"[^`]*)`", line)]
    # synopses with alternatives or optional parts ([--x], a|b, …) and bare command names in prose are not
    # command lines
    return sorted({f.strip() for f in found if not re.search(r"[\[|…]|\.\.\.", f) and len(f.split()) > 2})


def _documented():
    cases = []
    for name in COMMANDS:
        mod = __import__(f"diffmem.cli.{name}", fromlist=["EXAMPLES"])
        cases += [(f"{name} --help", line) for line in _command_lines(mod.EXAMPLES)]
    cases += [("diffmem --help", line) for line in _command_lines(build_parser().epilog)]
    for doc in DOCS:
        cases += [(doc.name, line) for line in _command_lines(doc.read_text())]
    return cases


DOCUMENTED = _documented()


def test_the_documentation_has_command_lines_of_every_command():
    assert {line.split()[1] for _, line in DOCUMENTED} == set(COMMANDS)
    assert {where for where, _ in DOCUMENTED} >= {f"{c} --help" for c in COMMANDS} | {"README.md", "EMM.md"}


@pytest.mark.parametrize("where,line", DOCUMENTED, ids=[f"{w}: {x}"[:90] for w, x in DOCUMENTED])
def test_every_documented_command_line_parses(where, line, capsys):
    """Each example in --help and the docs names a command and options the real parser accepts."""
    argv = shlex.split(line)[1:]
    if "--help" in argv:
        argv = [a for a in argv if a != "--help"]
        assert len(argv) == 1 and argv[0] in COMMANDS, line
        return
    parser = build_parser()
    for p in (parser, *_subparsers(parser).values()):  # documented lines spell options in full
        p.allow_abbrev = False
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: {line!r} is refused by the parser (exit {e.code}): {capsys.readouterr().err.strip()}")
    assert args.command == argv[0]
