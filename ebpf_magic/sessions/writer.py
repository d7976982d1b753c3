"""Writing a program, live or replayed, to one recording file (see :mod:`.format`).

:func:`write` reads the program only through the read API (:class:`~ebpf_magic.api.ProgramView`):
the manifest, then each stream's events, each map's snapshots and the extra tables
as Parquet members, then the zip, written beside the target and moved into place
(:mod:`ebpf_magic.internal.files`).
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import socket
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ebpf_magic import backend as backends
from ebpf_magic.api import MapView, ProgramView
from ebpf_magic.data import overhead
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import files
from ebpf_magic.sessions import format as fmt
from ebpf_magic.sessions.snapshots import Snapshot

if TYPE_CHECKING:
    import pyarrow as pa


def write(prog: ProgramView, path: str | os.PathLike, *, snapshots: Iterable[Snapshot] = (),
          hostname: bool = True, tables: Mapping[str, pd.DataFrame] | None = None,
          host: Mapping[str, Any] | None = None) -> Path:
    """Write ``prog`` and its map ``snapshots`` to one recording file at ``path`` (``~``
    is this user's home).

    A running program's maps are snapshotted once more now, as the final snapshot.
    ``host`` says where the program ran (a replayed program's recorded host);
    by default this machine, with its name unless ``hostname`` is False.
    ``tables`` are extra frames kept by name, after the program's own.
    Returns the path written; nothing is left at ``path`` if writing fails (a
    :class:`~ebpf_magic.errors.BPFError` where this process may not write there).
    """
    path = Path(path).expanduser()
    snaps = _with_final(prog, list(snapshots))
    manifest = _manifest(prog, host, hostname)
    manifest["globals"] = _globals(prog)
    manifest["overhead"] = _overhead(prog)
    manifest["warnings"] = messages(prog.warnings)
    manifest["notes"] = messages(prog.notes)
    members: dict[str, bytes] = {}
    manifest["streams"] = _streams(prog, members)
    manifest["maps"] = _maps(prog, snaps, members)
    manifest["tables"] = _tables({**prog.tables, **dict(tables or {})}, members)
    try:
        _zip(path, manifest, members)
    except PermissionError as e:
        raise BPFError(
            f"cannot save {prog.name} to {path}: {e.strerror} (this process runs as "
            f"{_user()})",
            f"Save where this user may write, e.g. %bpf save {prog.name} "
            f"~/{prog.name}{fmt.SUFFIX}. The eBPF kernel of ./run lab may write only its "
            "home: the notebooks' folders are root's, and their recordings are refreshed by "
            "notebooks/refresh_recordings.py run as root.") from None
    return path


def _user() -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"uid {os.geteuid()}"


def _with_final(prog: ProgramView, snaps: list[Snapshot]) -> list[Snapshot]:
    """``snaps`` and, for a running program, a snapshot of its maps now."""
    if prog.running:
        return snaps + [Snapshot(time.time(), prog.read_maps())]
    if not prog.readable and not snaps:
        raise BPFError(f"{prog.name} is stopped, so its maps can no longer be read",
                       "Save a program before stopping it, or record map snapshots with "
                       "ebpf_magic.sessions.record_snapshots(prog) while it runs.")
    return snaps  # a replayed program's last snapshot is its final one


def _globals(prog: ProgramView) -> list[dict[str, Any]]:
    """The rows of ``prog.globals.df`` now; none once a live program stopped (they went
    with it)."""
    if not prog.readable:
        return []
    return _json_safe(prog.globals.df.to_dict("records"))


def messages(items: Iterable[Any]) -> list[dict[str, str]]:
    """``prog.warnings`` or ``prog.notes`` as a recording keeps them: each one's text
    (``str()``) and, for a structured note, its ``kind``; the first
    :data:`.format.MAX_MESSAGES`, each cut to :data:`.format.MAX_MESSAGE_TEXT` characters."""
    out = []
    for item in list(items)[:fmt.MAX_MESSAGES]:
        entry = {"text": str(item)[:fmt.MAX_MESSAGE_TEXT]}
        kind = getattr(item, "kind", None)  # a plain str has none
        if isinstance(kind, str) and fmt.MESSAGE_KIND.fullmatch(kind):
            entry["kind"] = kind
        out.append(entry)
    return out


def _overhead(prog: ProgramView) -> dict[str, Any]:
    """``prog.overhead``'s rows (NaN as None), or why it has none."""
    df = prog.overhead
    if overhead.why(df):
        return {"unavailable": overhead.why(df)[:fmt.MAX_OVERHEAD_TEXT]}
    rows = []
    for rec in df.to_dict("records"):
        rows.append({k: None if isinstance(v, float) and math.isnan(v) else v
                     for k, v in rec.items()})
    return {"rows": _json_safe(rows)}


def _manifest(prog: ProgramView, host: Mapping[str, Any] | None, hostname: bool
              ) -> dict[str, Any]:
    if host is None:
        host = host_facts(hostname, prog.backend)
    elif not hostname:
        host = without_names(host)
    return {
        "format": fmt.FORMAT, "version": fmt.VERSION,
        "program": {"name": prog.name, "source": prog.source, "cflags": list(prog.cflags),
                    "pid": prog.pid, "probes": [_probe_dict(p) for p in prog.probes],
                    "attached": list(prog.attached), "backend": prog.backend},
        "host": dict(host),
        "capture": {"start": prog.started_at, "end": prog.stopped_at or time.time(),
                    "saved": time.time()},
    }


def _streams(prog: ProgramView, members: dict[str, bytes]) -> list[dict[str, Any]]:
    out = []
    for i, (name, stream) in enumerate(prog.events.items()):
        member = fmt.stream_member(i)
        df, stats = stream.capture()
        members[member], desc = frame_to_parquet(df)
        out.append({"name": name, "kind": stream.kind, "file": member, **desc,
                    "stats": _json_safe(dict(stats))})
    return out


def _maps(prog: ProgramView, snaps: list[Snapshot], members: dict[str, bytes]
          ) -> list[dict[str, Any]]:
    out = []
    for i, (name, m) in enumerate(prog.maps.items()):
        mine = [s for s in snaps if name in s.maps]
        entry = {"name": name, **_map_meta(m, prog.readable, mine[-1].maps[name] if mine
                                           else None), "snapshots": []}
        for j, snap in enumerate(mine):
            member = fmt.map_member(i, j)
            members[member], desc = frame_to_parquet(snap.maps[name])
            entry["snapshots"].append({"time": snap.time, "file": member, **desc})
        out.append(entry)
    return out


def _map_meta(m: MapView, readable: bool, last: pd.DataFrame | None) -> dict[str, Any]:
    """What a map is, and its listing row (from the last snapshot once it cannot be read)."""
    if readable:
        info, length = m.info(), len(m)
    else:
        info = {"map": m.name, "kind": m.declared or m.kind, "key": m.key_type,
                "value": m.value_type, "entries": None if last is None else len(last),
                "max_entries": m.max_entries, "full": None}
        length = 0 if last is None else len(last)
    return _json_safe({
        "kind": m.kind, "declared": m.declared, "key_type": m.key_type,
        "value_type": m.value_type, "max_entries": m.max_entries,
        "key_dtype": _dtype_descr(m.key_dtype), "value_dtype": _dtype_descr(m.value_dtype),
        "value_columns": list(m.value_columns), "length": length, "info": info})


def _tables(tables: Mapping[str, pd.DataFrame], members: dict[str, bytes]
            ) -> list[dict[str, Any]]:
    out = []
    for i, (name, df) in enumerate(tables.items()):
        member = fmt.table_member(i)
        members[member], desc = frame_to_parquet(df)
        out.append({"name": str(name), "file": member, **desc})
    return out


def _zip(path: Path, manifest: dict[str, Any], members: Mapping[str, bytes]) -> None:
    """The archive, written beside ``path`` and moved into place whole (never through a
    link planted at either name)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def archive(out: IO[bytes]) -> None:
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(fmt.MANIFEST, json.dumps(_json_safe(manifest), indent=1),
                        compress_type=zipfile.ZIP_DEFLATED)
            for member, data in members.items():
                zf.writestr(member, data)  # already zstd-compressed by Parquet

    files.write(path, archive)


# -- host facts -------------------------------------------------------------------


def host_facts(hostname: bool = True, backend: str = "bcc") -> dict[str, Any]:
    """Where a capture ran: kernel, backend versions, CPUs, and (unless left out) the hostname.

    The versions are those ``backend`` ran on: BCC's, or libbpf's and clang's.
    """
    return {"system": platform.system(), "kernel": platform.release(),
            "machine": platform.machine(), **backends.host_facts(backend),
            "cpus": os.cpu_count(), "hostname": socket.gethostname() if hostname else None}


def without_names(host: Mapping[str, Any]) -> dict[str, Any]:
    """``host`` with its hostname left out, and each cluster engine's host name."""
    out = {**host, "hostname": None}
    if isinstance(host.get("hosts"), list):
        out["hosts"] = [{**h, "host": None} for h in host["hosts"]]
    return out


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
    if str(dt) == "str" or str(dt) in fmt.EXTENSION_DTYPES:
        return str(dt)
    if isinstance(dt, pd.DatetimeTZDtype):
        return f"datetime64[{dt.unit}, UTC]" if str(dt.tz) == "UTC" else "json"
    if isinstance(dt, pd.CategoricalDtype):
        return "category"
    raise BPFError(f"column {series.name!r} has type {dt}, which a recording cannot hold")


def _arrow_column(series: pd.Series, kind: str) -> pa.Array:
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


# -- JSON -------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if isinstance(
        v, (np.generic, np.ndarray)) else str(v)))


def _probe_dict(probe: Any) -> dict[str, Any]:
    return {"kind": probe.kind, "target": probe.target, "function": probe.function,
            "pid": probe.pid}


def _dtype_descr(dt: np.dtype | None) -> Any:
    """A layout as JSON; gaps between fields are named ``__pad<i>`` so they keep their place."""
    if dt is None:
        return None
    return _json_safe(_named_gaps(dt.descr)) if dt.names else dt.str


def _named_gaps(descr: list[tuple]) -> list[tuple]:
    return [(name or f"__pad{i}", _named_gaps(t) if isinstance(t, list) else t, *shape)
            for i, (name, t, *shape) in enumerate(descr)]
