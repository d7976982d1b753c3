"""Building blocks for tools' tables and pictures, from map and event frames.

Each takes and returns plain DataFrames (so live runs, stopped runs and recordings are
handled alike) and reuses the project's histograms, stacks and plots: a tool declares
what its maps mean, these turn that into a tidy, typed table with units in column names.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.data import histograms

_PER_CPU = re.compile(r"^(?P<name>.*)\[cpu\d+\]$")
TOP = 8  # groups a picture shows by name; the rest are summed as "other"


# -- map frames ---------------------------------------------------------------------------


def summed(df: pd.DataFrame) -> pd.DataFrame:
    """A per-CPU map's frame with each value summed over the CPUs (``x[cpu0]``... -> ``x``).

    Frames of other maps come back unchanged.
    """
    groups: dict[str, list[str]] = {}
    for col in df.columns:
        m = _PER_CPU.match(str(col))
        if m:
            groups.setdefault(m.group("name"), []).append(col)
    if not groups:
        return df
    keep = [c for c in df.columns if not _PER_CPU.match(str(c)) and c != "total"]
    out = df[keep].copy()
    for name, cols in groups.items():
        out[name] = df[cols].sum(axis=1).to_numpy()
    return out


def log2_table(df: pd.DataFrame, unit: str, by: Sequence[str] = (), slot: str = "slot",
               count: str = "count") -> pd.DataFrame:
    """Log2 buckets of ``unit`` from a histogram map's frame (a ``slot`` and a ``count``).

    Columns: ``by`` (one histogram each), ``low_UNIT`` (inclusive), ``high_UNIT``
    (exclusive), ``count``; buckets from each histogram's lowest to highest non-empty one,
    empty ones between them with count 0, as bpftrace prints.
    """
    return _buckets(df, "log2", 1, unit, by, slot, count)


def linear_table(df: pd.DataFrame, unit: str, step: int = 1, by: Sequence[str] = (),
                 slot: str = "slot", count: str = "count") -> pd.DataFrame:
    """Linear buckets ``step`` wide, as :func:`log2_table` gives log2 ones."""
    return _buckets(df, "linear", step, unit, by, slot, count)


def _buckets(df: pd.DataFrame, kind: str, step: int, unit: str, by: Sequence[str], slot: str,
             count: str) -> pd.DataFrame:
    sections = df[list(by)].reset_index(drop=True) if by else None
    slots = df[slot].to_numpy() if len(df) else np.zeros(0, np.int64)
    counts = df[count].to_numpy() if len(df) else np.zeros(0, np.int64)
    out = histograms.bucket_frame(slots, counts, kind, step, sections)
    out = out.drop(columns="slot").rename(columns={"low": f"low_{unit}", "high": f"high_{unit}"})
    for col in by:
        if col in df.columns and len(out):
            out[col] = out[col].astype(df[col].dtype)
    return out.reset_index(drop=True)


def histogram(table: pd.DataFrame, unit: str, name: str = "", kind: str = "log2",
              by: Sequence[str] = ()) -> histograms.Histogram:
    """A bucket table of :func:`log2_table` as the project's
    :class:`~ebpf_magic.data.histograms.Histogram` (text bars, ``.plot()``)."""
    cols = [*by, f"low_{unit}", f"high_{unit}", "count"]
    df = table[cols].rename(columns={f"low_{unit}": "low", f"high_{unit}": "high"})
    return histograms.Histogram(df.reset_index(drop=True), kind=kind, name=name)


def top_sections(table: pd.DataFrame, by: Sequence[str], n: int = TOP) -> pd.DataFrame:
    """The rows of the ``n`` groups of ``by`` with the largest counts."""
    if not by or not len(table):
        return table
    totals = table.groupby(list(by), dropna=False)["count"].sum().nlargest(n)
    keep = table.set_index(list(by)).index.isin(totals.index)
    return table[keep]


# -- event frames -------------------------------------------------------------------------


def errno_name(codes: Any) -> list[str]:
    """``ENOENT`` for 2 ...; "" for 0."""
    return ["" if not c else errno.errorcode.get(int(c), str(int(c))) for c in codes]


def signal_name(numbers: Any) -> list[str]:
    """``SIGKILL`` for 9 ...; "" for 0."""
    out = []
    for n in numbers:
        try:
            out.append(signal.Signals(int(n)).name if n else "")
        except ValueError:
            out.append(f"SIG{int(n)}")
    return out


def ip_addresses(family: Any, v4: Any, v6: Any) -> list[str]:
    """Addresses as text from address family (2 or 10) and raw 4- and 16-byte addresses.

    ``v4`` and ``v6`` are frames (or 2-D arrays) of the bytes, one row each.
    """
    v4 = np.asarray(v4, dtype=np.uint8).reshape(len(family), -1)
    v6 = np.asarray(v6, dtype=np.uint8).reshape(len(family), -1)
    out = []
    for fam, a4, a6 in zip(family, v4, v6, strict=True):
        if int(fam) == 2:
            out.append(str(ipaddress.IPv4Address(bytes(a4[:4]))))
        elif int(fam) == 10:
            out.append(str(ipaddress.IPv6Address(bytes(a6[:16]))))
        else:
            out.append("")
    return out


def columns_like(df: pd.DataFrame, name: str) -> list[str]:
    """The columns ``name[0]``, ``name[1]``... of a flattened array field, in order."""
    found = [c for c in df.columns if re.fullmatch(rf"{re.escape(name)}\[\d+\]", str(c))]
    return sorted(found, key=lambda c: int(str(c)[len(name) + 1:-1]))


def array(df: pd.DataFrame, name: str) -> np.ndarray:
    """A flattened array field ``name[0]``... of ``df`` as one 2-D array."""
    cols = columns_like(df, name)
    if not cols:
        return np.zeros((len(df), 0))
    return df[cols].to_numpy()


# -- stacks -------------------------------------------------------------------------------


def flame_input(table: pd.DataFrame, value: str, root: str = "comm") -> pd.DataFrame:
    """``stack`` (``root`` prepended) and ``count`` columns, as flame graphs take them."""
    stack = table[root].astype(str) + ";" + table["stack"].astype(str)
    return pd.DataFrame({"stack": stack.str.rstrip(";").to_numpy(),
                         "count": table[value].to_numpy()})


# -- pictures -----------------------------------------------------------------------------


def plot_histogram(table: pd.DataFrame, unit: str, ax: Any, what: str,
                   by: Sequence[str] = (), name: str = "") -> Any:
    """A log2 bucket table as bars (one group per section of ``by``, the largest few)."""
    from ebpf_magic.present import plots

    shown = top_sections(table, by)
    ax = plots.hist(histogram(shown, unit, name, by=by), ax=ax, title=name)
    ax.set_xlabel(f"{what} ({unit}), log2 buckets")
    return ax


def plot_heatmap(table: pd.DataFrame, unit: str, ax: Any, what: str) -> Any:
    """Per-interval log2 bucket tables (a ``time`` column) as a heatmap over time."""
    from ebpf_magic.present import plots

    pairs = [(t, histogram(part, unit)) for t, part in table.groupby("time", sort=True)]
    ax = plots.heatmap(pairs, kind="log2", ax=ax)
    ax.set_ylabel(f"{what} ({unit}, log2 buckets)")
    return ax


def plot_rate(df: pd.DataFrame, ax: Any, by: str = "comm", time: str = "time",
              interval: str = "1s") -> Any:
    """Events per second over time, one line per value of ``by`` (the busiest few)."""
    from ebpf_magic.present import plots

    if not len(df):
        ax.text(0.5, 0.5, "(no events)", transform=ax.transAxes, ha="center", va="center")
        return ax
    top = df[by].value_counts().nlargest(TOP).index
    labelled = df.assign(**{by: df[by].where(df[by].isin(top), "other")})
    return plots.rate(labelled, time=time, interval=interval, by=by, ax=ax)


def plot_bars(df: pd.DataFrame, label: str | Sequence[str], value: str, ax: Any,
              title: str = "", n: int = 20) -> Any:
    """Horizontal bars of ``value`` for the ``n`` largest rows, labelled by ``label``."""
    labels = [label] if isinstance(label, str) else list(label)
    top = df.nlargest(n, value) if len(df) else df
    names = top[labels].astype(str).agg(" ".join, axis=1) if len(top) else []
    ax.barh(list(names)[::-1], top[value].to_numpy()[::-1])
    ax.set_xlabel(value)
    ax.set_title(title)
    if not len(df):
        ax.text(0.5, 0.5, "(nothing counted)", transform=ax.transAxes, ha="center",
                va="center")
    return ax


def plot_flame(table: pd.DataFrame, value: str, ax: Any, title: str = "") -> Any:
    """A flame graph of a stack table (``comm``, ``stack``, ``value``)."""
    from ebpf_magic.present import plots

    ax = plots.flamegraph(flame_input(table, value), ax=ax, title=title)
    ax.set_xlabel(value)
    return ax
