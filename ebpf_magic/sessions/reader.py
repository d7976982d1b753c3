"""Reading a recording file, which is untrusted input, into plain frames and facts.

The reader checks the zip's member count from its end records before parsing its
directory, checks sizes before decompressing, accepts only the member names the
format uses, validates every manifest field's type and range, and checks every
Parquet file against the manifest. What a Parquet member decodes to is bounded
from its footer and page headers before decoding, then measured row group by
row group (``read(max_bytes=)``). Anything else is a
:class:`~ebpf_magic.errors.ReplayError` saying what is wrong. The limits are in
:mod:`ebpf_magic.sessions.format`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.backend import BACKENDS, choose_backend
from ebpf_magic.errors import ReplayError
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import format as fmt


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


def read(path: str | os.PathLike, max_bytes: int = fmt.MAX_BYTES) -> Recording:
    """Read and check the recording at ``path``.

    Raises :class:`~ebpf_magic.errors.ReplayError` for anything that is not a
    complete, well-formed recording, including files whose members unpack to
    more than ``max_bytes`` or whose frames decode to more (see
    :data:`.format.OBJECT_BYTES` for what a Python object counts).
    """
    archive = _Archive(Path(path), max_bytes)
    try:
        return _read(archive)
    finally:
        archive.close()


def _read(archive: _Archive) -> Recording:
    manifest = _manifest(archive)
    version = _need(manifest, "version", int, "manifest")
    if version > fmt.VERSION or version < 1:
        raise ReplayError(f"{archive.path} is a version {version} recording; this ebpf_magic "
                          f"reads versions up to {fmt.VERSION}",
                          "Upgrade ebpf_magic to replay it.")
    program = _program(_need(manifest, "program", dict, "manifest"))
    host = _host(_need(manifest, "host", dict, "manifest"))
    capture = _need(manifest, "capture", dict, "manifest")
    out = Recording(archive.path, version, program, host,
                    _need_time(capture, "start", "capture"), _need_time(capture, "end", "capture"),
                    _need_time(capture, "saved", "capture"))
    for i, s in enumerate(_need(manifest, "streams", list, "manifest")):
        out.streams.append(_stream(archive, s, f"streams[{i}]"))
    for i, m in enumerate(_need(manifest, "maps", list, "manifest")):
        out.maps.append(_map(archive, m, f"maps[{i}]"))
    for i, t in enumerate(_need(manifest, "tables", list, "manifest") if "tables" in manifest
                          else []):
        out.tables[_need(t, "name", str, f"tables[{i}]")] = _frame(archive, t, f"tables[{i}]")
    if "globals" in manifest:  # recordings written before globals were kept have none
        out.globals = _globals(_need(manifest, "globals", list, "manifest"))
    if "overhead" in manifest:  # recordings written before overhead was kept have none
        out.overhead = _overhead(_need(manifest, "overhead", dict, "manifest"))
    return out


def _manifest(archive: _Archive) -> dict[str, Any]:
    raw = archive.read(fmt.MANIFEST, fmt.MAX_MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReplayError(f"{archive.path} has a corrupted manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        raise ReplayError(f"{archive.path} is not an ebpf_magic recording")
    return manifest


def _program(prog: dict[str, Any]) -> dict[str, Any]:
    program = {
        "name": _need(prog, "name", str, "program"),
        "source": _need(prog, "source", str, "program"),
        "cflags": _str_list(_need(prog, "cflags", list, "program"), "program.cflags"),
        "pid": _need(prog, "pid", int, "program", optional=True),
        "attached": _str_list(_need(prog, "attached", list, "program"), "program.attached"),
        "backend": _backend(prog),
        "probes": [],
    }
    for p in _need(prog, "probes", list, "program"):
        program["probes"].append(Probe(
            _need(p, "kind", str, "probe"), _need(p, "target", str, "probe"),
            _need(p, "function", str, "probe"), _need(p, "pid", int, "probe", optional=True)))
    return program


def _host(host: dict[str, Any]) -> dict[str, Any]:
    """Where it ran: the fields of :data:`.format.HOST` (the backend's versions only where
    written), and a cluster program's ``hosts``; any other field is refused."""
    unknown = sorted(str(k)[:40] for k in set(host) - set(fmt.HOST) - {"hosts"})
    if unknown:
        raise ReplayError(f"malformed recording: host has unknown fields {unknown[:5]}")
    for key, types in fmt.HOST.items():
        if key in host or key not in ("bcc", "libbpf", "clang"):
            _need(host, key, types, "host", optional=True)
    if "hosts" in host:
        _hosts(_need(host, "hosts", list, "host"))
    return host


