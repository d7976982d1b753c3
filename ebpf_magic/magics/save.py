"""``%bpf save NAME [PATH]``: write a program's recording."""

from __future__ import annotations

import pandas as pd
from IPython.core.error import UsageError

from ebpf_magic import sessions
from ebpf_magic.magics.args import parser

USAGE = "%bpf save NAME [PATH] [--no-hostname] [--table NAME=VARIABLE ...]"
HELP = ("Write program NAME's source, probes, events and map snapshots to one .bpfrec file. "
        "Without PATH, refresh recordings/NAME.bpfrec, only when recording (%%bpf NAME "
        "--record, or EBPF_MAGIC_RECORD=1); replayed programs are left as they are.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("name", metavar="NAME")
PARSER.add_argument("path", nargs="?", metavar="PATH")
PARSER.add_argument("--no-hostname", action="store_true")
PARSER.add_argument("--table", action="append", default=[], metavar="NAME=VARIABLE")


def run(magics, args: str):
    opts = PARSER.parse(args)
    hostname = not opts.no_hostname
    tables: dict[str, pd.DataFrame] = {}
    for spec in opts.table:
        table, _, var = spec.partition("=")
        value = magics.shell.user_ns.get(var or table)
        if not table or not isinstance(value, pd.DataFrame):
            raise UsageError(f"--table NAME=VARIABLE needs a DataFrame variable; got {spec!r}")
        tables[table] = value
    try:
        prog = magics.session.get(opts.name)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    if opts.path is not None:
        path = prog.save(opts.path, hostname=hostname, tables=tables)
    elif isinstance(prog, sessions.ReplayedProgram):
        print(f"{prog.name} is replayed from {prog.recording.path}: nothing new to save")
        return None
    else:
        path = sessions.autosave(prog, hostname=hostname, tables=tables)
        if path is None:
            print(f"{prog.name}: {sessions.recording_path(prog.name)} is kept; to refresh it, "
                  f"run the cell with --record (or {sessions.RECORD_ENV}=1), then save")
            return None
    print(f"{prog.name}: saved to {path}")
    return None
