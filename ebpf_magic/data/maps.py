"""BPF maps as Python mappings and DataFrames.

``Map`` reads and writes a kernel map through its file descriptor with plain
Python values: ints, tuples or dicts for struct keys, dicts for struct values,
``str`` for ``char[]``. Iteration follows the kernel's get_next_key order.

Snapshots (:meth:`Map.snapshot`, :attr:`Map.df`) read the whole map with
BPF_MAP_LOOKUP_BATCH into numpy buffers and decode them with the map's dtypes,
falling back to one lookup per key where the kernel or map kind has no batch
operations. :func:`frame` turns snapshot arrays into a DataFrame without
touching the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.api import MAP, Named
from ebpf_magic.backend import MapHandle
from ebpf_magic.data import eventframe, histograms
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes
from ebpf_magic.internal.tables import Listing
from ebpf_magic.kernel import mapkinds, sysbpf


class Map:
    """One kernel map of a program."""

    def __init__(self, handle: MapHandle) -> None:
        self.handle = handle
        self.name = handle.name
        self.kind = handle.kind
        self.traits = mapkinds.kind(handle.kind)
        self._ncpus = sysbpf.possible_cpus() if self.traits.percpu else 1
        self._key_dt = normalize_dtype(handle.key_dtype or _raw_dtype(handle.key_size))
        self._val_dt = normalize_dtype(handle.value_dtype or _raw_dtype(handle.value_size))
        # a per-CPU map's value buffer holds one 8-byte aligned slot per possible CPU
        self._cpu_stride = -(-self._val_dt.itemsize // 8) * 8
        self._batch_ok = self.traits.batch

    # -- description -----------------------------------------------------------

    @property
    def percpu(self) -> bool:
        return self.traits.percpu

    @property
    def hist_kind(self) -> str:
        """How :attr:`df` reads a histogram: "log2" or "linear", as the backend found it
        (from how the source increments it), else "log2"."""
        return self.handle.hist_kind or "log2"

    @property
    def max_entries(self) -> int:
        return self.handle.max_entries

    @property
    def backend(self) -> str:
        """The backend that made the map (its stacks are symbolized by that backend)."""
        return self.handle.backend

    @property
    def declared(self) -> str:
        """How the program declared the map (``BPF_HISTOGRAM`` ...), or ""."""
        return self.handle.declared or ""

    @property
    def key_dtype(self) -> np.dtype | None:
        """The numpy dtype of a key; None for maps without keys (queues, stacks)."""
        return self._key_dt if self.handle.key_dtype is not None else None

    @property
    def value_dtype(self) -> np.dtype:
        """The numpy dtype of one value (one CPU's, for per-CPU maps)."""
        return self._val_dt

    @property
    def writable(self) -> bool:
        """True while the program runs: entries can be changed."""
        return not isinstance(self.handle, _Released)

    @property
    def key_type(self) -> str:
        return dtypes.describe(self._key_dt) if self.handle.key_dtype is not None else "-"

    @property
    def value_type(self) -> str:
        return dtypes.describe(self._val_dt)

    def info(self) -> dict[str, Any]:
        """Kind, types and sizes, for listings."""
        entries = None if self.traits.metadata_only or self.traits.keyless else len(self)
        return {"map": self.name, "kind": self.handle.declared or self.kind,
                "key": self.key_type, "value": self.value_type, "entries": entries,
                "max_entries": self.max_entries,
                "full": entries is not None and not self.traits.array
                and entries >= self.max_entries}

    def __repr__(self) -> str:
        return (f"<Map {self.name}: {self.handle.declared or self.kind} "
                f"{self.key_type} -> {self.value_type}, max_entries={self.max_entries}>")

    # -- raw buffers -----------------------------------------------------------

    def _value_buffer(self, n: int = 1) -> np.ndarray:
        if self.percpu:
            return np.zeros(n * self._value_slot(), dtype=np.uint8)
        return np.zeros(n, dtype=self._val_dt)

    def _decode_values(self, buf: np.ndarray, n: int) -> np.ndarray:
        """Values as an array of ``value_dtype``; per-CPU maps give shape (n, ncpus)."""
        if not self.percpu:
            return buf.view(self._val_dt)[:n] if buf.dtype == np.uint8 else buf[:n]
        stride = self._cpu_stride
        rows = buf[: n * self._ncpus * stride].reshape(n * self._ncpus, stride)
        vals = np.ascontiguousarray(rows[:, : self._val_dt.itemsize]).view(self._val_dt)
        return vals.reshape(n, self._ncpus)

    def _encode_key(self, key: Any) -> np.ndarray:
        if self.traits.array and isinstance(key, (int, np.integer)) and not (
                0 <= key < self.max_entries):
            raise KeyError(f"index {key} out of range for {self.name} "
                           f"(max_entries {self.max_entries})")
        try:
            return dtypes.encode(key, self._key_dt)
        except (TypeError, ValueError) as e:
            raise KeyError(f"{key!r} is not a valid key of {self.name} "
                           f"({self.key_type}): {e}") from None

    def _encode_value(self, value: Any) -> np.ndarray:
        if not self.percpu:
            return dtypes.encode(value, self._val_dt)
        values = value if isinstance(value, (list, tuple)) and len(value) == self._ncpus \
            and not self._val_dt.names else [value] * self._ncpus
        stride = self._cpu_stride
        buf = np.zeros(self._value_slot(), dtype=np.uint8)
        for cpu, v in enumerate(values):
            buf[cpu * stride: cpu * stride + self._val_dt.itemsize] = \
                dtypes.encode(v, self._val_dt).view(np.uint8)
        return buf

    def _to_value(self, vals: np.ndarray) -> Any:
        if self.percpu:
            return [dtypes.to_python(v, self._val_dt) for v in vals]
        return dtypes.to_python(vals, self._val_dt)

    # -- mapping protocol ------------------------------------------------------

    def _require_keys(self) -> None:
        if self.handle.keyless:
            raise TypeError(f"{self.name} is a {self.kind} map: it has no keys "
                            "(use .pop() / .push(), or .df)")

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __getitem__(self, key: Any) -> Any:
        self._require_keys()
        k = self._encode_key(key)
        buf = self._value_buffer()
        if not sysbpf.map_lookup(self.handle.fd, k.ctypes.data, buf.ctypes.data):
            raise KeyError(key)
        return self._to_value(self._decode_values(buf, 1)[0])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._require_keys()
        try:
            v = self._encode_value(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{value!r} is not a valid value of {self.name} "
                             f"({self.value_type}): {e}") from None
        sysbpf.map_update(self.handle.fd, self._encode_key(key).ctypes.data, v.ctypes.data)

    def __delitem__(self, key: Any) -> None:
        self._require_keys()
        if self.traits.array:
            # array elements cannot be deleted: zero them, as BCC does
            self[key] = self._zero_value()
            return
        if not sysbpf.map_delete(self.handle.fd, self._encode_key(key).ctypes.data):
            raise KeyError(key)

    def _zero_value(self) -> Any:
        zero = dtypes.to_python(np.zeros((), self._val_dt)[()], self._val_dt)
        return [zero] * self._ncpus if self.percpu else zero

    def __contains__(self, key: Any) -> bool:
        try:
            k = self._encode_key(key)
        except KeyError:
            return False
        return sysbpf.map_lookup(self.handle.fd, k.ctypes.data, self._value_buffer().ctypes.data)

    def _raw_keys(self) -> Iterator[np.ndarray]:
        self._require_keys()
        fd, prev = self.handle.fd, None
        while True:
            nxt = np.zeros(1, dtype=self._key_dt)
            if not sysbpf.map_get_next_key(fd, None if prev is None else prev.ctypes.data,
                                           nxt.ctypes.data):
                return
            yield nxt
            prev = nxt

    def keys(self) -> Iterator[Any]:
        for raw in self._raw_keys():
            yield dtypes.to_key(raw[0], self._key_dt)

    __iter__ = keys

    def items(self) -> Iterator[tuple[Any, Any]]:
        buf = self._value_buffer()
        for raw in self._raw_keys():
            if sysbpf.map_lookup(self.handle.fd, raw.ctypes.data, buf.ctypes.data):
                yield (dtypes.to_key(raw[0], self._key_dt),
                       self._to_value(self._decode_values(buf, 1)[0]))

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def __len__(self) -> int:
        if self.traits.array:
            return self.max_entries
        if self.handle.keyless or self.traits.storage:
            return 0
        if self._batch_ok:
            return len(self.snapshot()[0])
        return sum(1 for _ in self._raw_keys())

    def clear(self) -> None:
        """Delete every entry (zero every element of an array)."""
        if self.traits.array:
            for key in range(self.max_entries):
                del self[key]
            return
        if self._batch_ok:
            keys = np.ascontiguousarray(self.snapshot()[0])
            with contextlib.suppress(OSError):  # entries deleted meanwhile: finish one by one
                sysbpf.map_delete_batch(self.handle.fd, keys, len(keys))
                return
        for raw in list(self._raw_keys()):
            sysbpf.map_delete(self.handle.fd, raw.ctypes.data)

    def update(self, other: Mapping[Any, Any]) -> None:
        for key, value in other.items():
            self[key] = value

    # -- queue / stack maps ----------------------------------------------------

    def push(self, value: Any) -> None:
        """Push onto a queue or stack map."""
        sysbpf.map_update(self.handle.fd, None, dtypes.encode(value, self._val_dt).ctypes.data)

    def pop(self) -> Any:
        """Pop from a queue or stack map; raise KeyError when it is empty."""
        buf = self._value_buffer()
        if not sysbpf.map_lookup_and_delete(self.handle.fd, None, buf.ctypes.data):
            raise KeyError(f"{self.name} is empty")
        return dtypes.to_python(buf[0], self._val_dt)

    def peek(self) -> Any:
        """The next value of a queue or stack map, left in place."""
        return dtypes.to_python(self.peek_raw(), self._val_dt)

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) of every entry as numpy arrays of the key and value dtypes.

        Reads with BPF_MAP_LOOKUP_BATCH where the kernel supports it for this map
        kind, else key by key. Per-CPU values have shape (n, ncpus).
        """
        self._require_keys()
        if self._batch_ok:
            try:
                return self._snapshot_batch()
            except OSError as e:
                if e.errno not in _NO_BATCH:
                    raise
                self._batch_ok = False
        return self._snapshot_per_key()

    def _snapshot_batch(self) -> tuple[np.ndarray, np.ndarray]:
        ks, vsize = self.handle.key_size, self._value_slot()
        chunk = max(1, min(self.max_entries, _BATCH_CHUNK))
        token_in = np.zeros(max(ks, 8), dtype=np.uint8)
        token_out = np.zeros(max(ks, 8), dtype=np.uint8)
        key_parts, val_parts, first = [], [], True
        while True:
            kbuf = np.empty(chunk * ks, dtype=np.uint8)
            vbuf = np.empty(chunk * vsize, dtype=np.uint8)
            n, done = sysbpf.map_lookup_batch(self.handle.fd, None if first else token_in,
                                              token_out, kbuf, vbuf, chunk)
            key_parts.append(kbuf[: n * ks])
            val_parts.append(vbuf[: n * vsize])
            if done:
                break
            first = False
            token_in[:] = token_out
        kraw = key_parts[0] if len(key_parts) == 1 else np.concatenate(key_parts)
        vraw = val_parts[0] if len(val_parts) == 1 else np.concatenate(val_parts)
        n = len(kraw) // ks
        return kraw.view(self._key_dt), self._decode_values(vraw, n)

    def _value_slot(self) -> int:
        """Bytes one entry's value takes in a lookup buffer."""
        if self.percpu:
            return self._cpu_stride * self._ncpus
        return self._val_dt.itemsize

    def _snapshot_per_key(self) -> tuple[np.ndarray, np.ndarray]:
        keys = list(self._raw_keys())
        n = len(keys)
        key_arr = np.concatenate(keys) if keys else np.zeros(0, self._key_dt)
        slot = self._value_slot()
        vbuf = np.zeros(max(n, 1) * slot, dtype=np.uint8)
        present = np.array([sysbpf.map_lookup(self.handle.fd, key_arr[i:i + 1].ctypes.data,
                                              vbuf[i * slot:].ctypes.data)
                            for i in range(n)], dtype=bool)
        values = self._decode_values(vbuf, n)
        return key_arr[present], values[present]

    @property
    def df(self) -> pd.DataFrame:
        """A snapshot as a DataFrame; its shape depends on the map kind.

        * hash, LRU hash, array: one column per key field, then one per value
          field (``char[]`` as ``str``, nested structs as ``outer.inner``);
          arrays include every index, zeros too.
        * per-CPU maps: wide form, one value column per possible CPU
          (``value[cpu0]``...) plus ``total`` for numeric values.
        * ``BPF_HISTOGRAM``: buckets with ``low``/``high`` bounds and ``count``
          (see :meth:`hist`), per key for keyed histograms.
        * stack-trace maps: ``stack_id``, ``depth`` and symbolized ``stack``
          (folded, root first).
        * queue/stack maps: the head only (reading more would consume them).
        * program, perf-event and other fd arrays: one row of metadata.
        """
        if self.traits.metadata_only:
            return pd.DataFrame([self.info()])
        if self.handle.keyless:
            return self._queue_frame()
        if self.kind == "stack_trace":
            from ebpf_magic.data import stacks

            return stacks.stack_frame(self)
        if self.handle.declared == "histogram":
            return self.hist().df
        return frame(*self.snapshot())

    def hist(self, kind: str | None = None, step: int = 1) -> histograms.Histogram:
        """This map read as a ``BPF_HISTOGRAM`` of ``kind`` "log2" or "linear".

        ``kind`` defaults to :attr:`hist_kind` (learned from the program; "log2"
        where it cannot be told); ``step`` is the bucket width of a linear histogram.
        A struct key's ``slot`` field (BCC's convention) is the bucket; its other
        fields name a separate histogram each.
        """
        keys, values = self.snapshot()
        if self.percpu:
            values = values.sum(axis=1)
        return histograms.from_slots(keys, values, kind=kind or self.hist_kind, step=step,
                                     name=self.name)

    def _queue_frame(self) -> pd.DataFrame:
        """Queue and stack maps cannot be read without popping: peek the head only."""
        try:
            head = np.array([self.peek_raw()], dtype=self._val_dt)
        except KeyError:
            head = np.zeros(0, dtype=self._val_dt)
        return dtypes.frame(head, "value" if not self._val_dt.names else "")

    def peek_raw(self) -> np.void:
        buf = self._value_buffer()
        if not sysbpf.map_lookup(self.handle.fd, None, buf.ctypes.data):
            raise KeyError(f"{self.name} is empty")
        return buf[0]

    # -- editing by table row ----------------------------------------------------

    def row_key(self, row: Mapping[str, Any]) -> Any:
        """The key of a row of :attr:`df` (a mapping of column to value)."""
        if not self._key_dt.names:
            return row["key"]
        return record_from_row(row, self._key_dt, "", set(self.value_columns))

    def set_cell(self, key: Any, column: str, value: Any) -> None:
        """Write one value column of the entry at ``key`` (as shown in :attr:`df`)."""
        if self.percpu:
            m = re.fullmatch(r"(.*)\[cpu(\d+)\]", column)
            if not m or self._val_dt.names:
                raise ValueError(f"cannot edit column {column!r} of per-CPU map {self.name}")
            current = self[key]
            current[int(m.group(2))] = value
            self[key] = current
            return
        if not self._val_dt.names:
            if column != "value":
                raise ValueError(f"{self.name} has one value column, 'value'; got {column!r}")
            self[key] = value
            return
        current = self[key]
        node, parts = current, column.split(".")
        for part in parts[:-1]:
            node = node[part]
        leaf = parts[-1]
        m = re.fullmatch(r"(.*)\[(\d+)\]", leaf)
        if m and m.group(1) in node:
            node[m.group(1)][int(m.group(2))] = value
        elif leaf in node:
            node[leaf] = value
        else:
            raise ValueError(f"{column!r} is not a value column of {self.name}")
        self[key] = current

    @property
    def value_columns(self) -> list[str]:
        """The columns of :attr:`df` that hold the value; the others are the key."""
        return list(dtypes.columns(np.zeros(0, self._val_dt),
                                   "value" if not self._val_dt.names else ""))


