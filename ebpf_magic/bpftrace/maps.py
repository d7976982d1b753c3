"""bpftrace's maps read from the kernel while it runs: typed frames and histograms.

bpftrace keeps each ``@map`` in a kernel map (named ``AT_<name>``) whose key is the key
parts one after another (every integer widened to 8 bytes, a ``string[N]`` as N bytes, a
stack as its id and pid) and, for ``hist``/``lhist``/``avg``/``stats``, 8 bytes more: a
bucket, or 0 for the count and 1 for the total. ``count``, ``sum``, ``min``, ``max`` and
the others keep one value per CPU. The layout follows from the types bpftrace's own type
checker gave the key parts (:mod:`.semantics`) and is checked against the sizes the
kernel reports before anything is read; a map whose layout cannot be known this way says
so when read, and what to do instead.

Reads go through a copy of bpftrace's descriptor (:mod:`ebpf_magic.kernel.procfd`) with
the batched lookups every map uses (:class:`ebpf_magic.data.maps.Map`), so a frame is one
system call per chunk of entries, taken at any moment, without asking bpftrace to print.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.backend import MapHandle
from ebpf_magic.bpftrace.semantics import (
    INT_TYPE,
    STACKS,
    STRING_TYPE,
    MapInfo,
    Part,
    value_columns,
)
from ebpf_magic.data import eventframe, histograms, stacks
from ebpf_magic.data.maps import Map
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import kallsyms, mapkinds, sysbpf

AGGREGATES = ("count", "sum", "min", "max", "avg", "stats", "hist", "lhist")
_INDEXED = ("hist", "lhist", "avg", "stats")  # an 8-byte bucket or count/total index
# key parts read as an 8-byte word and named by a lookup
_WORDS = {"kstack", "ustack", "ksym", "username", "probe", "strerror"}
_HINT = ("Print it from the program instead, e.g. interval:s:1 {{ print({name}); }}, and "
         "read the printed values as NAME.events[\"{name}\"].")


def kernel_name(name: str) -> str:
    """The name bpftrace gives map ``name`` in the kernel (15 characters kept)."""
    return ("AT_" + name[1:])[:15]


def part_dtype(part: Part) -> np.dtype | None:
    """How one key part is laid out in a key; None where the type does not tell."""
    t = part.type or ""
    if INT_TYPE.fullmatch(t) or t in _WORDS or t.endswith("*"):  # a pointer: its address
        return np.dtype("<i8") if t.startswith("int") else np.dtype("<u8")
    if t == "usym":
        return np.dtype([("addr", "<u8"), ("pid", "<u8")])
    m = STRING_TYPE.fullmatch(t)
    return np.dtype(f"S{m.group(1)}") if m else None


def value_dtype(info: MapInfo) -> np.dtype | None:
    """One value (one CPU's, for per-CPU maps) of map ``info``; None where unknown."""
    if info.value in AGGREGATES:
        return np.dtype("<u8")
    m = INT_TYPE.fullmatch(info.value)
    if m:
        return np.dtype(f"<{'u' if m.group(1) else 'i'}{int(m.group(2)) // 8}")
    m = STRING_TYPE.fullmatch(info.value)
    if m:
        return np.dtype(f"S{m.group(1)}")
    if info.value in _WORDS or info.value.endswith("*"):  # a pointer: its address
        return np.dtype("<u8")
    return None


def key_dtype(info: MapInfo, key_size: int) -> np.dtype | str:
    """The packed key layout of map ``info``, or why it cannot be known.

    One part of unknown type (a struct field, which bpftrace's printer shows untyped) is
    an integer of the bytes the others leave of ``key_size``, as bpftrace widens them.
    """
    indexed = info.value in _INDEXED
    if not info.keys:
        if info.value == "count":
            return np.dtype([("__index", "<u4")])
        return np.dtype([("__index", "<u8")])
    sizes = [part_dtype(p) for p in info.keys]
    unknown = [i for i, d in enumerate(sizes) if d is None]
    known = sum(d.itemsize for d in sizes if d is not None) + (8 if indexed else 0)
    if len(unknown) > 1:
        return f"its key parts {', '.join(info.keys[i].name or '?' for i in unknown)} " \
               "have types bpftrace does not print"
    if unknown:
        rest = key_size - known
        if rest != 8:
            return f"its key part {info.keys[unknown[0]].type or info.keys[unknown[0]].name} " \
                   "is not an integer"
        sizes[unknown[0]] = np.dtype("<i8")
    names = [f"k{i}" for i in range(len(sizes))] + (["__index"] if indexed else [])
    formats = sizes + ([np.dtype("<u8")] if indexed else [])
    offsets = list(np.cumsum([0] + [f.itemsize for f in formats])[:-1])
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": int(sum(f.itemsize for f in formats))})


def log2_top(version: str | None) -> int | None:
    """The highest ``hist()`` bucket index this bpftrace release gives, where it has one:
    before 0.20 its log2 stops at 2**31, so that bucket holds every value from 2**31 on."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return 33 if m and (int(m.group(1)), int(m.group(2))) < (0, 20) else None


@dataclass
class Context:
    """What decoding keys needs beyond the map: bpftrace's stack maps (descriptor by
    frames kept, ``value_size // 8``), the names of its ``probe`` ids, and the last
    ``hist()`` bucket of its release (:func:`log2_top`)."""

    stack_maps: dict[int, int]
    probe_ids: list[str]
    hist_top: int | None = None


class BpftraceMap:
    """One ``@map`` of a running bpftrace program (a :class:`~ebpf_magic.api.MapView`).

    ``handle`` is None when the map has no kernel map this process could read (``why``
    says why): it then reads as what bpftrace last printed of it (``printed()``: by a
    ``print()``, or at its exit), and without that raises :class:`~ebpf_magic.errors.BPFError`.
    """

    writable = False

    def __init__(self, info: MapInfo, handle: MapHandle | None, why: str, context: Context,
                 guard: Callable[[], contextlib.AbstractContextManager],
                 printed: Callable[[], pd.DataFrame | None] = lambda: None) -> None:
        self.info_ = info
        self.name = info.name
        self._handle = handle
        self._map = Map(handle) if handle is not None else None
        self.why = why
        self._context = context
        self._guard = guard  # held while reading: stop() waits; raises once released
        self._printed = printed
        self.kind: str = handle.kind if handle is not None else "hash"

    # -- what it is ---------------------------------------------------------------

    @property
    def declared(self) -> str:
        """The value as the program declares it: ``count()``, ``lhist(0, 100, 10)``..."""
        if self.info_.value == "lhist" and self.info_.lhist:
            return f"lhist({', '.join(map(str, self.info_.lhist))})"
        return f"{self.info_.value}()" if self.info_.value in AGGREGATES else self.info_.value

    @property
    def key_type(self) -> str:
        return ", ".join(f"{p.name}: {p.type or '?'}" for p in self.info_.keys) or "-"

    @property
    def value_type(self) -> str:
        return self.info_.value

    @property
    def max_entries(self) -> int | None:
        return self._handle.max_entries if self._handle is not None else None

    @property
    def percpu(self) -> bool:
        return self.kind.startswith("percpu")

    @property
    def key_dtype(self) -> np.dtype | None:
        return self._handle.key_dtype if self._handle is not None else None

    @property
    def value_dtype(self) -> np.dtype | None:
        return self._handle.value_dtype if self._handle is not None else None

    @property
    def value_columns(self) -> list[str]:
        return value_columns(self.info_)

    @property
    def is_histogram(self) -> bool:
        return self.info_.value in ("hist", "lhist")

    def info(self) -> dict[str, Any]:
        """One row of ``maps.df``: entries are the kernel's (a histogram's per bucket)."""
        entries = len(self) if self._handle is not None else None
        return {"map": self.name, "kind": self.declared, "key": self.key_type,
                "value": self.value_type, "entries": entries, "max_entries": self.max_entries,
                "full": entries is not None and self.kind != "percpu_array"
                and self.max_entries is not None and entries >= self.max_entries}

    def __len__(self) -> int:
        with self._guard():
            return len(self._map) if self._map is not None else 0

    def __repr__(self) -> str:
        return f"<bpftrace map {self.name}: [{self.key_type}] -> {self.declared}>"

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)

    # -- reading ------------------------------------------------------------------

    def _readable(self) -> Map:
        if self._map is None:
            raise BPFError(f"bpftrace map {self.name} cannot be read live: {self.why}",
                           _HINT.format(name=self.name))
        return self._map

    @property
    def df(self) -> pd.DataFrame:
        """The entries now: one column per key part, then the value column(s).

        ``count``/``sum``/``min``/``max``/``avg`` give one column of that name,
        ``stats()`` gives ``count``, ``average`` and ``total``, a histogram its buckets
        (see :meth:`hist`), and a plain assignment ``value``. Stacks are lists of frames.
        A map not readable live (see the class) is what bpftrace last printed of it.
        """
        with self._guard():
            if self._map is None:
                printed = self._printed()
                if printed is not None:
                    return printed
            keys, values = self._readable().snapshot()
            return decode(self.info_, keys, values, self._context)

    def hist(self, kind: str | None = None,
             step: int = 1,  # noqa: ARG002 - MapView's; the map's own step applies
             ) -> histograms.Histogram:
        """A ``hist()`` or ``lhist()`` map as a :class:`~ebpf_magic.data.histograms.Histogram`
        (per key when keyed). Its buckets are bpftrace's: ``kind``, if given, must be the map's
        own; ``step`` is ignored (an ``lhist()`` map has its step already)."""
        if not self.is_histogram:
            raise TypeError(f"{self.name} holds {self.declared}, not a hist() or lhist()")
        own = "log2" if self.info_.value == "hist" else "linear"
        if kind not in (None, own):
            raise ValueError(f"{self.name} is a {own} histogram ({self.declared})")
        return histograms.Histogram(self.df, kind=own, name=self.name.lstrip("@"))


def decode(info: MapInfo, keys: np.ndarray, values: np.ndarray, context: Context
           ) -> pd.DataFrame:
    """A frame of map ``info`` from a snapshot's raw keys and values (per CPU: 2-D)."""
    if values.ndim == 2:  # one value per CPU: reduce as bpftrace does
        values = reduce(info.value, values)
    key_cols = {p.name: decode_part(p, keys[f"k{i}"], context)
                for i, p in enumerate(info.keys)}
    names = [p.name for p in info.keys]
    kind = info.value
    if kind in ("avg", "stats"):
        return _stats(kind, key_cols, names, keys["__index"], values)
    if kind in ("hist", "lhist"):
        return _buckets(info, key_cols, names, keys["__index"], values, context.hist_top)
    column = value_columns(info)[0]
    if values.dtype.kind == "S":
        vals: Any = eventframe.strings(values)
    elif info.value in _WORDS:
        vals = decode_part(Part(None, info.value), values, context)
    else:
        vals = values
    return pd.DataFrame({**key_cols, column: vals}, copy=False)


