"""Recordings: a tracing session saved as one self-contained, open-format file.

A recording (``.bpfrec``) is a zip archive holding

* ``manifest.json``: the format version, the program (source, compiler
  flags, attach list, pid, the backend that ran it), the probes that were
  attached, host facts (kernel release, the backend's versions: BCC's, or
  libbpf's and clang's; CPU count, hostname unless left out) and the
  capture's start and end;
* ``streams/<i>.parquet``: every event of each stream;
* ``maps/<i>/<j>.parquet``: snapshots of each map with their timestamps
  (periodic ones from a :class:`Recorder`, then the final one);
* ``tables/<i>.parquet``: extra frames saved with the program by name.

Column types are written to the manifest, so a replay gets the same DataFrame
dtypes back. Nothing in a recording is pickled or executable:
:func:`ebpf_magic.sessions.replay.load` reads it back without BCC or privileges.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import socket
import threading
import time
import weakref
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.errors import BPFError

FORMAT = "ebpf_magic.recording"  # the format's name inside every file: never changes
VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".bpfrec"

# pandas extension dtypes a recording may name, restored with ``astype``
EXTENSION_DTYPES = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                    "Float32", "Float64", "boolean", "string"}


@dataclass
class Snapshot:
    """The maps of a program at one moment (``time``: seconds since the epoch)."""

    time: float
    maps: dict[str, pd.DataFrame]


class Recorder:
    """Snapshot a running program's maps every ``every`` seconds, in a background thread.

    The thread ends by itself when the program stops; :meth:`stop` ends it
    earlier. ``snapshots`` holds what was taken; :meth:`frame` gives one map's
    snapshots as one DataFrame with a leading ``time`` column, the shape
    heatmaps over time are drawn from. :meth:`Program.save` includes them.
    """

    def __init__(self, prog: Any, every: float = 1.0, maps: Iterable[str] | None = None,
                 limit: int = 3600) -> None:
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        self.every = float(every)
        self.names = list(maps) if maps is not None else None
        self.limit = limit
        self.snapshots: list[Snapshot] = []
        self._prog = weakref.ref(prog)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Recorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ebpf_magic-recorder",
                                            daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def take(self) -> Snapshot | None:
        """Take one snapshot now; None when the program has stopped."""
        prog = self._prog()
        if prog is None:
            return None
        # a live program's lock keeps stop() from closing the maps while they are read
        with getattr(prog, "_lock", None) or contextlib.nullcontext():
            if not prog.running:
                return None
            try:
                frames = {name: prog.maps[name].df
                          for name in (self.names if self.names is not None else prog.maps)}
            except (OSError, BPFError, KeyError, ValueError):
                return None
        snap = Snapshot(time.time(), frames)
        self.snapshots.append(snap)
        del self.snapshots[:-self.limit]
        return snap

    def _run(self) -> None:
        while not self._halt.wait(self.every):
            if self.take() is None:
                return

    def history(self, name: str) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
        """``(time, frame)`` of each snapshot of map ``name``: what heatmaps over time take."""
        return [(pd.Timestamp(s.time, unit="s", tz="UTC"), s.maps[name])
                for s in self.snapshots if name in s.maps]

    def frame(self, name: str) -> pd.DataFrame:
        """Every snapshot of map ``name``, stacked, with a leading ``time`` column."""
        return stack([(s.time, s.maps[name]) for s in self.snapshots if name in s.maps])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Recorder every {self.every:g}s ({state}): {len(self.snapshots)} snapshot(s)>"


def stack(snapshots: Iterable[tuple[float, pd.DataFrame]]) -> pd.DataFrame:
    """Snapshots ``(time, frame)`` as one frame with a ``time`` column (datetime, UTC)."""
    parts = [df.assign(time=pd.Timestamp(t, unit="s", tz="UTC"))
             for t, df in snapshots]
    if not parts:
        return pd.DataFrame({"time": pd.Series([], dtype="datetime64[ns, UTC]")})
    out = pd.concat(parts, ignore_index=True)
    return out[["time"] + [c for c in out.columns if c != "time"]]


_recorders: weakref.WeakKeyDictionary[Any, Recorder] = weakref.WeakKeyDictionary()


def record_snapshots(prog: Any, every: float = 1.0, maps: Iterable[str] | None = None) -> Recorder:
    """Start snapshotting ``prog``'s maps every ``every`` seconds; ``prog.save`` keeps them.

    For a replayed program this gives a stopped recorder holding the
    recorded snapshots, so the same notebook code draws the same plots.
    """
    replayed = getattr(prog, "recorder", None)
    if replayed is not None:
        return replayed
    old = _recorders.get(prog)
    if old is not None:
        old.stop()
    rec = Recorder(prog, every, maps)
    _recorders[prog] = rec
    return rec.start()


def recorder_of(prog: Any) -> Recorder | None:
    """The recorder :func:`record_snapshots` started for ``prog``, if any."""
    return getattr(prog, "recorder", None) or _recorders.get(prog)


_marked: weakref.WeakSet[Any] = weakref.WeakSet()


def mark(prog: Any, every: float | None = 1.0) -> None:
    """Have :func:`autosave` write ``prog``'s recording; snapshot its maps every ``every`` s."""
    _marked.add(prog)
    if every:
        record_snapshots(prog, every)


