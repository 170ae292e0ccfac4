"""`diffmem report`: render the report of an emm or study directory."""

from __future__ import annotations

import argparse
import sys

from diffmem.cli.common import add_json_argument, print_json
from diffmem.report import render_report

HELP = "render the Markdown/HTML report (with figures) of an emm or study directory"
EXAMPLES = """\
  diffmem report out/digits-emm          # writes out/digits-emm/report.md, report.html and figures/
  diffmem report out/digits-emm --json   # the paths written, as one JSON object
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the --out directory of 'diffmem emm' or 'diffmem study'")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    html = render_report(args.dir)
    markdown = html.with_suffix(".md")
    if args.json:
        figures = sorted(str(p) for p in (html.parent / "figures").glob("*.png"))
        print_json({"html": str(html), "markdown": str(markdown), "figures": figures})
    else:
        sys.stdout.write(f"report: {html} (Markdown: {markdown})\n")
    return 0
