"""``%bpf probes [PATTERN] [-v]``: attach points matching a pattern, as a DataFrame."""

from __future__ import annotations

import pandas as pd

from ebpf_magic import discover
from ebpf_magic.magics.args import parser

USAGE = "%bpf probes [PATTERN] [-v]"
HELP = ("List attach points in -a syntax: tracepoint:syscalls:*open*, rawtracepoint:*, "
        "kprobe:vfs_*, uprobe:c:mall*, usdt:PATH_OR_PID:*, software:*, profile:*, xdp:*, tc:*, "
        "iter:*; each with the SEC() name a libbpf-style program gives it (column section). "
        "-v adds their arguments with C types. Without PATTERN, a count of each kind.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("pattern", nargs="?", default="", metavar="PATTERN")
PARSER.add_argument("-v", "--verbose", action="store_true")


def run(magics, args: str) -> pd.DataFrame | None:
    opts = PARSER.parse(args)
    try:
        return discover.find(opts.pattern, opts.verbose)
    except discover.SourceUnavailable as e:  # no rights to tracefs: say so, not a traceback
        print(e)
        return None
