"""`diffmem report`: render the report of an emm or study directory."""

from __future__ import annotations

import argparse
import sys

HELP = "render the Markdown/HTML report (with figures) of an emm or study directory"
EXAMPLES = """\
  diffmem report out/digits-emm      # writes out/digits-emm/report.md, report.html and figures/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the --out directory of 'diffmem emm' or 'diffmem study'")


def run(args: argparse.Namespace) -> int:
    from diffmem.report import render_report

    path = render_report(args.dir)
    sys.stdout.write(f"report: {path} (Markdown: {path.with_suffix('.md')})\n")
    return 0