def _hosts(rows: list[Any]) -> None:
    """A cluster program's engines: at most :data:`.format.MAX_HOSTS` rows of exactly the
    fields of :data:`.format.HOST_ROW`, each engine once."""
    if len(rows) > fmt.MAX_HOSTS:
        raise ReplayError(f"malformed recording: host.hosts lists {len(rows):,} engines, more "
                          f"than a recording holds ({fmt.MAX_HOSTS:,})")
    seen: set[int] = set()
    for i, row in enumerate(rows):
        where = f"host.hosts[{i}]"
        if not isinstance(row, dict) or set(row) != set(fmt.HOST_ROW):
            raise ReplayError(f"malformed recording: {where} is not an object of exactly "
                              f"{', '.join(fmt.HOST_ROW)}")
        for key, types in fmt.HOST_ROW.items():
            value = _need(row, key, types, where, optional=key not in ("engine", "state",
                                                                        "reason"))
            limit = fmt.MAX_HOST_REASON if key == "reason" else fmt.MAX_HOST_FACT
            if isinstance(value, str) and len(value) > limit:
                raise ReplayError(f"malformed recording: {where}.{key} is longer than "
                                  f"{limit} characters")
            if isinstance(value, int) and value < 0:
                raise ReplayError(f"malformed recording: {where}.{key} is negative")
        if row["engine"] in seen:
            raise ReplayError(f"malformed recording: {where}.engine {row['engine']} is listed "
                              "twice")
        seen.add(row["engine"])
        if row["state"] not in fmt.HOST_STATES:
            raise ReplayError(f"malformed recording: {where}.state is {row['state'][:40]!r}, "
                              f"not one of {', '.join(sorted(fmt.HOST_STATES))}")


def _stream(archive: _Archive, s: Any, where: str) -> RecordedStream:
    name = _need(s, "name", str, where)
    kind = _need(s, "kind", str, where) if "kind" in s else ""
    stats = _stream_stats(_need(s, "stats", dict, where), f"{where}.stats")
    return RecordedStream(name, kind, _frame(archive, s, where), stats)


def _map(archive: _Archive, m: Any, where: str) -> RecordedMap:
    name = _need(m, "name", str, where)
    columns = _need(m, "value_columns", list, where) if "value_columns" in m else None
    out = RecordedMap(
        name, _need(m, "kind", str, where), _need(m, "declared", str, where),
        _need(m, "key_type", str, where), _need(m, "value_type", str, where),
        _need(m, "max_entries", int, where, optional=True),
        _safe_dtype(m.get("key_dtype"), f"{where}.key_dtype"),
        _safe_dtype(m.get("value_dtype"), f"{where}.value_dtype"),
        None if columns is None else _str_list(columns, f"{where}.value_columns"),
        _length(m, where),
        _map_info(_need(m, "info", dict, where), f"{where}.info"), [])
    for j, snap in enumerate(_need(m, "snapshots", list, where)):
        t = _need_time(snap, "time", f"{where}.snapshots[{j}]")
        if t is None:
            raise ReplayError(f"malformed recording: {where}.snapshots[{j}] has no time")
        out.snapshots.append((t, _frame(archive, snap, f"{where}.snapshots[{j}]")))
    return out


# -- checking the manifest's fields ---------------------------------------------------


def _globals(rows: list[Any]) -> list[dict[str, Any]]:
    """The recorded global variables, checked: at most :data:`.format.MAX_GLOBALS` rows of
    exactly name, section, c_type and value, each name once."""
    if len(rows) > fmt.MAX_GLOBALS:
        raise ReplayError(f"malformed recording: globals lists {len(rows):,} variables, more "
                          f"than a recording holds ({fmt.MAX_GLOBALS:,})")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"globals[{i}]"
        if not isinstance(row, dict) or set(row) != {"name", "section", "c_type", "value"}:
            raise ReplayError(f"malformed recording: {where} is not an object of exactly "
                              "name, section, c_type and value")
        name = _need(row, "name", str, where)
        if not fmt.GLOBAL_NAME.fullmatch(name):
            raise ReplayError(f"malformed recording: {where}.name {name[:40]!r} is not a C name")
        if name in seen:
            raise ReplayError(f"malformed recording: {where}.name {name!r} is listed twice")
        seen.add(name)
        section = _need(row, "section", str, where)
        if not fmt.GLOBAL_SECTION.fullmatch(section):
            raise ReplayError(f"malformed recording: {where}.section {section[:40]!r} is not a "
                              "data section (.rodata, .data, .bss or one named .data.NAME ...)")
        c_type = _need(row, "c_type", str, where)
        if len(c_type) > fmt.MAX_GLOBAL_TYPE:
            raise ReplayError(f"malformed recording: {where}.c_type is longer than "
                              f"{fmt.MAX_GLOBAL_TYPE} characters")
        out.append({"name": name, "section": section, "c_type": c_type,
                    "value": _global_value(row["value"], f"{where}.value", 0)})
    return out


