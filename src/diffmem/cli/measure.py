"""`diffmem measure` (not built yet)."""

from diffmem.cli.common import not_built

HELP = "(not built yet) see DESIGN.md §3"
EXAMPLES = "  (none yet)\n"


def add_arguments(parser):
    pass


def run(args):
    return not_built("measure")
