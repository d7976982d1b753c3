"""``%bpf list``: the session's programs."""

from __future__ import annotations

import pandas as pd
from IPython.core.error import UsageError

from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState, line

USAGE = "%bpf list"
HELP = ("A table of programs: name, probes attached, maps, events so far, uptime, and what "
        "each costs (runs/s, ns per run, percent of a CPU, from the kernel's run statistics).")
PARSER = parser(USAGE, HELP)


def run(magics: MagicsState, args: str) -> pd.DataFrame:
    if args.strip():
        raise UsageError(f"%bpf list takes no arguments, got {args.strip()!r}\n"
                         "To find probes to attach: %bpf probes PATTERN "
                         "(e.g. %bpf probes 'tracepoint:syscalls:*open*')")
    PARSER.parse(args)
    table = magics.session.table()
    if "overhead" in table.attrs:
        line("note", table.attrs["overhead"])
    return table