def autosave(prog: Any, hostname: bool = True,
             tables: Mapping[str, pd.DataFrame] | None = None) -> Path | None:
    """Refresh ``recordings/NAME.bpfrec`` for a live program that records, else do nothing.

    A program records when :func:`mark` was called for it (``%%bpf NAME
    --record``) or when ``EBPF_MAGIC_RECORD=1`` (see :mod:`ebpf_magic.sessions.replay`).
    Replayed programs are never written back. ``EBPF_MAGIC_HOSTNAME=0`` leaves
    the hostname out, as ``hostname=False`` does.
    """
    from ebpf_magic.sessions import replay

    hostname = hostname and os.environ.get("EBPF_MAGIC_HOSTNAME", "1").strip() != "0"
    if getattr(prog, "recording", None) is not None:
        return None
    if prog not in _marked and not replay.recording_enabled():
        return None
    return save(prog, replay.recording_path(prog.name), hostname=hostname, tables=tables)


# -- host facts -------------------------------------------------------------------


def host_facts(hostname: bool = True, backend: str = "bcc") -> dict[str, Any]:
    """Where a capture ran: kernel, backend versions, CPUs, and (unless left out) the hostname.

    The versions are those ``backend`` ran on: BCC's, or libbpf's and clang's.
    """
    from ebpf_magic import backend as backends

    return {"system": platform.system(), "kernel": platform.release(),
            "machine": platform.machine(), **backends.host_facts(backend),
            "cpus": os.cpu_count(), "hostname": socket.gethostname() if hostname else None}


# -- columns ----------------------------------------------------------------------


def column_kind(series: pd.Series) -> str:
    """The type a recording gives one column: a numpy dtype, or str/bytes/list/json."""
    dt = series.dtype
    if isinstance(dt, np.dtype):
        if dt.kind in "biufMm":
            return dt.str if dt.kind in "Mm" else dt.name
        if dt.kind == "O":
            values = [v for v in series.tolist() if v is not None]
            if all(isinstance(v, str) for v in values):
                return "object:str"
            if all(isinstance(v, bytes) for v in values):
                return "bytes"
            if values and all(isinstance(v, (list, tuple)) for v in values):
                return "list"
            return "json"
        raise BPFError(f"column {series.name!r} has type {dt}, which a recording cannot hold")
    if str(dt) == "str" or str(dt) in EXTENSION_DTYPES:
        return str(dt)
    if isinstance(dt, pd.DatetimeTZDtype):
        return f"datetime64[{dt.unit}, UTC]" if str(dt.tz) == "UTC" else "json"
    if isinstance(dt, pd.CategoricalDtype):
        return "category"
    raise BPFError(f"column {series.name!r} has type {dt}, which a recording cannot hold")


def _arrow_column(series: pd.Series, kind: str):
    import pyarrow as pa

    if kind == "json":
        return pa.array([json.dumps(v, default=str) for v in series.tolist()], pa.string())
    if kind == "list":
        return pa.array([list(v) if v is not None else None for v in series.tolist()])
    if kind == "category":
        return pa.array(series.astype(str).tolist(), pa.string())
    if kind in ("str", "object:str", "string", "bytes"):
        return pa.array(series, pa.binary() if kind == "bytes" else pa.string(), from_pandas=True)
    if isinstance(series.dtype, np.dtype):
        return pa.array(series.to_numpy())  # NaN stays NaN, as in the frame
    return pa.Array.from_pandas(series)


