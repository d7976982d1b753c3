"""bpftrace's output lines (``-f json``) as rows of event streams.

bpftrace prints one JSON object per line: ``{"type": KIND, "data": ...}``. Each kind of
line the program prints becomes a stream of typed records (:class:`Schema`):

* ``printf``: ``time`` (when the line was read), ``text`` (the line as bpftrace would
  print it, without its final newline), and one column per conversion named after its
  argument (``printf("%s %d", comm, pid)`` gives ``comm`` and ``pid``), typed by the
  conversion: ``%d %i`` int64, ``%u %x %X %o %p`` uint64, ``%s %c %r`` str (a constant
  argument, such as a header's ``"PID"``, gets none). With several
  ``printf`` calls a ``printf`` column says which one (0, 1...), and a column a call does
  not have is missing (NA) in its rows.
* ``@map`` for each map the program ``print()``s: ``time``, one column per key part, then
  the value columns as :attr:`NAME.maps[...].df <.maps.BpftraceMap.df>` has them (a
  histogram: one row per bucket), one row per key per print.
* ``print`` (``print()`` of a value: ``value``, its JSON text), ``time``, ``cat``, ``system``
  and ``join``: ``time`` and ``text``; ``command``: the lines a command run with the
  program (``command=``) printed.

A map's key parts are joined with commas in bpftrace's JSON; they are split with the
types bpftrace gave them: integers and stacks cannot hold the separator, so a key of at
most one text part (a ``comm`` with a comma in it, say) splits exactly. A key of two or
more text parts whose texts hold commas may split more than one way: it is split as the
first parts longest, and counted (:attr:`Output.ambiguous`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.bpftrace import source
from ebpf_magic.bpftrace.semantics import (
    INT_TYPE,
    STACKS,
    STRING_TYPE,
    MapInfo,
    Printf,
    Semantics,
    value_columns,
)
from ebpf_magic.data import eventframe, histograms

KIND = "bpftrace"  # the streams' kind: a bpftrace process's output
TEXT_BYTES = 4096  # the longest text a ``cat``/``system``/``join``/``print`` row keeps
LABEL_BYTES = 256  # the longest symbol, probe name or other text key part kept
STACK_FRAME_BYTES = 160
# line kinds other than printf and maps: (stream name, text bytes)
OTHER = {"value": ("print", TEXT_BYTES), "time": ("time", 128), "cat": ("cat", TEXT_BYTES),
         "syscall": ("system", TEXT_BYTES), "join": ("join", TEXT_BYTES),
         "command": ("command", TEXT_BYTES)}
_INTS = {"d": "<i8", "i": "<i8", "u": "<u8", "x": "<u8", "X": "<u8", "o": "<u8", "p": "<u8"}
NUMBERS = ("count", "sum", "min", "max", "avg")  # aggregates printed as one integer
_BASE = {"x": 16, "X": 16, "p": 16, "o": 8}
_WIDTH = {"d": 20, "i": 20, "u": 20, "x": 18, "X": 18, "o": 24, "p": 18, "c": 4}


class Channel:
    """The records of one stream, handed from the output thread to the stream's reader
    (a :class:`~ebpf_magic.kernel.reader.Reader` over memory, woken by an eventfd).

    ``lost`` counts what bpftrace reported lost: its output buffer is one for every kind
    of line, so each stream reports the whole count.
    """

    def __init__(self, dtype: np.dtype, lost: Callable[[], int]) -> None:
        self.dtype = dtype
        self._lost = lost
        self._blocks: collections.deque[np.ndarray] = collections.deque()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    @property
    def fds(self) -> list[int]:
        return [self._fd]

    @property
    def buffer_bytes(self) -> int:
        return 0

    def put(self, records: np.ndarray) -> None:
        """Hand ``records`` (of :attr:`dtype`) to the reader."""
        if len(records):
            self._blocks.append(records.view(np.uint8).reshape(len(records), -1))
            with contextlib.suppress(OSError):
                os.eventfd_write(self._fd, 1)

    def read(self, max_bytes: int  # noqa: ARG002 - the Reader's; all is handed over at once
             ) -> Iterator[tuple[int, list[np.ndarray]]]:
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_read(self._fd)
        blocks = []
        while self._blocks:
            blocks.append(self._blocks.popleft())
        if blocks:
            yield 0, blocks

    def discard(self) -> int:
        n = 0
        while self._blocks:
            n += len(self._blocks.popleft())
        return n

    def lost(self) -> dict[int, int]:
        n = self._lost()
        return {0: n} if n else {}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Schema:
    """One stream's record layout, how a line becomes records, and how its frame is
    finished (missing values, lists of frames, JSON values)."""

    name: str
    dtype: np.dtype
    encode: Callable[[Any, int], np.ndarray]  # (line data, time ns) -> records
    finish: Callable[[pd.DataFrame], pd.DataFrame] | None = None


def _records(dtype: np.dtype, rows: list[dict[str, Any]]) -> np.ndarray:
    out = np.zeros(len(rows), dtype)
    for i, row in enumerate(rows):
        for key, value in row.items():
            out[key][i] = value
    return out


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- printf ---------------------------------------------------------------------------


@dataclass
class _Column:
    name: str
    dtype: np.dtype
    conv: source.Conversion


def printf_schema(formats: list[str], printfs: list[Printf]) -> Schema:
    """The ``printf`` stream of a program whose formats (as written, in order) are
    ``formats``; ``printfs`` (from bpftrace's type checker) name and size the arguments
    when they are the same calls."""
    known = len(printfs) == len(formats) and all(
        p.format == f for p, f in zip(printfs, formats, strict=True))
    pieces = [source.conversions(f) for f in formats]
    columns: dict[str, _Column] = {}
    per_call: list[list[str | None]] = []  # each call's conversions -> column names
    text_bytes = 1
    for i, fmt in enumerate(pieces):
        convs = [c for _, c in fmt if c is not None]
        args = printfs[i].args if known else []
        names: list[str | None] = []
        width = sum(len(_bytes(lit)) for lit, _ in fmt)
        for j, conv in enumerate(convs):
            arg = args[j] if j < len(args) else None
            size = _value_bytes(conv, arg.type if arg else None)
            width += max(conv.width, size)
            dtype = _conversion_dtype(conv, size)
            if dtype is None or (arg is not None and arg.literal):
                names.append(None)  # no column: a constant, or a conversion not typed
                continue
            name = _unique((arg.name if arg and arg.name else None) or f"arg{j}", names)
            if name in ("time", "text", "printf") or \
                    (name in columns and columns[name].dtype != dtype):
                name = f"{name}_{i}"
            columns.setdefault(name, _Column(name, dtype, conv))
            names.append(name)
        per_call.append(names)
        text_bytes = max(text_bytes, width)
    several = len(formats) > 1
    fields = [("time", "<i8")] + ([("printf", "<i2")] if several else []) + \
        [("text", f"S{min(text_bytes, 1 << 16)}")] + \
        [(c.name, c.dtype) for c in columns.values()] + \
        ([("__present", "<u8")] if columns else [])
    dtype = np.dtype(fields)
    order = list(columns)

    def encode(data: Any, now: int) -> np.ndarray:
        row: dict[str, Any] = {"time": now}
        line = str(data)
        marked = source.head(line)
        index, rest = marked if marked is not None else (-1, line)
        if 0 <= index < len(pieces):
            text, values = source.split_marked(rest, pieces[index])
        else:
            text, values = rest.replace(source.US, ""), None
        row["text"] = _bytes(text[:-1] if text.endswith("\n") else text)
        if several:
            row["printf"] = index
        present = 0
        if values is not None:
            convs = [c for _, c in pieces[index] if c is not None]
            for name, conv, value in zip(per_call[index], convs, values, strict=True):
                if name is None:
                    continue
                parsed = _parse(conv, value)
                if parsed is not None:
                    row[name] = parsed
                    present |= 1 << order.index(name)
        if columns:
            row["__present"] = present
        return _records(dtype, [row])

    def finish(df: pd.DataFrame) -> pd.DataFrame:
        if "__present" not in df:
            return df
        present = df.pop("__present").to_numpy(np.uint64)
        for k, name in enumerate(order):
            missing = (present >> np.uint64(k)) & np.uint64(1) == 0
            if missing.any():
                column = df[name]
                if column.dtype.kind in "iu":
                    column = column.astype("Int64" if column.dtype.kind == "i" else "UInt64")
                else:
                    column = column.astype(object)
                column[missing] = pd.NA if column.dtype != object else None
                df[name] = column
        return df

    return Schema("printf", dtype, encode, finish)


def _unique(name: str, taken: list[str | None]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    return out


def _value_bytes(conv: source.Conversion, arg_type: str | None) -> int:
    if conv.conv in ("s", "r"):
        m = STRING_TYPE.fullmatch(arg_type or "")
        size = int(m.group(1)) if m else 64
        return size * (4 if conv.conv == "r" else 1)
    return _WIDTH.get(conv.conv, 64)


def _conversion_dtype(conv: source.Conversion, size: int) -> np.dtype | None:
    if conv.conv in _INTS:
        return np.dtype(_INTS[conv.conv])
    if conv.conv in ("s", "c", "r"):
        return np.dtype(f"S{size}")
    return None


def _parse(conv: source.Conversion, value: str) -> Any:
    """One printed value as its column holds it; None where it does not parse."""
    if conv.conv in _INTS:
        text = value.strip()
        try:
            number = int(text, _BASE.get(conv.conv, 10))
        except ValueError:
            return None
        return number & (2**64 - 1) if conv.conv not in ("d", "i") else number
    if conv.width and "-" in conv.flags:
        value = value.rstrip(" ")
    elif conv.width:
        value = value.lstrip(" ")
    return _bytes(value)


# -- maps -----------------------------------------------------------------------------


def _part_kind(type_: str | None) -> str:
    if type_ is None:
        return "auto"
    if INT_TYPE.fullmatch(type_):
        return "int"
    if type_ in STACKS:
        return "stack"
    return "text"


_PATTERNS = {"int": r"(-?\d+)", "stack": r"(\n(?:[ \t][^\n]*\n)*)"}


def key_splitter(kinds: list[str]) -> Callable[[str], tuple[list[str], bool] | None]:
    """A function splitting a joined key text into its parts (and whether the split was
    the only one possible), or None when it does not split as ``kinds`` say."""
    if len(kinds) == 1:
        return lambda text: ([text], True)

    def pattern(lazy: bool) -> re.Pattern:
        text = r"(.*?)" if lazy else r"(.*)"
        return re.compile(",".join(_PATTERNS.get(k, text) for k in kinds), re.S)

    greedy, lazy = pattern(False), pattern(True)
    free = sum(k in ("text", "auto") for k in kinds)

    def split(text: str) -> tuple[list[str], bool] | None:
        m = greedy.fullmatch(text)
        if m is None:
            return None
        parts = list(m.groups())
        if free < 2:
            return parts, True
        other = lazy.fullmatch(text)
        return parts, other is not None and list(other.groups()) == parts

    return split


def _part_field(name: str, type_: str | None, limit: int) -> tuple[str, str]:
    kind = _part_kind(type_)
    if kind == "int":
        return name, "<u8" if type_.startswith("unsigned") else "<i8"
    if kind == "stack":
        return name, f"S{min(limit * STACK_FRAME_BYTES, 1 << 16)}"
    m = STRING_TYPE.fullmatch(type_ or "")
    return name, f"S{m.group(1)}" if m else f"S{LABEL_BYTES}"


class MapSeries:
    """How the lines printing one map become rows (see the module docstring)."""

    def __init__(self, info: MapInfo, hist_top: int | None = None) -> None:
        self.info = info
        self.hist_top = hist_top  # the last hist() bucket of this release, open above
        self.ambiguous = 0  # keys that could have split more than one way
        self.unsplit = 0  # keys that did not split as their types say (kept whole)
        kinds = [_part_kind(p.type) for p in info.keys]
        self._kinds = kinds
        self._split = key_splitter(kinds)
        fields = [("time", "<i8")] + [_part_field(p.name, p.type, p.limit) for p in info.keys]
        value = info.value
        if value in ("hist", "lhist"):
            fields += [("slot", "<i8"), ("low", "<i8"), ("high", "<i8"), ("count", "<i8")]
        elif value == "stats":
            fields += [("count", "<i8"), ("average", "<i8"), ("total", "<i8")]
        else:
            column = value_columns(info)[0]
            m = STRING_TYPE.fullmatch(value)
            fmt = f"S{m.group(1)}" if m else ("<u8" if value.startswith("unsigned") else "<i8")
            if not (m or INT_TYPE.fullmatch(value) or value in NUMBERS):
                fmt = f"S{LABEL_BYTES}"
            fields.append((column, fmt))
        self.dtype = np.dtype(fields)
        self._stacks = [p.name for p, k in zip(info.keys, kinds, strict=True) if k == "stack"]
        self._auto = [p.name for p, k in zip(info.keys, kinds, strict=True) if k == "auto"]

    def schema(self) -> Schema:
        return Schema(self.info.name, self.dtype, self.encode, self.finish)

    def encode(self, payload: Any, now: int) -> np.ndarray:
        """The rows of one print of the map (``payload``: its JSON, pairs kept in order)."""
        rows: list[dict[str, Any]] = []
        entries = payload if self.info.keys and isinstance(payload, list) and \
            all(isinstance(e, tuple) for e in payload) else [(None, payload)]
        for key, value in entries:
            base: dict[str, Any] = {"time": now}
            if key is not None:
                base.update(self._key(key))
            rows += [{**base, **r} for r in self._values(value)]
        return _records(self.dtype, rows)

    def _key(self, text: str) -> dict[str, Any]:
        found = self._split(text)
        if found is None:
            self.unsplit += 1
            parts = [text] + [""] * (len(self._kinds) - 1)
        else:
            parts, unique = found
            self.ambiguous += not unique
        row: dict[str, Any] = {}
        for p, kind, value in zip(self.info.keys, self._kinds, parts, strict=True):
            if kind == "int":
                number = int(value) if re.fullmatch(r"-?\d+", value) else 0
                row[p.name] = number & (2**64 - 1) if p.type.startswith("unsigned") else number
            else:
                row[p.name] = _bytes(value)
        return row

    def _values(self, value: Any) -> list[dict[str, Any]]:
        kind = self.info.value
        if kind in ("hist", "lhist"):
            return self._buckets(value if isinstance(value, list) else [])
        if kind == "stats":
            fields = dict(value) if isinstance(value, list) else {}
            return [{k: int(fields.get(k, 0)) for k in ("count", "average", "total")}]
        column = value_columns(self.info)[0]
        if isinstance(value, (int, float)) and self.dtype[column].kind in "iu":
            return [{column: int(value)}]
        if isinstance(value, str):
            return [{column: _bytes(value)}]
        return [{column: _bytes(json.dumps(_plain(value)))}]

    def _buckets(self, buckets: list[Any]) -> list[dict[str, Any]]:
        """A printed histogram's buckets, from the first one's bounds and their order.

        bpftrace prints the buckets from the lowest to the highest non-empty one, each
        with ``min``/``max`` (0.17 prints wrong bounds above 2**31, so only the first
        bucket's bounds are used) and ``count``.
        """
        rows = [dict(b) for b in buckets if isinstance(b, list)]
        if not rows:
            return []
        if self.info.value == "hist":
            first = rows[0]
            start = 0 if "min" not in first else (1 if first["min"] == 0 else
                                                   int(first["min"]).bit_length() + 1)
            index = np.arange(start, start + len(rows))
            low, high = histograms.bounds(index - 1, "log2")
            if self.hist_top is not None:
                high = np.where(index == self.hist_top, histograms.OPEN_HIGH, high)
            slots = index - 1
        else:
            lo, hi, step = self.info.lhist or (0, 0, 1)
            first = rows[0]
            start = 0 if "min" not in first else (int(first["min"]) - lo) // step + 1
            index = np.arange(start, start + len(rows))
            low = np.where(index == 0, histograms.OPEN_LOW, lo + (index - 1) * step)
            top = index > (hi - lo) // step  # bpftrace labels it [max, ...)
            low = np.where(top, hi, low)
            high = np.where(top, histograms.OPEN_HIGH, lo + index * step)
            slots = index - 1 + (lo // step if lo % step == 0 else 0)
        return [{"slot": int(s), "low": int(a), "high": int(b), "count": int(r.get("count", 0))}
                for s, a, b, r in zip(slots, low, high, rows, strict=True)]

    def finish(self, df: pd.DataFrame) -> pd.DataFrame:
        for name in self._stacks:
            df[name] = [[f.strip() for f in s.split("\n") if f.strip()] for s in df[name]]
        for name in self._auto:
            column = df[name]
            if len(column) and column.str.fullmatch(r"-?\d+").all():
                df[name] = column.astype(np.int64)
        return df


def _plain(value: Any) -> Any:
    """A JSON value read with pairs kept (objects as lists of pairs) back as plain JSON."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _other_schema(kind: str) -> Schema:
    name, size = OTHER[kind]
    dtype = np.dtype([("time", "<i8"), ("value" if kind == "value" else "text", f"S{size}")])

    def encode(data: Any, now: int) -> np.ndarray:
        if kind == "value":
            return _records(dtype, [{"time": now, "value": _bytes(json.dumps(_plain(data)))}])
        text = str(data)
        return _records(dtype, [{"time": now, "text": _bytes(text[:-1] if text.endswith("\n")
                                                              else text)}])

    return Schema(name, dtype, encode)


# -- the output of one process ---------------------------------------------------------


class Output:
    """What one bpftrace process prints: lines routed to their streams' channels, and the
    counts the program reports (probes attached, events lost, lines not understood)."""

    def __init__(self, semantics: Semantics, formats: list[str], command: bool = False,
                 hist_top: int | None = None) -> None:
        self.attached_probes: int | None = None
        self.lost = 0
        self.helper_errors: collections.Counter[tuple[str, int, int, int]] = \
            collections.Counter()
        self.unknown = 0  # lines of a kind no stream takes
        self._maps = semantics.maps
        self._hist_top = hist_top
        self._last: dict[str, Any] = {}  # what bpftrace last printed of each map
        self.schemas: dict[str, Schema] = {}
        self.series: dict[str, MapSeries] = {}
        if formats:
            self.schemas["printf"] = printf_schema(formats, semantics.printfs)
        for kind in sorted(semantics.outputs) + (["command"] if command else []):
            schema = _other_schema(kind)
            self.schemas[schema.name] = schema
        for name, info in semantics.maps.items():
            if info.printed:
                self.series[name] = MapSeries(info, hist_top)
                self.schemas[name] = self.series[name].schema()
        self.channels = {name: Channel(s.dtype, lambda: self.lost)
                         for name, s in self.schemas.items()}
        self._routes = {"printf": "printf",
                        **{k: n for k, (n, _) in OTHER.items() if k != "command"}}
        self._lock = threading.Lock()

    @property
    def ambiguous(self) -> int:
        """Map keys of printed maps that could have split more than one way."""
        return sum(s.ambiguous for s in self.series.values())

    @property
    def unsplit(self) -> int:
        """Map keys of printed maps that did not split as their types say."""
        return sum(s.unsplit for s in self.series.values())

    def printed(self, name: str) -> pd.DataFrame | None:
        """What bpftrace last printed of map ``name`` (by ``print()`` or at its exit), as
        the map's frame; None if it printed nothing of it."""
        info = self._maps.get(name)
        if name not in self._last or info is None:
            return None
        series = MapSeries(info, self._hist_top)
        records = series.encode(self._last[name], 0)
        return series.finish(eventframe.frame(records)).drop(columns="time")

    def take_command(self, line: bytes) -> None:
        """Route one line the command run with the program printed."""
        channel = self.channels.get("command")
        if channel is not None:
            text = line.decode("utf-8", "surrogateescape")
            channel.put(self.schemas["command"].encode(text, time.time_ns()))

    def take(self, line: bytes) -> None:
        """Route one line of bpftrace's standard output (blank ones, which it prints before
        its exit report, are skipped)."""
        if not line.strip():
            return
        now = time.time_ns()
        try:
            message = json.loads(line.decode("utf-8", "surrogateescape"),
                                 object_pairs_hook=lambda pairs: [tuple(p) for p in pairs])
            message = dict(message)
            kind, data = message.get("type"), message.get("data")
        except (ValueError, TypeError):
            self.unknown += 1
            return
        if kind == "attached_probes":
            self.attached_probes = int(dict(data).get("probes", 0))
        elif kind == "lost_events":
            self.lost += int(dict(data).get("events", 0))
        elif kind == "helper_error":
            self.helper_errors[(str(message.get("helper")), int(message.get("retcode", 0)),
                                int(message.get("line", 0)), int(message.get("col", 0)))] += 1
        elif kind in ("map", "hist", "stats"):
            for name, payload in data if isinstance(data, list) else []:
                self._last[name] = payload
                series = self.series.get(name)
                if series is not None:
                    self.channels[name].put(series.encode(payload, now))
        elif kind in self._routes and self._routes[kind] in self.channels:
            name = self._routes[kind]
            self.channels[name].put(self.schemas[name].encode(data, now))
        else:
            self.unknown += 1
