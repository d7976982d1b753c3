"""Histograms as bucket frames, bpftrace-style text and plots.

A histogram is a DataFrame of buckets: optional section columns (the other
fields of a keyed ``BPF_HISTOGRAM``'s key), then ``slot``, ``low`` (inclusive),
``high`` (exclusive) and ``count``. Live maps, replayed recordings and raw
values all become the same :class:`Histogram`, so text, plots and widgets work
with or without a kernel.

Log2 buckets follow ``bpf_log2l()``: slot 0 holds 0, slot ``i >= 1`` holds
``[2**(i-1), 2**i)``, and slot -1 every negative value (bpftrace's ``hist()`` counts
them). Linear buckets of width ``step``: slot ``i`` holds ``[i*step, (i+1)*step)``.
A bucket open below has ``low`` :data:`OPEN_LOW`; one open above has ``high``
:data:`OPEN_HIGH` (bpftrace's ``lhist()`` counts values outside its range so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.internal import dtypes

KINDS = ("log2", "linear")
BAR_WIDTH = 52
BUCKET_COLUMNS = ("slot", "low", "high", "count")
OPEN_LOW = int(np.iinfo(np.int64).min)  # the ``low`` of a bucket with no lower bound
OPEN_HIGH = int(np.iinfo(np.int64).max)  # the ``high`` of a bucket with no upper bound


def bounds(slots: np.ndarray, kind: str = "log2", step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive low and exclusive high bound of each bucket index in ``slots``."""
    slots = np.asarray(slots, dtype=np.int64)
    if kind == "log2":
        high = np.left_shift(np.int64(1), np.maximum(slots, 0))
        low = np.where(slots == 0, 0, high >> 1)
        negative = slots < 0
        return np.where(negative, OPEN_LOW, low), np.where(negative, 0, high)
    if kind == "linear":
        return slots * step, (slots + 1) * step
    raise ValueError(f"unknown histogram kind {kind!r}; use one of {KINDS}")


def log2_slots(values: np.ndarray) -> np.ndarray:
    """The ``bpf_log2l()`` bucket of each value: 0 for 0, ``floor(log2(v)) + 1`` above."""
    v = np.asarray(values).astype(np.uint64)
    out = np.zeros(len(v), dtype=np.int64)
    nz = v > 0
    out[nz] = np.floor(np.log2(v[nz].astype(np.float64))).astype(np.int64) + 1
    # float rounding near 2**53 and above: correct by comparing with exact powers
    hi = nz & (v >= np.uint64(1 << 52))
    if hi.any():
        out[hi] = [int(x).bit_length() for x in v[hi]]
    return out


def _size(n: int) -> str:
    """1024-based suffixes as bpftrace prints them: 1K, 2M..."""
    for suffix in ("E", "P", "T", "G", "M", "K"):
        unit = 1 << (10 * ("KMGTPE".index(suffix) + 1))
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def label(low: int, high: int, kind: str = "log2") -> str:
    """A bucket's label in bpftrace's style: ``[0]``, ``[1]``, ``[2, 4)``, ``[1K, 2K)``,
    and for open buckets ``(..., 0)``, ``[100, ...)``."""
    size = _size if kind == "log2" else str
    if low == OPEN_LOW:
        return f"(..., {size(int(high))})"
    if high == OPEN_HIGH:
        return f"[{size(int(low))}, ...)"
    if kind == "log2":
        if high - low == 1:
            return f"[{_size(int(low))}]"
        return f"[{_size(int(low))}, {_size(int(high))})"
    return f"[{int(low)}, {int(high)})"


def bucket_frame(slots: np.ndarray, counts: np.ndarray, kind: str = "log2", step: int = 1,
                 sections: pd.DataFrame | None = None) -> pd.DataFrame:
    """Buckets from slot indices and counts, gaps filled with zeros.

    Each section (a distinct row of ``sections``, one per input) keeps the
    buckets from its lowest to its highest non-empty one, as bpftrace prints.
    """
    df = pd.DataFrame({"slot": np.asarray(slots, dtype=np.int64),
                       "count": np.asarray(counts, dtype=np.int64)})
    names: list[str] = []
    if sections is not None and len(sections.columns):
        names = list(sections.columns)
        df = pd.concat([sections.reset_index(drop=True), df], axis=1)
    df = df[df["count"] != 0]
    parts = []
    groups = df.groupby(names, sort=True, dropna=False) if names else [((), df)]
    for section, part in groups:
        if part.empty:  # a histogram that has counted nothing yet
            continue
        part = part.groupby("slot", as_index=False)["count"].sum()
        full = pd.DataFrame({"slot": np.arange(part["slot"].min(), part["slot"].max() + 1)})
        full = full.merge(part, on="slot", how="left").fillna({"count": 0})
        section = section if isinstance(section, tuple) else (section,)
        for name, value in zip(names, section, strict=True):
            full.insert(names.index(name), name, value)
        parts.append(full)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {**{n: [] for n in names}, "slot": np.zeros(0, np.int64), "count": np.zeros(0, np.int64)})
    low, high = bounds(out["slot"].to_numpy(), kind, step)
    out.insert(len(names) + 1, "low", low)
    out.insert(len(names) + 2, "high", high)
    out["count"] = out["count"].astype(np.int64)
    return out