def _global_value(value: Any, where: str, depth: int) -> Any:
    """A recorded value as the live program gave it: numbers, strings, lists, objects."""
    if depth > fmt.MAX_GLOBAL_DEPTH:
        raise ReplayError(f"malformed recording: {where} nests more than "
                          f"{fmt.MAX_GLOBAL_DEPTH} deep")
    if isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        if not -fmt.MAX_GLOBAL_INT <= value < fmt.MAX_GLOBAL_INT:
            raise ReplayError(f"malformed recording: {where} is an integer wider than 128 bits")
        return value
    if isinstance(value, list):
        return [_global_value(v, f"{where}[{j}]", depth + 1) for j, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _global_value(v, f"{where}.{k[:40]}", depth + 1) for k, v in value.items()}
    raise ReplayError(f"malformed recording: {where} has the wrong type "
                      f"({type(value).__name__})")



def _overhead(recorded: dict[str, Any]) -> dict[str, Any]:
    """The recorded overhead: ``{"unavailable": why}``, or at most
    :data:`.format.MAX_OVERHEAD_ROWS` rows of exactly :data:`.format.OVERHEAD_ROW`'s fields
    and one of :data:`.format.OVERHEAD_IDS`, all of one kind; numbers not negative."""
    if set(recorded) == {"unavailable"}:
        why = _need(recorded, "unavailable", str, "overhead")
        if len(why) > fmt.MAX_OVERHEAD_TEXT:
            raise ReplayError("malformed recording: overhead.unavailable is longer than "
                              f"{fmt.MAX_OVERHEAD_TEXT} characters")
        return {"unavailable": why}
    if set(recorded) != {"rows"}:
        raise ReplayError("malformed recording: overhead is not an object of rows, or of why "
                          "it is unavailable")
    rows = _need(recorded, "rows", list, "overhead")
    if len(rows) > fmt.MAX_OVERHEAD_ROWS:
        raise ReplayError(f"malformed recording: overhead lists {len(rows):,} functions, more "
                          f"than a recording holds ({fmt.MAX_OVERHEAD_ROWS:,})")
    shapes = [{*fmt.OVERHEAD_ROW, key} for key in fmt.OVERHEAD_IDS]
    out = []
    for i, row in enumerate(rows):
        where = f"overhead.rows[{i}]"
        if not isinstance(row, dict) or set(row) not in shapes or (
                out and set(row) != set(out[0])):
            raise ReplayError(f"malformed recording: {where} is not an object of exactly "
                              f"{', '.join(fmt.OVERHEAD_ROW)} and one of "
                              f"{' or '.join(fmt.OVERHEAD_IDS)}, as the rows before it")
        checked: dict[str, Any] = {}
        for key in row:
            kind = fmt.OVERHEAD_ROW.get(key, int)
            if kind is float:
                value = _need(row, key, (int, float), where, optional=True)
                value = math.nan if value is None else float(value)
                if math.isinf(value):
                    raise ReplayError(f"malformed recording: {where}.{key} is infinite")
            else:
                value = _need(row, key, kind, where)
            if kind is str and len(value) > fmt.MAX_OVERHEAD_TEXT:
                raise ReplayError(f"malformed recording: {where}.{key} is longer than "
                                  f"{fmt.MAX_OVERHEAD_TEXT} characters")
            if kind is not str and value < 0:
                raise ReplayError(f"malformed recording: {where}.{key} is negative")
            if kind is int and value >= 1 << 63:
                raise ReplayError(f"malformed recording: {where}.{key} is wider than 63 bits")
            checked[key] = value
        out.append(checked)
    return {"rows": out}


def _length(m: dict[str, Any], where: str) -> int | None:
    if "length" not in m:
        return None
    length = _need(m, "length", int, where)
    if length < 0:
        raise ReplayError(f"malformed recording: {where}.length is negative")
    return length


def _map_info(info: dict[str, Any], where: str) -> dict[str, Any]:
    """A recorded map listing row, checked field by field (widgets show it as HTML).

    Fields other than these are refused.
    """
    unknown = sorted(str(k) for k in set(info) - set(fmt.MAP_INFO))
    if unknown:
        raise ReplayError(f"malformed recording: {where} has unknown fields {unknown[:5]}")
    return {key: _need(info, key, types, where, optional=True)
            for key, types in fmt.MAP_INFO.items() if key in info}