def reduce(kind: str, values: np.ndarray) -> np.ndarray:
    """Per-CPU values (``n x cpus`` u64) as bpftrace totals them: summed, or for ``max`` the
    largest, for ``min`` the smallest (kept as ``0xffffffff - value`` by bpftrace 0.17)."""
    if kind == "max":
        return values.max(axis=1).view(np.int64)
    if kind == "min":
        v = values.view(np.int64).max(axis=1)
        return np.where(v == 0, 0, np.int64(0xFFFFFFFF) - v)
    total = values.sum(axis=1)
    return total if kind == "count" else total.view(np.int64)


def _stats(kind: str, key_cols: dict[str, Any], names: list[str], index: np.ndarray,
           values: np.ndarray) -> pd.DataFrame:
    """``avg``/``stats`` maps keep a count (index 0) and a total (index 1) per key."""
    key_cols = {n: _hashable(c) for n, c in key_cols.items()}
    df = pd.DataFrame({**key_cols, "__index": index, "__v": values.view(np.int64)})
    if names:
        wide = df.pivot_table(index=names, columns="__index", values="__v", aggfunc="sum",
                              fill_value=0, sort=False)
        wide = wide.reset_index()
        wide.columns.name = None
    else:
        wide = pd.DataFrame({i: [int(df.loc[df["__index"] == i, "__v"].sum())] for i in (0, 1)})
    count = wide[0].to_numpy(np.int64) if 0 in wide else np.zeros(len(wide), np.int64)
    total = wide[1].to_numpy(np.int64) if 1 in wide else np.zeros(len(wide), np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        average = np.where(count != 0, np.trunc(total / np.where(count, count, 1)), 0)
    average = average.astype(np.int64)
    out = wide[names].reset_index(drop=True) if names else pd.DataFrame(index=range(len(wide)))
    if kind == "avg":
        out["avg"] = average
    else:
        out["count"], out["average"], out["total"] = count, average, total
    return out


def open_top(frame: pd.DataFrame, hist_top: int | None) -> pd.DataFrame:
    """A log2 bucket frame whose last bucket (bpftrace's index ``hist_top``) is open above."""
    if hist_top is not None:
        frame.loc[frame["slot"] == hist_top - 1, "high"] = histograms.OPEN_HIGH
    return frame


def _buckets(info: MapInfo, key_cols: dict[str, Any], names: list[str], index: np.ndarray,
             counts: np.ndarray, hist_top: int | None) -> pd.DataFrame:
    """A histogram map's buckets, per key: bpftrace's bucket index to bounds."""
    index = index.astype(np.int64)
    sections = pd.DataFrame({n: _hashable(key_cols[n]) for n in names}) if names else None
    if info.value == "hist":  # 0: negative, 1: zero, i >= 2: [2**(i-2), 2**(i-1))
        frame = histograms.bucket_frame(index - 1, counts, "log2", 1, sections)
        return open_top(frame, hist_top)
    lo, hi, step = info.lhist or (0, 0, 1)
    buckets = (hi - lo) // step
    # bpftrace's index 0 holds values below lo, 1..buckets the steps, buckets+1 the rest
    frame = histograms.bucket_frame(index, counts, "linear", step, sections)
    i = frame["slot"].to_numpy(np.int64)
    low = lo + (i - 1) * step
    top = i > buckets  # what bpftrace labels [max, ...) (values from the last step on)
    frame["low"] = np.where(i == 0, histograms.OPEN_LOW, np.where(top, hi, low))
    frame["high"] = np.where(top, histograms.OPEN_HIGH, low + step)
    frame["slot"] = i - 1 + (lo // step if lo % step == 0 else 0)
    return frame


def _hashable(column: Any) -> Any:
    """A key column usable for grouping: stacks (lists) as tuples."""
    if isinstance(column, list) or (isinstance(column, np.ndarray) and column.dtype == object
                                    and len(column) and isinstance(column[0], list)):
        return [tuple(v) for v in column]
    return column


def decode_part(part: Part, raw: np.ndarray, context: Context) -> Any:
    """One key part's column from its raw values."""
    t = part.type or ""
    if raw.dtype.kind == "S":
        return eventframe.strings(raw)
    if t in STACKS:
        return _stack_column(part, raw, context)
    if t == "ksym":
        return _by_unique(raw, kallsyms_name)
    if t == "usym":
        pairs = raw[["addr", "pid"]]
        return [_usym(int(a), int(p)) for a, p in zip(pairs["addr"], pairs["pid"], strict=True)]
    if t == "username":
        return _by_unique(raw, _username)
    if t == "probe":
        ids = context.probe_ids
        return _by_unique(raw, lambda i: ids[i] if i < len(ids) else f"probe {i}")
    if t == "strerror":
        return _by_unique(raw, os.strerror)
    return raw


def _by_unique(raw: np.ndarray, name: Callable[[int], str]) -> np.ndarray:
    codes, uniques = pd.factorize(raw)
    names = np.array([name(int(u)) for u in uniques], dtype=object)
    return names[codes] if len(codes) else np.zeros(0, object)


def kallsyms_name(addr: int) -> str:
    """A kernel address's function, or its hex form where kallsyms hides addresses."""
    try:
        return kallsyms.resolve(addr)
    except (OSError, PermissionError):
        return f"0x{addr:x}"


def _usym(addr: int, pid: int) -> str:
    return stacks.symbolize_user(pid, [addr])[0]


def _username(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _stack_column(part: Part, raw: np.ndarray, context: Context) -> list[list[str]]:
    """Stack ids (low 32 bits; the pid above them for user stacks) as lists of frames,
    leaf first, as bpftrace prints them."""
    fd = context.stack_maps.get(part.limit)
    cache: dict[int, list[str]] = {}
    out = []
    for word in raw.tolist():
        if word not in cache:
            cache[word] = _frames(fd, part, word)
        out.append(cache[word])
    return out


def _frames(fd: int | None, part: Part, word: int) -> list[str]:
    stack_id = word & 0xFFFFFFFF
    if fd is None or stack_id >= 1 << 31:  # a negative id: the program got no stack
        return []
    ips = np.zeros(part.limit, np.uint64)
    if not sysbpf.map_lookup(fd, np.array([stack_id], np.uint32).ctypes.data, ips.ctypes.data):
        return []
    addrs = [int(a) for a in ips[ips != 0]]
    if part.type == "kstack":
        return [kallsyms_name(a) for a in addrs]
    return stacks.symbolize_user(word >> 32, addrs)


def ready_handle(info: MapInfo, fd: int, kernel: sysbpf.MapInfo) -> tuple[MapHandle | None, str]:
    """The handle reading map ``info`` through ``fd``, or None and why it cannot be read."""
    vdt = value_dtype(info)
    kdt = key_dtype(info, kernel.key_size)
    if vdt is None:
        return None, f"its values have type {info.value}, which is not read live"
    if isinstance(kdt, str):
        return None, kdt
    if kdt.itemsize != kernel.key_size or vdt.itemsize != kernel.value_size:
        return None, (f"its layout ({kdt.itemsize}-byte keys, {vdt.itemsize}-byte values) is "
                      f"not the kernel's ({kernel.key_size}, {kernel.value_size}): a bpftrace "
                      "release this version of ebpf_magic does not know")
    unsupported = [p for p in info.keys if p.type and part_dtype(p) is None]
    if unsupported:
        return None, f"its key part {unsupported[0].name} has type {unsupported[0].type}"
    return MapHandle(info.name, fd, kernel.kind, kdt, vdt, kernel.max_entries,
                     kernel.key_size, kernel.value_size, declared="bpftrace",
                     backend="bpftrace", id=kernel.id,
                     keyless=mapkinds.kind(kernel.kind).keyless), ""


def stack_limits(maps: Iterable[MapInfo]) -> set[int]:
    """Frame counts of the stacks any map's keys hold."""
    return {p.limit for m in maps for p in m.keys if p.type in STACKS}