def from_slots(keys: np.ndarray, counts: np.ndarray, kind: str = "log2", step: int = 1,
               name: str = "") -> Histogram:
    """A histogram from a ``BPF_HISTOGRAM`` snapshot: integer keys are slots;
    a struct key's ``slot`` field is the slot and its other fields are sections."""
    if keys.dtype.names:
        if "slot" not in keys.dtype.names:
            raise ValueError(f"histogram {name!r} has a struct key without a 'slot' field: "
                             f"{dtypes.describe(keys.dtype)}")
        rest = [n for n in keys.dtype.names if n != "slot"]
        sections = pd.DataFrame({c: v for n in rest
                                 for c, v in dtypes.columns(keys[n], n).items()})
        slots = keys["slot"]
    else:
        sections, slots = None, keys
    return Histogram(bucket_frame(slots, counts, kind, step, sections), kind=kind, name=name)


def from_values(values: Any, kind: str = "log2", step: int = 1, name: str = "") -> Histogram:
    """A histogram of raw values (e.g. a stream's latency column), bucketed as BPF would."""
    v = np.asarray(values)
    slots = log2_slots(v) if kind == "log2" else (v // step).astype(np.int64)
    return Histogram(bucket_frame(slots, np.ones(len(v), np.int64), kind, step), kind=kind,
                     name=name)


EMPTY = "(empty: nothing counted yet)"


class Histogram:
    """Buckets of one histogram (or one per section of a keyed histogram).

    ``print()`` gives bpftrace-style ASCII bars, :attr:`df` the bucket frame,
    :meth:`plot` a bar chart. Build one from any bucket frame with ``low``,
    ``high`` and ``count`` columns, such as a recording's.
    """

    def __init__(self, df: pd.DataFrame, kind: str | None = None, name: str = "") -> None:
        missing = {"low", "high", "count"} - set(df.columns)
        if missing:
            raise ValueError(f"a bucket frame needs columns low, high, count; missing "
                             f"{sorted(missing)}")
        self.df = df
        self.name = name
        self.kind = kind or _guess_kind(df)
        if self.kind not in KINDS:
            raise ValueError(f"unknown histogram kind {self.kind!r}; use one of {KINDS}")

    @property
    def section_columns(self) -> list[str]:
        return [c for c in self.df.columns if c not in BUCKET_COLUMNS]

    def sections(self) -> list[tuple[tuple, pd.DataFrame]]:
        """(section values, its buckets) pairs; one pair with ``()`` when unkeyed."""
        cols = self.section_columns
        if not cols:
            return [((), self.df)]
        return [(k if isinstance(k, tuple) else (k,), part)
                for k, part in self.df.groupby(cols, sort=False, dropna=False)]

    def labels(self, df: pd.DataFrame | None = None) -> list[str]:
        df = self.df if df is None else df
        return [label(lo, hi, self.kind) for lo, hi in zip(df["low"], df["high"], strict=True)]

    @property
    def total(self) -> int:
        return int(self.df["count"].sum())

    def __str__(self) -> str:
        if self.df.empty:
            return f"@{self.name}: {EMPTY}\n"
        out = []
        cols = self.section_columns
        for section, part in self.sections():
            title = f"@{self.name}" if self.name else "@"
            if cols:
                title += "[" + ", ".join(str(v) for v in section) + "]"
            out.append(title + ":")
            peak = max(int(part["count"].max()) if len(part) else 0, 1)
            for text, count in zip(self.labels(part), part["count"], strict=True):
                bar = "@" * int(count * BAR_WIDTH // peak)
                out.append(f"{text:<20}{int(count):>8} |{bar:<{BAR_WIDTH}}|")
            out.append("")
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """A bar chart with bpftrace's bucket labels; returns the matplotlib Axes."""
        from ebpf_magic.present import plots

        return plots.hist(self, ax=ax, **kwargs)


def _guess_kind(df: pd.DataFrame) -> str:
    """log2 when every bucket is a power-of-two range (or [0]), else linear."""
    closed = df[(df["low"] != OPEN_LOW) & (df["high"] != OPEN_HIGH)]
    if not len(closed):
        return "log2"
    low, high = closed["low"].to_numpy(np.int64), closed["high"].to_numpy(np.int64)
    width = high - low
    pow2 = ((high & (high - 1)) == 0) & ((low == 0) & (high == 1) | (low * 2 == high))
    if pow2.all() and not (len(np.unique(width)) == 1 and width[0] > 1):
        return "log2"
    return "linear"


def as_histogram(obj: Any, kind: str | None = None, step: int = 1) -> Histogram:
    """A :class:`Histogram` from a Histogram, a bucket frame, or a map with ``.hist()``."""
    if isinstance(obj, Histogram):
        return obj
    if isinstance(obj, pd.DataFrame):
        return Histogram(obj, kind=kind)
    if hasattr(obj, "hist"):  # a map: MapView.hist
        return obj.hist(kind=kind, step=step)
    raise TypeError(f"cannot read a histogram from {type(obj).__name__}; pass a Histogram, a "
                    "bucket DataFrame (low, high, count) or a histogram map")