def _need(obj: Any, key: str, types: type | tuple[type, ...], where: str,
          optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise ReplayError(f"malformed recording: {where} is not an object")
    if key not in obj:
        raise ReplayError(f"malformed recording: {where} has no {key!r}")
    value = obj[key]
    if optional and value is None:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ReplayError(f"malformed recording: {where}.{key} has the wrong type (bool)")
    if not isinstance(value, types):
        raise ReplayError(f"malformed recording: {where}.{key} has the wrong type "
                          f"({type(value).__name__})")
    return value


def _stream_stats(stats: dict, where: str) -> dict[str, Any]:
    """A stream's counters as the live stream has them: ints, ``lost_per_cpu`` keyed by CPU."""
    out: dict[str, Any] = {}
    for key in stats:
        if key == "lost_per_cpu":
            per_cpu = _need(stats, key, dict, where)
            if not all(isinstance(c, str) and c.isdigit() and len(c) < 8 for c in per_cpu):
                raise ReplayError(f"malformed recording: {where}.lost_per_cpu has a key "
                                  "that is not a CPU number")
            out[key] = {int(c): _need(per_cpu, c, int, f"{where}.lost_per_cpu")
                        for c in per_cpu}
        else:
            out[str(key)] = _need(stats, key, int, where)
    return out


def _need_time(obj: Any, key: str, where: str) -> float | None:
    value = _need(obj, key, (int, float), where, optional=True)
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ReplayError(f"malformed recording: {where}.{key} is not a finite time")
    if not fmt.MIN_TIME <= value <= fmt.MAX_TIME:
        shown = f"{value:.6g}" if isinstance(value, float) else f"{str(value)[:20]}"
        raise ReplayError(f"malformed recording: {where}.{key} is out of range ({shown} s "
                          f"since 1970, not between {fmt.MIN_TIME:.0f} and {fmt.MAX_TIME:.0f})")
    return float(value)


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReplayError(f"malformed recording: {where} is not a list of strings")
    return list(value)


def _safe_dtype(descr: Any, where: str, depth: int = 0) -> np.dtype | None:
    """A numpy dtype from its JSON description, allowing plain C data only."""
    if descr is None and depth == 0:
        return None
    try:
        return np.dtype(_dtype_spec(descr, where, depth))
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's own rejection of a crafted layout
        raise ReplayError(f"malformed recording: {where} is not a valid layout ({e})") from None


def _dtype_spec(descr: Any, where: str, depth: int) -> Any:
    if depth > 16:
        raise ReplayError(f"malformed recording: {where} nests too deeply")
    if isinstance(descr, str):
        if not fmt.SCALAR_DTYPE.fullmatch(descr):
            raise ReplayError(f"malformed recording: {where} names an unsupported type {descr!r}")
        return descr
    if not isinstance(descr, list) or not descr or len(descr) > 4096:
        raise ReplayError(f"malformed recording: {where} is not a type description")
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3) or not isinstance(item[0], str):
            raise ReplayError(f"malformed recording: {where} has a malformed field")
        spec: tuple = (item[0], _dtype_spec(item[1], where, depth + 1))
        if len(item) == 3:
            shape = item[2]
            if not isinstance(shape, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 20
                    for n in shape) or len(shape) > 4:
                raise ReplayError(f"malformed recording: {where} has a malformed array shape")
            spec += (tuple(shape),)
        fields.append(spec)
    return fields


