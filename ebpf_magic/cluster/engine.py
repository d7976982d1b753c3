"""What runs on an engine: start, read and stop this host's copy of a cluster program.

The client calls these functions by name (``view.apply_async(engine.table, ...)``): each
engine imports this module, so only the call's name and plain arguments travel. Frames
come back as Arrow IPC bytes (numeric columns as raw buffers, strings as Arrow strings),
never as pickled DataFrames of Python objects. Programs are kept here by the key their
client gave (``NAME#TOKEN``), one per key; the engine's exit releases them with the process.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
from typing import Any

import pandas as pd
import pyarrow as pa

from ebpf_magic.api import ProgramView
from ebpf_magic.data import overhead as costs
from ebpf_magic.errors import BPFError
from ebpf_magic.program import Program

_programs: dict[str, ProgramView] = {}
_lock = threading.Lock()


def facts() -> dict[str, Any]:
    """This engine's host: name, kernel, machine, CPUs, process id."""
    return {"host": socket.gethostname(), "kernel": platform.release(),
            "machine": platform.machine(), "cpus": os.cpu_count() or 0, "pid": os.getpid()}


def encode(df: pd.DataFrame) -> bytes:
    """``df`` as one Arrow IPC stream (columns only; the index is dropped)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(data: bytes) -> pa.Table:
    """The columns :func:`encode` wrote, as an Arrow table (no copy of the buffers)."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def start(key: str, source: str, options: dict[str, Any]) -> dict[str, Any]:
    """Start ``source`` here under ``key`` (``NAME#TOKEN``), stopping one of that key first.

    ``options["frontend"]`` is ``"bpftrace"`` for a bpftrace program, else it is BPF C.
    Returns ``{"ok": True, ...}`` with what was attached and what the program holds,
    or ``{"ok": False, "error": class name, "message": ..., "hint": ...}``: an error on
    one host is data for the client, not an exception that hides the other hosts.
    """
    stop(key)
    options = dict(options)
    frontend = options.pop("frontend", "bpf")
    try:
        if frontend == "bpftrace":
            from ebpf_magic.bpftrace import BpftraceProgram

            prog = BpftraceProgram(source, name=key.partition("#")[0], **options)
        else:
            prog = Program(source, name=key.partition("#")[0], **options)
    except BPFError as e:
        return {"ok": False, "facts": facts(), "error": type(e).__name__,
                "message": e.message, "hint": e.hint}
    except Exception as e:  # noqa: BLE001 - any failure is this host's to report
        return {"ok": False, "facts": facts(), "error": type(e).__name__,
                "message": str(e), "hint": ""}
    with _lock:
        _programs[key] = prog
    return {"ok": True, "facts": facts(), "backend": prog.backend,
            "attached": list(prog.attached), "functions": prog.functions,
            "unattached": prog.unattached,
            "probes": [(p.kind, p.target, p.function, p.pid) for p in prog.probes],
            "warnings": list(prog.warnings), "notes": list(prog.notes),
            "prog_ids": prog.prog_ids(), "map_ids": prog.map_ids(),
            "maps": {n: _describe(m) for n, m in prog.maps.items()},
            "events": {n: s.kind for n, s in prog.events.items()}}


def _describe(m: Any) -> dict[str, Any]:
    return {"kind": m.kind, "declared": m.declared, "key_type": m.key_type,
            "value_type": m.value_type, "max_entries": m.max_entries, "percpu": m.percpu,
            "key_dtype": m.key_dtype, "value_dtype": m.value_dtype,
            "value_columns": m.value_columns}


def program(name: str) -> ProgramView:
    """The program running here under key ``name``, or the one program called ``name``.

    For per-host work from ``%%px``: ``engine.program("slow").maps["calls"]``.
    """
    with _lock:
        prog = _programs.get(name)
        named = {k: p for k, p in _programs.items() if p.name == name}
    if prog is None and len(named) == 1:
        [prog] = named.values()
    if prog is None and named:
        raise BPFError(f"{len(named)} programs are called {name!r} on {socket.gethostname()}",
                       f"Name one by its key: {', '.join(named)}.")
    if prog is None:
        raise BPFError(f"no program named {name!r} on {socket.gethostname()}",
                       "It was stopped, or this engine restarted: run the cell again.")
    return prog


def map_table(name: str, map_name: str) -> bytes:
    """Map ``map_name`` of program ``name`` as it is now (its ``.df``)."""
    return encode(program(name).maps[map_name].df)


def map_tables(name: str, maps: list[str]) -> dict[str, bytes]:
    """Maps ``maps`` of program ``name`` read together (see ``Program.read_maps``)."""
    return {n: encode(df) for n, df in program(name).read_maps(maps).items()}


def map_hist(name: str, map_name: str, kind: str | None, step: int) -> tuple[bytes, str]:
    """The map's histogram buckets and the kind they were read as."""
    hist = program(name).maps[map_name].hist(kind=kind, step=step)
    return encode(hist.df), hist.kind


def stream_table(name: str, stream: str, rows: int | None = None,
                 order: list[str] | None = None) -> bytes:
    """The ``rows`` newest events of ``stream`` (all with ``None``).

    Newest by the first column of ``order`` the events have, oldest first, else as they
    arrived (a perf buffer's CPUs deliver out of time order).
    """
    events = program(name).events[stream]
    if rows is not None and order:
        df = events.df
        column = next((c for c in order if c in df.columns), None)
        if column is not None:
            return encode(df.sort_values(column, kind="stable").tail(rows))
    return encode(events.tail(rows))


def status(name: str) -> dict[str, Any]:
    """Counters of program ``name``: events seen, each stream's stats, each map's info."""
    prog = program(name)
    stats = {}
    for n, s in prog.events.items():
        st = dict(s.stats)
        st.pop("lost_per_cpu", None)
        stats[n] = st
    return {"running": prog.running, "events_seen": prog.events_seen, "uptime": prog.uptime,
            "streams": stats,
            "maps": {n: m.info() for n, m in prog.maps.items()} if prog.running else {}}


def overhead(name: str) -> dict[str, Any]:
    """What program ``name`` costs here: ``{"table": Arrow bytes}`` of its ``overhead``, or
    ``{"unmeasured": why}`` where this host's kernel does not count it."""
    df = program(name).overhead
    if costs.why(df):
        return {"unmeasured": costs.why(df)}
    return {"table": encode(df)}


def stop(key: str) -> bool:
    """Stop the program of ``key`` here; False when there was none."""
    with _lock:
        prog = _programs.pop(key, None)
    if prog is None:
        return False
    prog.stop()
    return True



def programs() -> dict[str, str]:
    """``{key: name}`` of the programs kept here."""
    with _lock:
        return {k: p.name for k, p in _programs.items()}


def stop_all() -> list[str]:
    """Stop every program kept here; their keys.

    What a notebook process left behind when it was killed before it could stop its
    programs: ``client[:].apply_sync(engine.stop_all)``.
    """
    keys = list(programs())
    for key in keys:
        stop(key)
    return keys