def frame_to_parquet(df: pd.DataFrame) -> tuple[bytes, dict[str, Any]]:
    """A frame as Parquet bytes, and its description for the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index: list[str] = []
    if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        index = [str(n) if n is not None else f"level_{i}" for i, n in enumerate(df.index.names)]
        df = df.reset_index(names=index)
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        raise BPFError(f"duplicate column names cannot be recorded: {names}")
    kinds = [column_kind(df.iloc[:, i]) for i in range(df.shape[1])]
    arrays = [_arrow_column(df.iloc[:, i], k) for i, k in enumerate(kinds)]
    table = pa.Table.from_arrays(arrays, names=names) if names else pa.table({})
    table = table.replace_schema_metadata(None)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    desc = {"rows": len(df), "columns": [list(c) for c in zip(names, kinds, strict=True)],
            "index": index}
    return buf.getvalue(), desc


# -- saving -----------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))


def _probe_dict(probe: Any) -> dict[str, Any]:
    if isinstance(probe, Mapping):
        return dict(probe)
    return {"kind": probe.kind, "target": probe.target, "function": probe.function,
            "pid": probe.pid}


def _dtype_descr(dt: np.dtype | None) -> Any:
    return None if dt is None else _json_safe(dt.descr) if dt.names else dt.str


def _map_meta(m: Any, readable: bool, last: pd.DataFrame | None) -> dict[str, Any]:
    handle = getattr(m, "handle", None)
    if readable and callable(getattr(m, "info", None)):
        info = m.info()
    else:  # a stopped program's maps are gone: describe the last snapshot
        info = {"map": m.name, "kind": getattr(handle, "declared", "") or m.kind,
                "key": getattr(m, "key_type", "-"), "value": getattr(m, "value_type", "-"),
                "entries": None if last is None else len(last),
                "max_entries": getattr(m, "max_entries", None), "full": None}
    return _json_safe({
        "kind": m.kind, "declared": getattr(handle, "declared", "") or "",
        "key_type": getattr(m, "key_type", "-"), "value_type": getattr(m, "value_type", "-"),
        "max_entries": getattr(m, "max_entries", None),
        "key_dtype": _dtype_descr(getattr(handle, "key_dtype", None)),
        "value_dtype": _dtype_descr(getattr(handle, "value_dtype", None)),
        "info": info})


def save(prog: Any, path: str | os.PathLike, *, snapshots: Recorder | Iterable[Snapshot] |
         None = None, hostname: bool = True,
         tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
    """Write ``prog`` (live or replayed) to one recording file at ``path``.

    Args:
        prog: a :class:`~ebpf_magic.program.Program` (save it before stopping
            it: a stopped program's maps are gone) or a replayed program.
        path: the file to write (``.bpfrec`` by convention); folders are made.
        snapshots: periodic map snapshots to include; by default those of the
            :class:`Recorder` started for ``prog``, if any.
        hostname: False leaves the machine's name out.
        tables: extra DataFrames to keep, by name (a replay has them as
            ``prog.tables``): results only the live machine can compute, such
            as stacks symbolized against its running processes.

    Returns the path written. The final map snapshot is taken now.
    """
    path = Path(path)
    if snapshots is None:
        snapshots = recorder_of(prog)
    snaps = list(snapshots.snapshots if isinstance(snapshots, Recorder) else snapshots or [])
    replayed = getattr(prog, "recording", None)
    if prog.running:
        final = Snapshot(time.time(), {name: m.df for name, m in prog.maps.items()})
    elif replayed is not None:
        final = None  # the recorded final snapshot is the last of ``snaps``
    elif snaps:
        final = None
    else:
        raise BPFError(f"{prog.name} is stopped, so its maps can no longer be read",
                       "Save a program before stopping it, or record map snapshots with "
                       "ebpf_magic.sessions.recording.record_snapshots(prog) while it runs.")
    if final is not None:
        snaps.append(final)

    if replayed is not None:
        host = dict(replayed.host)
        if not hostname:
            host["hostname"] = None
    else:
        host = host_facts(hostname, getattr(prog, "backend", "bcc"))
    end = prog.stopped_at or time.time()
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "program": {"name": prog.name, "source": prog.source, "cflags": list(prog.cflags),
                    "pid": prog.pid, "probes": [_probe_dict(p) for p in prog.probes],
                    "attached": list(prog.attached),
                    "backend": getattr(prog, "backend", "bcc")},
        "host": host,
        "capture": {"start": prog.started_at, "end": end, "saved": time.time()},
        "streams": [], "maps": [],
    }
    members: dict[str, bytes] = {}
    for i, (name, stream) in enumerate(prog.events.items()):
        data, desc = frame_to_parquet(stream.df)
        member = f"streams/{i}.parquet"
        members[member] = data
        stats = getattr(stream, "stats", {}) or {}
        manifest["streams"].append({"name": name, "file": member, **desc,
                                    "stats": _json_safe(dict(stats))})
    for i, (name, m) in enumerate(prog.maps.items()):
        mine = [s for s in snaps if name in s.maps]
        meta = _map_meta(m, prog.running or replayed is not None,
                         mine[-1].maps[name] if mine else None)
        entry = {"name": name, **meta, "snapshots": []}
        for j, snap in enumerate(mine):
            data, desc = frame_to_parquet(snap.maps[name])
            member = f"maps/{i}/{j}.parquet"
            members[member] = data
            entry["snapshots"].append({"time": snap.time, "file": member, **desc})
        manifest["maps"].append(entry)
    all_tables = {**getattr(prog, "tables", {}), **dict(tables or {})}
    manifest["tables"] = []
    for i, (name, df) in enumerate(all_tables.items()):
        data, desc = frame_to_parquet(df)
        member = f"tables/{i}.parquet"
        members[member] = data
        manifest["tables"].append({"name": str(name), "file": member, **desc})

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(MANIFEST, json.dumps(_json_safe(manifest), indent=1),
                    compress_type=zipfile.ZIP_DEFLATED)
        for member, data in members.items():
            zf.writestr(member, data)  # already zstd-compressed by Parquet
    os.replace(tmp, path)
    return path