_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def _directory_extent(path: Path) -> tuple[int, int] | None:
    """``(members, bytes)`` of a zip's central directory, read from its end records alone.

    Finds the end-of-central-directory record (and its ZIP64 form) the way
    :mod:`zipfile` does, so the limits hold for the directory zipfile will read;
    None when there is no such record (zipfile then rejects the file itself).
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < _EOCD.size:
            return None
        start = max(size - (1 << 16) - _EOCD.size, 0)
        f.seek(start)
        tail = f.read()
        at = len(tail) - _EOCD.size
        if not (tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < _EOCD.size:
                return None
        record = _EOCD.unpack_from(tail, at)
        members, directory = record[4], record[5]
        where = start + at  # the record's offset in the file
        if where < _EOCD64_LOCATOR.size + _EOCD64.size:
            return members, directory
        f.seek(where - _EOCD64_LOCATOR.size)
        locator = f.read(_EOCD64_LOCATOR.size)
        if locator[:4] != b"PK\x06\x07":
            return members, directory
        f.seek(where - _EOCD64_LOCATOR.size - _EOCD64.size)
        record64 = _EOCD64.unpack(f.read(_EOCD64.size))
        if record64[0] != b"PK\x06\x06":
            return members, directory
        return record64[7], record64[8]


class _Archive:
    """A recording's zip, read within limits."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            extent = _directory_extent(path)
        except OSError as e:
            raise ReplayError(f"cannot read {path} ({e})") from None
        if extent is not None:
            members, directory = extent
            if members > fmt.MAX_MEMBERS or directory > fmt.MAX_MEMBERS * fmt.MAX_DIRECTORY_ENTRY:
                raise ReplayError(f"{path} lists {members:,} members in {directory:,} bytes, "
                                  f"more than a recording may hold ({fmt.MAX_MEMBERS:,} members in "
                                  f"{fmt.MAX_MEMBERS * fmt.MAX_DIRECTORY_ENTRY:,} bytes)")
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                RuntimeError, OverflowError, KeyError, IndexError) as e:
            raise ReplayError(f"{path} is not a recording (not a readable zip file: {e})",
                              "Recordings are .bpfrec files written by prog.save() or "
                              "%bpf save.") from None
        if len(infos) > fmt.MAX_MEMBERS:
            raise ReplayError(f"{path} has {len(infos)} members, more than a recording may "
                              f"hold ({fmt.MAX_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise ReplayError(f"{path} is a crafted file: it repeats member names")
        for name in names:
            if name != fmt.MANIFEST and not fmt.MEMBER.fullmatch(name):
                raise ReplayError(f"{path} is not a recording: unexpected member {name!r}")
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise ReplayError(f"{path} would unpack to {total} bytes, more than the limit "
                              f"({max_bytes})", "Pass max_bytes= to load() for larger "
                              "recordings you trust.")
        if any(i.flag_bits & 0x1 for i in infos):
            raise ReplayError(f"{path} has encrypted members, which recordings never have")
        self.path = path
        self.sizes = {i.filename: i.file_size for i in infos}
        self.budget = max_bytes  # members still allowed to unpack
        self.decoded = max_bytes  # frames still allowed to decode

    def read(self, name: str, limit: int | None = None) -> bytes:
        if name not in self.sizes:
            raise ReplayError(f"{self.path} is truncated or incomplete: {name} is missing")
        cap = min(self.sizes[name], self.budget if limit is None else limit)
        if self.sizes[name] > cap:
            raise ReplayError(f"{self.path}: {name} is larger than allowed ({cap} bytes)")
        try:
            with self.zf.open(name) as f:
                data = f.read(cap + 1)
        except Exception as e:  # noqa: BLE001 - zlib, CRC and format errors of a bad member
            raise ReplayError(f"{self.path} is corrupted: cannot read {name} ({e})") from None
        if len(data) > cap:
            raise ReplayError(f"{self.path}: {name} unpacks to more than it declares")
        self.budget -= len(data)
        return data

    def close(self) -> None:
        self.zf.close()


def _column(col: Any, kind: str, where: str) -> Any:
    """One Parquet column as the pandas values the manifest says it held."""
    import pyarrow as pa

    t = col.type
    bad = ReplayError(f"{where} does not match the manifest: {t} is not {kind}")
    if kind in fmt.NUMERIC:
        dt = np.dtype(kind)
        if t != pa.from_numpy_dtype(dt) or col.null_count:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    if fmt.TIMES.fullmatch(kind):
        dt = np.dtype(kind)
        unit = np.datetime_data(dt)[0]
        want = pa.timestamp(unit) if dt.kind == "M" else pa.duration(unit)
        if t != want:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    m = fmt.TZ_TIMES.fullmatch(kind)
    if m:
        if t != pa.timestamp(m.group(1), tz="UTC"):
            raise bad
        return pd.Series(col.to_pandas()).astype(kind.replace("datetime64", "datetime64", 1))
    if kind in ("str", "object:str", "json", "category", "string"):
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise bad
        values = col.to_pylist()
        if kind == "json":
            try:
                return _objects([None if v is None else json.loads(v) for v in values])
            except (ValueError, RecursionError) as e:
                raise ReplayError(f"{where}: a json column holds invalid JSON ({e})") from None
        if kind == "category":
            return pd.Categorical(values)
        if kind in ("str", "string"):
            return pd.array(values, dtype=kind)
        return _objects(values)
    if kind == "bytes":
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind == "list":
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind in fmt.EXTENSION_DTYPES:
        ok = {"boolean": pa.types.is_boolean, "string": pa.types.is_string}.get(
            kind, pa.types.is_integer if "Int" in kind else pa.types.is_floating)
        if not (ok(t) or pa.types.is_null(t)):
            raise bad
        return pd.array(col.to_pylist(), dtype=kind)
    raise ReplayError(f"{where}: unknown column type {kind!r} in the manifest")


def _objects(values: list[Any]) -> pd.Series:
    """Python objects as an ``object`` column (pandas would infer ``str`` from strings)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return pd.Series(out, dtype=object, copy=False)


# Decoding a Parquet member is bounded twice. Before anything is decoded, its
# footer and page headers (row groups, rows, values and bytes of every page) must
# fit the budget at a conservative width per value. Then row groups are decoded
# one at a time and their actual decoded size is added up; string columns whose
# dictionaries might expand past the limits stay dictionary-encoded until then,
# so one row group of repeated long strings is measured, not materialized.

_PHYSICAL_WIDTH = {"BOOLEAN": 8, "INT32": 8, "INT64": 8, "INT96": 12, "FLOAT": 8, "DOUBLE": 8,
                   "BYTE_ARRAY": 8}


def _too_big(where: str, what: str, size: int, limit: int) -> ReplayError:
    return ReplayError(f"{where}: {what} {size:,} bytes, over the limit of {limit:,} bytes",
                       "Pass max_bytes= to load() for larger recordings you trust.")


class _Thrift:
    """Just enough of Thrift's compact protocol to read Parquet footers and page headers."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += n

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("Parquet metadata holds an overlong integer")

    def int(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self, depth: int = 0) -> dict[int, Any]:
        """A struct's integer, struct and list fields by id (other values are skipped)."""
        if depth > 16:
            raise ValueError("Parquet metadata nests too deeply")
        fields: dict[int, Any] = {}
        last = 0
        while (head := self.byte()) & 0x0F:
            last = last + (head >> 4) if head >> 4 else self.int()
            fields[last] = self.value(head & 0x0F, depth)
        return fields

    def value(self, kind: int, depth: int) -> Any:
        if kind in (1, 2):  # a boolean, in the field header itself
            return kind == 1
        if kind in (4, 5, 6):
            return self.int()
        if kind == 12:
            return self.struct(depth + 1)
        if kind in (3, 7, 8):  # byte, double, binary
            self.skip(1 if kind == 3 else 8 if kind == 7 else self.varint())
        elif kind in (9, 10):  # list, set
            head = self.byte()
            count = self.varint() if head >> 4 == 15 else head >> 4
            return self.elements(count, [head & 0x0F], depth)
        elif kind == 11:  # map
            count = self.varint()
            if count:
                types = self.byte()
                self.elements(count, [types >> 4, types & 0x0F], depth)
        else:
            raise ValueError(f"Parquet metadata holds an unknown Thrift type {kind}")
        return None

    def elements(self, count: int, kinds: list[int], depth: int) -> list[Any]:
        if count > self.end - self.pos:  # every element takes at least a byte
            raise ValueError("Parquet metadata holds a list longer than itself")
        out = []
        for _ in range(count):
            for kind in kinds:
                if kind in (1, 2):
                    self.skip(1)
                else:
                    out.append(self.value(kind, depth + 1))
        return out


_DATA_PAGES = {0: 5, 3: 8}  # page type -> the header field describing a data page


def _row_groups(data: bytes, footer: int) -> list[tuple[int, list[dict[int, int]]]]:
    """``(rows, [column chunk metadata])`` of each row group, from the footer's own bytes.

    pyarrow's accessors for column chunk metadata abort the whole process on
    some malformed footers, so the numbers the limits need are read here.
    Column chunk metadata is Parquet's ColumnMetaData, by Thrift field id.
    """
    end = len(data) - 8
    if footer > end - 4:
        raise ValueError("the metadata footer is longer than the file")
    meta = _Thrift(data, end - footer, end).struct()
    groups = []
    for group in meta.get(4) or []:
        if not isinstance(group, dict) or not isinstance(group.get(3), int):
            raise ValueError("a row group has no row count")
        chunks = [c.get(3) if isinstance(c, dict) else None for c in group.get(1) or []]
        for chunk in chunks:
            if not (isinstance(chunk, dict) and all(isinstance(chunk.get(k), int)
                                                    for k in (5, 6, 7, 9))):
                raise ValueError("a column chunk has no readable metadata")
        groups.append((group[3], chunks))
    return groups


@dataclass
class _Chunk:
    """What a column chunk's pages hold, from their own headers."""

    values: int = 0  # values in data pages
    size: int = 0  # uncompressed bytes of all pages
    looked_up: int = 0  # values of data pages that index the dictionary
    dictionary: tuple[int, int, int, int] | None = None  # offset, stored, unpacked, entries


def _pages(data: bytes, chunk: dict[int, int]) -> _Chunk:
    """The pages of a column chunk, from their own headers.

    The reader decodes whole pages, whatever the column's metadata says, so
    these are the numbers that bound what decoding it costs. It reads no pages
    for a column that declares no values.
    """
    out = _Chunk()
    if chunk[5] <= 0:
        return out
    start = chunk[9]
    dictionary = chunk.get(11)
    if isinstance(dictionary, int) and 0 < dictionary < start:
        start = dictionary
    end = start + chunk[7]
    if not 0 <= start <= end <= len(data):
        raise ValueError("a column's pages lie outside the file")
    reader = _Thrift(data, start, end)
    while reader.pos < end:
        header = reader.struct()
        uncompressed, compressed = header.get(2), header.get(3)
        if not (isinstance(uncompressed, int) and isinstance(compressed, int)
                and uncompressed >= 0):
            raise ValueError("a page header has no valid sizes")
        kind = header.get(1)
        described = header.get(_DATA_PAGES.get(kind, 0))
        if isinstance(described, dict) and isinstance(described.get(1), int):
            count = max(described[1], 0)
            out.values += count
            encoding = described.get(2 if kind == 0 else 4)
            if encoding == _DELTA_BYTE_ARRAY:
                raise ValueError("a page is DELTA_BYTE_ARRAY-encoded, whose values share "
                                 "prefixes without bound; recordings never use it")
            if encoding not in _PLAIN_ENCODINGS:
                out.looked_up += count
        elif kind == 2 and isinstance(header.get(7), dict):
            entries = header[7].get(1)
            out.dictionary = (reader.pos, compressed, uncompressed,
                              entries if isinstance(entries, int) else -1)
        out.size += uncompressed
        reader.skip(compressed)
    return out


_PLAIN_ENCODINGS = {0, 3, 4, 5, 6, 9}  # value encodings that do not index a dictionary
_DELTA_BYTE_ARRAY = 7
_CODECS = {0: None, 1: "snappy", 2: "gzip", 4: "brotli", 6: "zstd", 7: "lz4_raw"}


def _longest_entry(data: bytes, chunk: dict[int, int], pages: _Chunk) -> int | None:
    """The longest value in a chunk's string dictionary, or None when that is costly to tell."""
    import pyarrow as pa

    if pages.dictionary is None:
        return 0
    start, stored, unpacked, entries = pages.dictionary
    if chunk.get(4) not in _CODECS or not 0 <= entries <= 1 << 16 or unpacked > 4 << 20:
        return None
    raw = data[start:start + stored]
    codec = _CODECS[chunk[4]]
    if codec is not None:
        try:
            raw = pa.Codec(codec).decompress(raw, decompressed_size=unpacked).to_pybytes()
        except (pa.ArrowException, ValueError):
            return None
    longest = pos = 0
    for _ in range(entries):  # PLAIN byte arrays: a 4-byte length, then the bytes
        n = int.from_bytes(raw[pos:pos + 4], "little")
        longest = max(longest, min(n, len(raw)))
        pos += 4 + n
    return longest


def _leaves(t: Any) -> int:
    """How many Parquet leaf columns an Arrow type is stored as."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaves(t.value_type)
    if pa.types.is_struct(t):
        return sum(_leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaves(t.key_type) + _leaves(t.item_type)
    return 1


def _read_parquet(data: bytes, names: list[str], rows: int, objects: list[bool], budget: int,
                  where: str) -> tuple[Any, int]:
    """A Parquet member as an Arrow table, and what it costs decoded, within ``budget`` bytes.

    ``objects`` says which columns become Python objects (each value then costs
    :data:`.format.OBJECT_BYTES` more).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(data) < 12 or data[-4:] != b"PAR1":
        raise ReplayError(f"{where} is not a Parquet file")
    footer = int.from_bytes(data[-8:-4], "little")
    if footer > fmt.MAX_FOOTER:
        raise ReplayError(f"{where} has a {footer:,}-byte metadata footer, more than a "
                          f"recording writes ({fmt.MAX_FOOTER:,})")
    pf = pq.ParquetFile(pa.BufferReader(data), thrift_string_size_limit=fmt.MAX_FOOTER,
                        thrift_container_size_limit=1 << 16)
    meta = pf.metadata
    fields = pf.schema_arrow
    if meta.num_rows != rows or fields.names != names:
        raise ReplayError(f"{where} does not match the manifest (its rows or columns differ)")
    owner = [i for i, f in enumerate(fields) for _ in range(_leaves(f.type))]
    if len(owner) != meta.num_columns:
        raise ReplayError(f"{where} does not match the manifest (its columns differ)")
    leaves = [pf.schema.column(j) for j in range(meta.num_columns)]
    groups = _row_groups(data, footer)
    if len(groups) != meta.num_row_groups or any(
            len(chunks) != len(leaves) or n != meta.row_group(g).num_rows
            for g, (n, chunks) in enumerate(groups)):
        raise ReplayError(f"{where} is inconsistent: its row groups cannot be read")
    group_limit = min(fmt.MAX_ROW_GROUP_BYTES, budget)
    column_limit = min(fmt.MAX_COLUMN_BYTES, budget)
    total = grown = 0
    expanding: set[int] = set()  # string columns whose dictionaries are indexed
    bounded = True  # whether what those dictionaries expand to is known to fit
    for g, (group_rows, chunks) in enumerate(groups):
        estimate = expansion = 0
        for j, (leaf, chunk) in enumerate(zip(leaves, chunks, strict=True)):
            if leaf.max_repetition_level == 0 and chunk[5] != group_rows:
                raise ReplayError(f"{where} is inconsistent: a column of row group {g} holds "
                                  f"{chunk[5]} values for {group_rows} rows")
            pages = _pages(data, chunk)
            values = pages.values
            declared = max(chunk[6], pages.size)
            if declared > column_limit:
                raise _too_big(where, f"column {leaf.path} of row group {g} declares",
                               declared, column_limit)
            width = leaf.length if leaf.physical_type == "FIXED_LEN_BYTE_ARRAY" else \
                _PHYSICAL_WIDTH.get(leaf.physical_type, 8)
            per_value = width + (fmt.OBJECT_BYTES if objects[owner[j]] else 0)
            estimate += max(max(chunk[5], values) * per_value, declared)
            if leaf.physical_type == "BYTE_ARRAY" and pages.looked_up:
                expanding.add(j)
                longest = _longest_entry(data, chunk, pages)
                bounded = bounded and longest is not None
                expansion += pages.looked_up * (longest or 0) * (2 if objects[owner[j]] else 1)
        bounded = bounded and estimate + expansion <= group_limit
        grown += expansion
        if estimate > group_limit:
            raise _too_big(where, f"row group {g} would decode to", estimate, group_limit)
        total += estimate
        if total > budget:
            raise _too_big(where, "its metadata declares at least", total, budget)

    # strings whose dictionaries might expand past the limits stay dictionary-encoded until
    # their decoded size is known
    strings = [] if bounded and total + grown <= budget else sorted(expanding)
    pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings,
                        thrift_string_size_limit=fmt.MAX_FOOTER,
                        thrift_container_size_limit=1 << 16)
    parts = []
    spent = 0
    for g in range(meta.num_row_groups):
        part = pf.read_row_group(g, use_threads=False)
        if part.num_rows != groups[g][0]:
            raise ReplayError(f"{where} is inconsistent: row group {g} holds {part.num_rows} "
                              f"rows, not the {groups[g][0]} it declares")
        cost = 0
        for i, column in enumerate(part.columns):
            for chunk in column.chunks:
                size, count = _decoded_size(chunk)
                cost += 2 * size + count * fmt.OBJECT_BYTES if objects[i] else size
        spent += cost
        if cost > group_limit:
            raise _too_big(where, f"row group {g} decodes to", cost, group_limit)
        if spent > budget:
            raise _too_big(where, "it decodes to at least", spent, budget)
        parts.append(pa.Table.from_arrays([_plain(c) for c in part.columns],
                                          names=part.column_names))
    if not parts:
        return pa.table({n: pa.array([], _plain_type(f.type)) for n, f in
                         zip(names, fields, strict=True)}), 0
    return pa.concat_tables(parts), spent


