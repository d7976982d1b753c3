"""A recording's manifest: decoded within bounds, then every field checked for type and range.

What the JSON text may decode to is estimated from the text before it is
decoded (every value but the first follows one of ``, : [ {``), and refused
over :data:`.format.MAX_MANIFEST_MEMORY`. Then each field the reader uses is
checked: its type, its range, its length; fields of a map's listing row and of
the host are an allowlist; layouts of map keys and values are plain C data of
bounded size. Any violation is a :class:`~ebpf_magic.errors.ReplayError` naming
the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ebpf_magic.errors import ReplayError
from ebpf_magic.internal import dtypes
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import format as fmt

# Recordings that do not name their backend were written before the backend was
# recorded, when BCC was the only one.
UNNAMED_BACKEND = "bcc"


def decode(raw: bytes, where: str) -> dict[str, Any]:
    """The manifest ``raw`` (a member of ``where``) as JSON, if it would not decode to more
    than :data:`.format.MAX_MANIFEST_MEMORY` and names the format."""
    values = 1 + sum(raw.count(c) for c in b",:[{")
    estimate = values * fmt.JSON_VALUE_BYTES + len(raw) * fmt.JSON_CHAR_BYTES
    if estimate > fmt.MAX_MANIFEST_MEMORY:
        raise ReplayError(f"{where}: {fmt.MANIFEST} would decode to at least {estimate:,} "
                          f"bytes, more than a manifest may ({fmt.MAX_MANIFEST_MEMORY:,})")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReplayError(f"{where} has a corrupted manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        raise ReplayError(f"{where} is not an ebpf_magic recording")
    return manifest


def need(obj: Any, key: str, types: type | tuple[type, ...], where: str,
         optional: bool = False) -> Any:
    """``obj[key]``, which must be of ``types`` (or None if ``optional``); ``where`` names
    ``obj`` in the error."""
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


def need_time(obj: Any, key: str, where: str) -> float | None:
    """A time in seconds since the epoch that pandas and datetime can both show, or None."""
    value = need(obj, key, (int, float), where, optional=True)
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ReplayError(f"malformed recording: {where}.{key} is not a finite time")
    if not fmt.MIN_TIME <= value <= fmt.MAX_TIME:
        shown = f"{value:.6g}" if isinstance(value, float) else f"{str(value)[:20]}"
        raise ReplayError(f"malformed recording: {where}.{key} is out of range ({shown} s "
                          f"since 1970, not between {fmt.MIN_TIME:.0f} and {fmt.MAX_TIME:.0f})")
    return float(value)


def str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReplayError(f"malformed recording: {where} is not a list of strings")
    return list(value)


def program(prog: dict[str, Any]) -> dict[str, Any]:
    """What ran: name, source, cflags, pid, attach list, backend, probes."""
    out = {
        "name": need(prog, "name", str, "program"),
        "source": need(prog, "source", str, "program"),
        "cflags": str_list(need(prog, "cflags", list, "program"), "program.cflags"),
        "pid": need(prog, "pid", int, "program", optional=True),
        "attached": str_list(need(prog, "attached", list, "program"), "program.attached"),
        "backend": _backend(prog),
        "probes": [],
    }
    for p in need(prog, "probes", list, "program"):
        out["probes"].append(Probe(
            need(p, "kind", str, "probe"), need(p, "target", str, "probe"),
            need(p, "function", str, "probe"), need(p, "pid", int, "probe", optional=True)))
    return out


def _backend(prog: dict[str, Any]) -> str:
    """The backend that ran a recorded program (:data:`UNNAMED_BACKEND` where not named)."""
    if prog.get("backend") is None:
        return UNNAMED_BACKEND
    name = need(prog, "backend", str, "program")
    if name not in fmt.RUNNERS:
        raise ReplayError(f"malformed recording: program.backend is {name[:40]!r}, not one of "
                          f"{', '.join(fmt.RUNNERS)}")
    return name


def host(facts: dict[str, Any]) -> dict[str, Any]:
    """Where it ran: the fields of :data:`.format.HOST` (the backend's versions only where
    written), and a cluster program's ``hosts``; any other field is refused."""
    unknown = sorted(str(k)[:40] for k in set(facts) - set(fmt.HOST) - {"hosts"})
    if unknown:
        raise ReplayError(f"malformed recording: host has unknown fields {unknown[:5]}")
    for key, types in fmt.HOST.items():
        if key in facts or key not in fmt.VERSIONS:
            need(facts, key, types, "host", optional=True)
    if "hosts" in facts:
        _hosts(need(facts, "hosts", list, "host"))
    return facts


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
            value = need(row, key, types, where, optional=key not in ("engine", "state",
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


def overhead(recorded: dict[str, Any]) -> dict[str, Any]:
    """The recorded overhead: ``{"unavailable": why}``, or at most
    :data:`.format.MAX_OVERHEAD_ROWS` rows of exactly :data:`.format.OVERHEAD_ROW`'s fields
    and one of :data:`.format.OVERHEAD_IDS`, all of one kind; numbers not negative."""
    if set(recorded) == {"unavailable"}:
        why = need(recorded, "unavailable", str, "overhead")
        if len(why) > fmt.MAX_OVERHEAD_TEXT:
            raise ReplayError("malformed recording: overhead.unavailable is longer than "
                              f"{fmt.MAX_OVERHEAD_TEXT} characters")
        return {"unavailable": why}
    if set(recorded) != {"rows"}:
        raise ReplayError("malformed recording: overhead is not an object of rows, or of why "
                          "it is unavailable")
    rows = need(recorded, "rows", list, "overhead")
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
                value = need(row, key, (int, float), where, optional=True)
                value = math.nan if value is None else float(value)
                if math.isinf(value):
                    raise ReplayError(f"malformed recording: {where}.{key} is infinite")
            else:
                value = need(row, key, kind, where)
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


def messages(rows: list[Any], where: str) -> list[dict[str, str | None]]:
    """A recorded ``warnings`` or ``notes`` list, checked: at most
    :data:`.format.MAX_MESSAGES` objects of ``text`` (at most
    :data:`.format.MAX_MESSAGE_TEXT` characters) and, optionally, a ``kind`` name."""
    if len(rows) > fmt.MAX_MESSAGES:
        raise ReplayError(f"malformed recording: {where} lists {len(rows):,} messages, more "
                          f"than a recording holds ({fmt.MAX_MESSAGES:,})")
    out: list[dict[str, str | None]] = []
    for i, row in enumerate(rows):
        at = f"{where}[{i}]"
        if not isinstance(row, dict) or "text" not in row or not set(row) <= {"text", "kind"}:
            raise ReplayError(f"malformed recording: {at} is not an object of text and, "
                              "optionally, kind")
        text = need(row, "text", str, at)
        if len(text) > fmt.MAX_MESSAGE_TEXT:
            raise ReplayError(f"malformed recording: {at}.text is longer than "
                              f"{fmt.MAX_MESSAGE_TEXT:,} characters")
        kind = need(row, "kind", str, at) if "kind" in row else None
        if kind is not None and not fmt.MESSAGE_KIND.fullmatch(kind):
            raise ReplayError(f"malformed recording: {at}.kind {kind[:40]!r} is not a kind's "
                              "name (lower-case letters, digits, - and _)")
        out.append({"text": text, "kind": kind})
    return out


def global_rows(rows: list[Any]) -> list[dict[str, Any]]:
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
        name = need(row, "name", str, where)
        if not fmt.GLOBAL_NAME.fullmatch(name):
            raise ReplayError(f"malformed recording: {where}.name {name[:40]!r} is not a C name")
        if name in seen:
            raise ReplayError(f"malformed recording: {where}.name {name!r} is listed twice")
        seen.add(name)
        section = need(row, "section", str, where)
        if not fmt.GLOBAL_SECTION.fullmatch(section):
            raise ReplayError(f"malformed recording: {where}.section {section[:40]!r} is not a "
                              "data section (.rodata, .data, .bss or one named .data.NAME ...)")
        c_type = need(row, "c_type", str, where)
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


def length(m: dict[str, Any], where: str) -> int | None:
    """A map's recorded ``len()``, or None where the recording does not say."""
    if "length" not in m:
        return None
    n = need(m, "length", int, where)
    if n < 0:
        raise ReplayError(f"malformed recording: {where}.length is negative")
    return n


def map_info(info: dict[str, Any], where: str) -> dict[str, Any]:
    """A recorded map listing row, checked field by field (widgets show it as HTML).

    Fields other than these are refused.
    """
    unknown = sorted(str(k) for k in set(info) - set(fmt.MAP_INFO))
    if unknown:
        raise ReplayError(f"malformed recording: {where} has unknown fields {unknown[:5]}")
    return {key: need(info, key, types, where, optional=True)
            for key, types in fmt.MAP_INFO.items() if key in info}


def stream_stats(stats: dict, where: str) -> dict[str, Any]:
    """A stream's counters as the live stream has them: ints, ``lost_per_cpu`` keyed by CPU."""
    out: dict[str, Any] = {}
    for key in stats:
        if key == "lost_per_cpu":
            per_cpu = need(stats, key, dict, where)
            if not all(isinstance(c, str) and c.isdigit() and len(c) < 8 for c in per_cpu):
                raise ReplayError(f"malformed recording: {where}.lost_per_cpu has a key "
                                  "that is not a CPU number")
            out[key] = {int(c): need(per_cpu, c, int, f"{where}.lost_per_cpu")
                        for c in per_cpu}
        else:
            out[str(key)] = need(stats, key, int, where)
    return out


def layout(descr: Any, where: str) -> np.dtype | None:
    """A map key's or value's numpy dtype from its JSON description (None: not recorded).

    Plain C data only: scalars, structs and arrays of at most
    :data:`.format.MAX_LAYOUT_FIELDS` fields in all and
    :data:`.format.MAX_LAYOUT_ELEMENTS` scalars.
    """
    if descr is None:
        return None
    fields = [0]
    try:
        dt = np.dtype(_dtype_spec(descr, where, 0, fields))
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's own rejection of a crafted layout
        raise ReplayError(f"malformed recording: {where} is not a valid layout ({e})") from None
    n = dtypes.scalars(dt)
    if n > fmt.MAX_LAYOUT_ELEMENTS:
        raise ReplayError(f"malformed recording: {where} has {n:,} elements, more than a "
                          f"map's key or value holds ({fmt.MAX_LAYOUT_ELEMENTS:,})")
    return dt


def _dtype_spec(descr: Any, where: str, depth: int, fields: list[int]) -> Any:
    if depth > 16:
        raise ReplayError(f"malformed recording: {where} nests too deeply")
    if isinstance(descr, str):
        if not fmt.SCALAR_DTYPE.fullmatch(descr):
            raise ReplayError(f"malformed recording: {where} names an unsupported type "
                              f"{descr[:40]!r}")
        return descr
    if not isinstance(descr, list) or not descr:
        raise ReplayError(f"malformed recording: {where} is not a type description")
    fields[0] += len(descr)
    if fields[0] > fmt.MAX_LAYOUT_FIELDS:
        raise ReplayError(f"malformed recording: {where} has more than "
                          f"{fmt.MAX_LAYOUT_FIELDS:,} fields")
    out = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3) or not isinstance(item[0], str):
            raise ReplayError(f"malformed recording: {where} has a malformed field")
        spec: tuple = (item[0], _dtype_spec(item[1], where, depth + 1, fields))
        if len(item) == 3:
            shape = item[2]
            if not isinstance(shape, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 20
                    for n in shape) or len(shape) > 4:
                raise ReplayError(f"malformed recording: {where} has a malformed array shape")
            spec += (tuple(shape),)
        out.append(spec)
    return out


@dataclass
class FrameSpec:
    """What the manifest says of one frame: its member, rows, ``(name, kind)`` columns and
    the columns that form its index."""

    member: str
    rows: int
    columns: list[tuple[str, str]]
    index: list[str]


def frame_spec(desc: Any, where: str) -> FrameSpec:
    member = need(desc, "file", str, where)
    rows = need(desc, "rows", int, where)
    cols = need(desc, "columns", list, where)
    index = str_list(desc.get("index", []), f"{where}.index")
    spec: list[tuple[str, str]] = []
    for c in cols:
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)):
            raise ReplayError(f"malformed recording: {where}.columns is not [[name, type]...]")
        spec.append((c[0], c[1]))
    names = [n for n, _ in spec]
    if len(set(names)) != len(names) or not set(index) <= set(names):
        raise ReplayError(f"malformed recording: {where} has duplicate or unknown columns")
    return FrameSpec(member, rows, spec, index)
