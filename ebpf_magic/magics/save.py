"""``%bpf save NAME [PATH] [--perfetto TRACE]``: write a program's recording, or its timeline."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from IPython.core.error import UsageError

from ebpf_magic import export, sessions
from ebpf_magic.api import ProgramView
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState

USAGE = ("%bpf save NAME [PATH] [--no-hostname] [--table NAME=VARIABLE ...] "
         "[--perfetto TRACE]")
HELP = ("Write program NAME's source, probes, events and map snapshots to one .bpfrec file. "
        "Without PATH, refresh recordings/NAME.bpfrec, only when recording (%%bpf NAME "
        "--record, or EBPF_MAGIC_RECORD=1); replayed programs are left as they are. NAME is "
        "the session's program, or a stopped one the notebook still holds under that name. "
        "--perfetto TRACE writes the events of its streams that have a time column as a "
        "Perfetto trace (ui.perfetto.dev), live or replayed; then only with PATH is a "
        "recording written too.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("name", metavar="NAME")
PARSER.add_argument("path", nargs="?", metavar="PATH")
PARSER.add_argument("--no-hostname", action="store_true")
PARSER.add_argument("--table", action="append", default=[], metavar="NAME=VARIABLE")
PARSER.add_argument("--perfetto", metavar="TRACE")

# shown once per session, the first time a save writes nothing and there is no recording
HOW_TO = "{name}: nothing saved: %bpf save {name} PATH writes a file, and recordings/" \
         "{name}.bpfrec is written when recording (%%bpf {name} --record, or {env}=1)"


def run(magics: MagicsState, args: str) -> None:
    opts = PARSER.parse(args)
    for spec in opts.table:
        if not spec.partition("=")[0]:
            raise UsageError(f"--table needs NAME=VARIABLE (or NAME, for a variable of that "
                             f"name); got {spec!r}")
    prog = program(magics, opts.name)
    if opts.perfetto is not None:
        trace, written = export.program_to_perfetto(prog, opts.perfetto)
        streams = ", ".join(f"{name} ({n:,} events)" for name, n in written.items())
        print(f"{prog.name}: {streams} written to {trace} (open it in ui.perfetto.dev)")
        if opts.path is None:
            return None
    if opts.path is None and not sessions.records(prog):
        _nothing_written(magics, prog)
        return None
    tables = _tables(magics.shell.user_ns, opts.table, prog)
    hostname = not opts.no_hostname
    if opts.path is not None:
        path = prog.save(opts.path, hostname=hostname, tables=tables)
    else:
        path = sessions.autosave(prog, hostname=hostname, tables=tables)
    print(f"{prog.name}: saved to {path}")
    return None


def program(magics: MagicsState, name: str) -> ProgramView:
    """The session's program ``name``; else a program the notebook holds under that name
    (one ``%bpf stop`` took out of the session, which can still be saved or read)."""
    try:
        return magics.session.get(name)
    except KeyError as e:
        held = magics.shell.user_ns.get(name)
        if isinstance(held, ProgramView):
            return held
        raise UsageError(str(e.args[0])) from None


def _tables(namespace: dict, specs: list[str], prog: ProgramView) -> dict[str, pd.DataFrame]:
    """The frames ``--table NAME=VARIABLE`` names; a UsageError that says nothing was saved."""
    tables = {}
    for spec in specs:
        table, _, var = spec.partition("=")
        var = var or table
        if var not in namespace:
            problem = f"there is no variable {var!r} (run the cell that makes it first)"
        elif not isinstance(namespace[var], pd.DataFrame):
            problem = f"{var} is a {type(namespace[var]).__name__}, not a DataFrame"
        else:
            tables[table] = namespace[var]
            continue
        keeps = f", and {prog.name} keeps running" if prog.running else ""
        raise UsageError(f"%bpf save {prog.name} --table {spec}: {problem}. Nothing was "
                         f"saved{keeps}: make the table, or leave --table out, and save again.")
    return tables


def _nothing_written(magics: MagicsState, prog: ProgramView) -> None:
    if isinstance(prog, sessions.ReplayedProgram):
        print(f"{prog.name} is replayed from {prog.recording.path}: nothing new to save")
        return
    path = sessions.recording_path(prog.name)
    if path.is_file():
        print(f"{prog.name}: {_shown(path)} is unchanged")
    elif "save how-to" in magics.warned:
        print(f"{prog.name}: nothing saved")
    else:
        magics.warned.add("save how-to")
        print(HOW_TO.format(name=prog.name, env=sessions.RECORD_ENV))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory (a notebook's folder) when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)