def _decoded_size(arr: Any) -> tuple[int, int]:
    """``(bytes, values)`` of an Arrow array with its dictionaries expanded, without expanding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        lengths = pc.binary_length(arr.dictionary)
        data = pc.sum(pc.take(lengths, arr.indices)).as_py() or 0
        return arr.indices.nbytes + (len(arr) + 1) * 8 + data, len(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        size, count = _decoded_size(arr.values)
        return size + (len(arr) + 1) * 8, count + len(arr)
    if pa.types.is_struct(t):
        sizes = [_decoded_size(arr.field(i)) for i in range(t.num_fields)]
        return sum(s for s, _ in sizes), sum(c for _, c in sizes) + len(arr)
    return arr.nbytes, len(arr)


def _plain_type(t: Any) -> Any:
    """``t`` with its dictionary-encoded parts as their value types."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_plain_type(t.field(i).type))
                          for i in range(t.num_fields)])
    return t


def _plain(column: Any) -> Any:
    plain = _plain_type(column.type)
    return column if plain == column.type else column.cast(plain)


def _frame(archive: _Archive, desc: dict[str, Any], where: str) -> pd.DataFrame:
    member = _need(desc, "file", str, where)
    rows = _need(desc, "rows", int, where)
    cols = _need(desc, "columns", list, where)
    index = _str_list(desc.get("index", []), f"{where}.index")
    spec: list[tuple[str, str]] = []
    for c in cols:
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)):
            raise ReplayError(f"malformed recording: {where}.columns is not [[name, type]...]")
        spec.append((c[0], c[1]))
    names = [n for n, _ in spec]
    if len(set(names)) != len(names) or not set(index) <= set(names):
        raise ReplayError(f"malformed recording: {where} has duplicate or unknown columns")
    data = archive.read(member)
    where = f"{archive.path}:{member}"
    objects = [kind not in fmt.NUMERIC and not fmt.TIMES.fullmatch(kind) for _, kind in spec]
    try:
        table, cost = _read_parquet(data, names, rows, objects, archive.decoded, where)
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a crafted or damaged Parquet file
        raise ReplayError(f"{where} is not a readable Parquet file ({e})") from None
    archive.decoded -= cost
    if table.num_rows != rows:
        raise ReplayError(f"{where} does not match the manifest (row count)")
    try:
        values = {name: _column(table.column(i).combine_chunks(), kind, where)
                  for i, (name, kind) in enumerate(spec)}
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - a value the declared type cannot hold
        raise ReplayError(f"{where} holds values its declared types cannot hold ({e})") \
            from None
    df = pd.DataFrame(values, index=pd.RangeIndex(rows)) if values else \
        pd.DataFrame(index=pd.RangeIndex(rows))
    if index:
        df = df.set_index(index)
        if index[0].startswith("level_") and len(index) == 1:
            df.index.name = None
    return df



def _backend(prog: dict[str, Any]) -> str:
    """The backend that ran a recorded program; for recordings that do not name it, the one
    its source's dialect chooses."""
    if prog.get("backend") is None:
        return choose_backend(prog["source"])
    name = _need(prog, "backend", str, "program")
    if name not in BACKENDS:
        raise ReplayError(f"malformed recording: program.backend is {name[:40]!r}, not one of "
                          f"{', '.join(BACKENDS)}")
    return name