_NO_BATCH = {errno.EINVAL, errno.EOPNOTSUPP, 524}  # 524: the kernel's ENOTSUPP
_BATCH_CHUNK = 1 << 20


def frame(keys: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """A DataFrame from a snapshot's key and value arrays (no kernel access).

    Per-CPU values (2-D) become one column per CPU plus ``total`` for numbers.
    A value column that repeats a key column's name is kept, the key one is
    renamed ``key.NAME``.
    """
    key_dt, val_dt = keys.dtype, values.dtype
    key_cols = eventframe.columns(keys, "key" if not key_dt.names else "")
    if values.ndim == 2:
        val_cols: dict[str, Any] = {}
        for cpu in range(values.shape[1]):
            sub = eventframe.columns(np.ascontiguousarray(values[:, cpu]),
                                 "value" if not val_dt.names else "")
            val_cols.update({f"{name}[cpu{cpu}]": col for name, col in sub.items()})
        if not val_dt.names and val_dt.kind in "iuf":
            val_cols["total"] = values.sum(axis=1)
    else:
        val_cols = eventframe.columns(values, "value" if not val_dt.names else "")
    overlap = set(key_cols) & set(val_cols)
    key_cols = {(f"key.{k}" if k in overlap else k): v for k, v in key_cols.items()}
    return pd.DataFrame({**key_cols, **val_cols}, copy=False)


def record_from_row(row: Mapping[str, Any], dt: np.dtype, prefix: str,
                    value_cols: set[str]) -> dict[str, Any]:
    """The struct ``dt`` as a dict, from the columns of a row of :func:`frame` that
    :func:`~.eventframe.columns` made of it (fields under ``prefix``; a field that is also
    one of ``value_cols`` is read from its ``key.`` column)."""
    out: dict[str, Any] = {}
    for name in dt.names:
        sub = dt[name]
        col = f"{prefix}{name}"
        if sub.names:
            out[name] = record_from_row(row, sub, f"{col}.", value_cols)
            continue
        if col in value_cols and f"key.{col}" in row:
            col = f"key.{col}"
        if sub.subdtype is not None:
            out[name] = [row[f"{col}[{i}]"] for i in range(int(np.prod(sub.subdtype[1])))]
        else:
            out[name] = row[col]
    return out


def normalize_dtype(dt: np.dtype) -> np.dtype:
    """``dt`` with BCC's ``char`` arrays as ``S<N>`` strings and padding fields dropped.

    The layout (offsets, item size) is unchanged, so raw map bytes view as it.
    """
    if dt.names:
        names, formats, offsets = [], [], []
        for name in dt.names:
            if name.startswith("__pad"):
                continue
            sub, offset = dt.fields[name][:2]
            names.append(name)
            formats.append(normalize_dtype(sub))
            offsets.append(offset)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": dt.itemsize})
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        if base == np.dtype("S1") and len(shape) == 1:
            return np.dtype(f"S{shape[0]}")
        return np.dtype((normalize_dtype(base), shape))
    return dt


def stopped_error(program: str, stopped_at: float | None) -> BPFError:
    """What reading a map or global of the stopped program ``program`` raises."""
    when = time.strftime(" at %H:%M:%S", time.localtime(stopped_at)) if stopped_at else ""
    return BPFError(f"program {program!r} was stopped{when}; re-run its cell",
                    "Stopping a program releases its maps and globals; read them before stop() "
                    "to keep their values.")


class _Released:
    """The handle of a stopped program's map: its other fields stay, its descriptor is gone."""

    def __init__(self, handle: MapHandle, program: str, stopped_at: float | None) -> None:
        self._handle = handle
        self._program = program
        self._stopped_at = stopped_at

    @property
    def fd(self) -> int:
        raise stopped_error(self._program, self._stopped_at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _raw_dtype(size: int) -> np.dtype:
    return np.dtype({8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}.get(size, f"V{size}"))


class Maps(Named[Map]):
    """The maps of one program, by name."""

    def __init__(self, handles: Mapping[str, MapHandle]) -> None:
        super().__init__({name: Map(h) for name, h in handles.items()}, MAP)

    def release(self, program: str, stopped_at: float | None) -> None:
        """The program closed the maps: reading one now raises :func:`stopped_error`."""
        for m in self.values():
            if not isinstance(m.handle, _Released):
                m.handle = _Released(m.handle, program, stopped_at)

    @property
    def df(self) -> pd.DataFrame:
        """One row per map: kind, key and value types, entries, max_entries, full."""
        return Listing([m.info() for m in self.values()],
                       columns=["map", "kind", "key", "value", "entries", "max_entries", "full"])

    def __repr__(self) -> str:
        return f"<Maps {', '.join(self) or '(none)'}>"

    def _repr_html_(self) -> str:
        return self.df._repr_html_()
