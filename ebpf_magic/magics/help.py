"""``%bpf help``: what ``%bpf?`` shows."""

from __future__ import annotations

from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState

USAGE = "%bpf help"
HELP = "Show this help (the same as %bpf?)."
PARSER = parser(USAGE, HELP)


def run(magics: MagicsState, args: str) -> None:
    PARSER.parse(args)
    print(magics.bpf.__doc__)
