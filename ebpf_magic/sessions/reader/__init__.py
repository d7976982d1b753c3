"""Reading a recording file, which is untrusted input, into plain frames and facts.

Every cost is bounded before it is paid, and the bound is the file's own size
(see docs/recordings.md) except for what the frames decode to, which
``max_bytes`` bounds. The modules, each one concern:

* :mod:`.archive`: the zip, opened once; its directory checked from its end
  records, every member's name, compression and size checked before any is
  read, each member read once;
* :mod:`.manifest`: the manifest decoded within bounds, every field checked;
* :mod:`.parquet`: a Parquet member's footer and page headers read (with
  :mod:`.thrift`) and checked, what it decodes to bounded, then measured row
  group by row group;
* :mod:`.columns`: Arrow columns as the pandas values the manifest names;
* :mod:`.budget`: what the recording may still cost.

Anything wrong is a :class:`~ebpf_magic.errors.ReplayError` saying what. The
limits are in :mod:`ebpf_magic.sessions.format`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.errors import ReplayError
from ebpf_magic.sessions import format as fmt
from ebpf_magic.sessions.reader import columns, manifest, parquet
from ebpf_magic.sessions.reader.archive import Archive
from ebpf_magic.sessions.reader.budget import Budget
from ebpf_magic.sessions.reader.manifest import need, need_time


@dataclass
class RecordedStream:
    """One stream as recorded: its events and counters."""

    name: str
    kind: str  # the live stream's kind, or "" where the recording does not say
    df: pd.DataFrame
    stats: dict[str, Any]


@dataclass
class RecordedMap:
    """One map as recorded: what it is, its listing row, and its snapshots, oldest first."""

    name: str
    kind: str
    declared: str
    key_type: str
    value_type: str
    max_entries: int | None
    key_dtype: np.dtype | None
    value_dtype: np.dtype | None
    value_columns: list[str] | None  # None where the recording does not say
    length: int | None  # ``len()`` of the live map; None where the recording does not say
    info: dict[str, Any]
    snapshots: list[tuple[float, pd.DataFrame]]


@dataclass
class Recording:
    """Everything a recording file holds, checked."""

    path: Path
    version: int
    program: dict[str, Any]  # name, source, cflags, pid, attached, backend, probes
    host: dict[str, Any]
    start: float | None
    end: float | None
    saved: float | None
    streams: list[RecordedStream] = field(default_factory=list)
    maps: list[RecordedMap] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    globals: list[dict[str, Any]] = field(default_factory=list)  # rows of ``globals.df``
    # ``{"rows": [...]}`` of ``overhead``, ``{"unavailable": why}``, or None (not recorded)
    overhead: dict[str, Any] | None = None
    # ``{"text": ..., "kind": ... or None}`` of each warning and note (none if not recorded)
    warnings: list[dict[str, str | None]] = field(default_factory=list)
    notes: list[dict[str, str | None]] = field(default_factory=list)


def read(path: str | os.PathLike, max_bytes: int = fmt.MAX_BYTES) -> Recording:
    """Read and check the recording at ``path``.

    Raises :class:`~ebpf_magic.errors.ReplayError` for anything that is not a
    complete, well-formed recording, including files whose members unpack to
    more than ``max_bytes`` or whose frames decode to more (see
    :data:`.format.OBJECT_BYTES` for what a Python object counts).
    """
    archive = Archive(Path(path), Budget(unpacked=max_bytes, decoded=max_bytes))
    try:
        return _read(archive)
    finally:
        archive.close()


def _read(archive: Archive) -> Recording:
    m = manifest.decode(archive.read(fmt.MANIFEST, fmt.MAX_MANIFEST), str(archive.path))
    version = need(m, "version", int, "manifest")
    if version > fmt.VERSION or version < 1:
        raise ReplayError(f"{archive.path} is a version {version} recording; this ebpf_magic "
                          f"reads versions up to {fmt.VERSION}",
                          "Upgrade ebpf_magic to replay it.")
    program = manifest.program(need(m, "program", dict, "manifest"))
    host = manifest.host(need(m, "host", dict, "manifest"))
    capture = need(m, "capture", dict, "manifest")
    streams = need(m, "streams", list, "manifest")
    maps = need(m, "maps", list, "manifest")
    tables = need(m, "tables", list, "manifest") if "tables" in m else []
    _frames_named_once(streams, maps, tables)
    out = Recording(archive.path, version, program, host,
                    need_time(capture, "start", "capture"), need_time(capture, "end", "capture"),
                    need_time(capture, "saved", "capture"))
    for i, s in enumerate(streams):
        out.streams.append(_stream(archive, s, f"streams[{i}]"))
    for i, desc in enumerate(maps):
        out.maps.append(_map(archive, desc, f"maps[{i}]"))
    for i, t in enumerate(tables):
        out.tables[need(t, "name", str, f"tables[{i}]")] = _frame(archive, t, f"tables[{i}]")
    if "globals" in m:  # recordings written before globals were kept have none
        out.globals = manifest.global_rows(need(m, "globals", list, "manifest"))
    if "overhead" in m:  # recordings written before overhead was kept have none
        out.overhead = manifest.overhead(need(m, "overhead", dict, "manifest"))
    # recordings written before warnings and notes were kept have none
    out.warnings = manifest.messages(need(m, "warnings", list, "manifest"), "warnings") \
        if "warnings" in m else []
    out.notes = manifest.messages(need(m, "notes", list, "manifest"), "notes") \
        if "notes" in m else []
    return out


def _frames_named_once(streams: list[Any], maps: list[Any], tables: list[Any]) -> None:
    """Each frame names a member of its own (so there are at most as many as members), checked
    before any is read."""
    frames = [(s, f"streams[{i}]") for i, s in enumerate(streams)]
    frames += [(t, f"tables[{i}]") for i, t in enumerate(tables)]
    for i, m in enumerate(maps):
        frames += [(snap, f"maps[{i}].snapshots[{j}]")
                   for j, snap in enumerate(need(m, "snapshots", list, f"maps[{i}]"))]
    if len(frames) > fmt.MAX_MEMBERS:
        raise ReplayError(f"malformed recording: it describes {len(frames):,} frames, more "
                          f"than a recording holds ({fmt.MAX_MEMBERS:,})")
    named: set[str] = set()
    for desc, where in frames:
        member = need(desc, "file", str, where)
        if member in named:
            raise ReplayError(f"malformed recording: {where} names {member[:40]}, which "
                              "another frame names too")
        named.add(member)


def _stream(archive: Archive, s: Any, where: str) -> RecordedStream:
    name = need(s, "name", str, where)
    kind = need(s, "kind", str, where) if "kind" in s else ""
    stats = manifest.stream_stats(need(s, "stats", dict, where), f"{where}.stats")
    return RecordedStream(name, kind, _frame(archive, s, where), stats)


def _map(archive: Archive, m: Any, where: str) -> RecordedMap:
    name = need(m, "name", str, where)
    value_columns = need(m, "value_columns", list, where) if "value_columns" in m else None
    out = RecordedMap(
        name, need(m, "kind", str, where), need(m, "declared", str, where),
        need(m, "key_type", str, where), need(m, "value_type", str, where),
        need(m, "max_entries", int, where, optional=True),
        manifest.layout(m.get("key_dtype"), f"{where}.key_dtype"),
        manifest.layout(m.get("value_dtype"), f"{where}.value_dtype"),
        None if value_columns is None else manifest.str_list(value_columns,
                                                             f"{where}.value_columns"),
        manifest.length(m, where),
        manifest.map_info(need(m, "info", dict, where), f"{where}.info"), [])
    for j, snap in enumerate(need(m, "snapshots", list, where)):
        t = need_time(snap, "time", f"{where}.snapshots[{j}]")
        if t is None:
            raise ReplayError(f"malformed recording: {where}.snapshots[{j}] has no time")
        out.snapshots.append((t, _frame(archive, snap, f"{where}.snapshots[{j}]")))
    return out


def _frame(archive: Archive, desc: Any, where: str) -> pd.DataFrame:
    spec = manifest.frame_spec(desc, where)
    data = archive.read(spec.member)
    where = f"{archive.path}:{spec.member}"
    try:
        table = parquet.read(data, spec.columns, spec.rows, archive.budget, where)
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a crafted or damaged Parquet file
        raise ReplayError(f"{where} is not a readable Parquet file ({e})") from None
    if table.num_rows != spec.rows:
        raise ReplayError(f"{where} does not match the manifest (row count)")
    try:
        values = {name: columns.values(table.column(i).combine_chunks(), kind, where)
                  for i, (name, kind) in enumerate(spec.columns)}
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - a value the declared type cannot hold
        raise ReplayError(f"{where} holds values its declared types cannot hold ({e})") \
            from None
    df = pd.DataFrame(values, index=pd.RangeIndex(spec.rows)) if values else \
        pd.DataFrame(index=pd.RangeIndex(spec.rows))
    if spec.index:
        df = df.set_index(spec.index)
        if spec.index[0].startswith("level_") and len(spec.index) == 1:
            df.index.name = None
    return df
