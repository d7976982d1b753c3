"""``%bpf save NAME [PATH]``: write a program's recording."""

from __future__ import annotations

import shlex

import pandas as pd
from IPython.core.error import UsageError

from .. import recording, replay

USAGE = "%bpf save NAME [PATH] [--no-hostname] [--table NAME=VARIABLE ...]"
HELP = ("Write program NAME's source, probes, events and map snapshots to one .bpfrec file. "
        "Without PATH, refresh recordings/NAME.bpfrec, only when recording (%%bpf NAME "
        "--record, or EBPF_MAGIC_RECORD=1); replayed programs are left as they are.")


def run(magics, args: str):
    words = shlex.split(args)
    hostname = "--no-hostname" not in words
    words = [w for w in words if w != "--no-hostname"]
    tables: dict[str, pd.DataFrame] = {}
    while "--table" in words:
        i = words.index("--table")
        spec = words[i + 1] if i + 1 < len(words) else ""
        table, _, var = spec.partition("=")
        value = magics.shell.user_ns.get(var or table)
        if not table or not isinstance(value, pd.DataFrame):
            raise UsageError(f"--table NAME=VARIABLE needs a DataFrame variable; got {spec!r}")
        tables[table] = value
        del words[i:i + 2]
    if len(words) not in (1, 2) or words[0].startswith("-"):
        raise UsageError(f"usage: {USAGE}")
    try:
        prog = magics.session.get(words[0])
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    if len(words) == 2:
        path = recording.save(prog, words[1], hostname=hostname, tables=tables)
    elif getattr(prog, "recording", None) is not None:
        print(f"{prog.name} is replayed from {prog.recording.path}: nothing new to save")
        return None
    else:
        path = recording.autosave(prog, hostname=hostname, tables=tables)
        if path is None:
            print(f"{prog.name}: not recording, {replay.recording_path(prog.name)} left as it "
                  f"is (run the cell with --record or set {replay.RECORD_ENV}=1 to refresh it)")
            return None
    print(f"{prog.name}: saved to {path}")
    return None
