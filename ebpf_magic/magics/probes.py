"""``%bpf probes [PATTERN] [-v] [--attachable]``: attach points matching a pattern."""

from __future__ import annotations

import pandas as pd

from ebpf_magic import discover
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState, report_warnings

USAGE = "%bpf probes [PATTERN] [-v] [--attachable]"
HELP = ("List attach points in -a syntax: tracepoint:syscalls:*open*, rawtracepoint:*, "
        "kprobe:vfs_*, uprobe:c:mall*, usdt:PATH_OR_PID:*, software:*, profile:*, xdp:*, tc:*, "
        "iter:*; each with the SEC() name a libbpf-style program gives it (column section). "
        "-v adds their arguments with C types; --attachable leaves out kinds this machine "
        "cannot attach (a note says why they cannot). Without PATTERN, a count of each kind.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("pattern", nargs="?", default="", metavar="PATTERN")
PARSER.add_argument("-v", "--verbose", action="store_true")
PARSER.add_argument("--attachable", action="store_true")


def run(magics: MagicsState, args: str) -> pd.DataFrame | None:
    opts = PARSER.parse(args)
    try:
        found = discover.find(opts.pattern, opts.verbose, attachable_only=opts.attachable)
    except discover.SourceUnavailable as e:  # no rights to tracefs: say so, not a traceback
        print(e)
        return None
    # why rows cannot attach, once per kind rather than once per row
    kinds = dict.fromkeys(found.loc[~found["attachable"].astype(bool), "kind"])
    notes = [f"{kind} rows cannot attach here: {discover.unattachable(kind)}; "
             "--attachable leaves them out" for kind in kinds if discover.unattachable(kind)]
    report_warnings(magics.warned, [], notes)
    return found
