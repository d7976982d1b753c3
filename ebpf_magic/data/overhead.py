"""What running a program costs: the kernel's run counts and run times as a frame.

:func:`frame` turns counters read over a window of seconds into one row per loaded
function (``NAME.overhead``, an :class:`Overhead`), with the probes that run it, its runs,
runs per second, nanoseconds per run and share of one CPU; :func:`totals` gives a
program's row of ``%bpf list``; :func:`sum_hosts` joins a program's frames from many
hosts. The counters are the kernel's (:mod:`ebpf_magic.kernel.runstats`); where it did not
count them, :func:`unmeasured` gives the functions with no numbers (missing, never zero)
and says why and how to make it count. :class:`Rates` keeps recent counters of many
programs and gives their rates between two readings (what ``%bpf top`` shows).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.kernel import runstats

COUNTERS = ["function", "probes", "prog_id", "runs", "run_time_ns", "seconds"]
"""What is measured per function (and what a recording keeps)."""
RATES = ["runs_per_s", "ns_per_run", "cpu_pct"]
"""What is derived: runs per second, nanoseconds per run, percent of one CPU."""
COLUMNS = COUNTERS + RATES
SUMMED_COLUMNS = ["function", "probes", "hosts", "runs", "run_time_ns", "seconds", *RATES]
"""The columns of a frame summed over hosts (:func:`sum_hosts`)."""
TOTALS = ["runs_per_s", "ns_per_run", "cpu_pct"]
"""The columns ``%bpf list`` shows per program."""
_DTYPES = {"function": object, "probes": object, "prog_id": np.int64, "hosts": np.int64,
           "runs": np.int64, "run_time_ns": np.int64, "seconds": np.float64,
           "runs_per_s": np.float64, "ns_per_run": np.float64, "cpu_pct": np.float64}
# where nothing was counted: missing values, not zeros
_MISSING = {"runs": "Int64", "run_time_ns": "Int64", "seconds": "Float64",
            "runs_per_s": "Float64", "ns_per_run": "Float64", "cpu_pct": "Float64"}


class Overhead(pd.DataFrame):
    """``NAME.overhead``: a DataFrame of one row per function (see :data:`COLUMNS`).

    Where the kernel did not count the runs, the counters are missing (``<NA>``), never
    zeros, and :attr:`unmeasured` (``attrs["unmeasured"]``) says why and how to make it
    count; the table shows that above itself. Frames derived from it are plain frames.
    """

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    @property
    def unmeasured(self) -> str:
        """Why the counters are missing and how to enable them; "" where they were counted."""
        return why(self)

    def __repr__(self) -> str:
        table = super().__repr__()
        return f"not measured: {self.unmeasured}\n{table}" if self.unmeasured else table

    def _repr_html_(self) -> str | None:
        table = super()._repr_html_()
        if not self.unmeasured:
            return table
        return (f'<p style="color:#9a6700"><b>not measured:</b> {escape(self.unmeasured)}'
                f"</p>{table}")


def why(df: pd.DataFrame) -> str:
    """Why ``df`` (an overhead frame) holds no numbers, and how to get them; "" if it does."""
    return str(df.attrs.get("unmeasured", ""))


def not_counted(name: str, status: runstats.Status) -> str:
    """Why program ``name``'s overhead is missing where the kernel does not count runs."""
    return (f"{name}: BPF run statistics are {status.detail}. "
            f"{status.hint or runstats.HOW_TO_ENABLE}")


def unmeasured(rows: Iterable[Mapping[str, Any]], reason: str) -> Overhead:
    """``rows`` (functions: ``function``, ``probes``, ``prog_id``) with every counter and
    rate missing, and ``reason`` (why, and how to enable them) in ``attrs["unmeasured"]``."""
    df = pd.DataFrame([{k: r[k] for k in ("function", "probes", "prog_id")} for r in rows],
                      columns=COLUMNS)
    df = Overhead(df.astype({**{c: _DTYPES[c] for c in df.columns}, **_MISSING}))
    df.attrs["unmeasured"] = reason
    return df


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (with :data:`COUNTERS`) with :data:`RATES` computed from its counters.

    A function that never ran has no time per run (NaN), not zero.
    """
    runs = df["runs"].to_numpy(np.float64)
    time_ns = df["run_time_ns"].to_numpy(np.float64)
    seconds = df["seconds"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["runs_per_s"] = np.where(seconds > 0, runs / seconds, np.nan)
        df["ns_per_run"] = np.where(runs > 0, time_ns / runs, np.nan)
        df["cpu_pct"] = np.where(seconds > 0, time_ns / (seconds * 1e9) * 100, np.nan)
    return df


def frame(rows: Iterable[Mapping[str, Any]]) -> Overhead:
    """One row per function from ``rows`` of :data:`COUNTERS`, with :data:`RATES` added."""
    return Overhead(derive(typed(pd.DataFrame(list(rows), columns=COUNTERS))))


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s overhead columns in their types: names as objects, counts as int64,
    seconds and rates as float64."""
    return df.astype({c: t for c, t in _DTYPES.items() if c in df.columns})


def restore(rows: list[Mapping[str, Any]]) -> Overhead:
    """The frame whose rows a recording kept: :data:`COLUMNS` (one host) or
    :data:`SUMMED_COLUMNS` (a cluster program's)."""
    columns = SUMMED_COLUMNS if rows and "hosts" in rows[0] else COLUMNS
    return Overhead(typed(pd.DataFrame(list(rows), columns=columns)))


def counters(functions: Mapping[str, runstats.RunStats], probes: Mapping[str, str],
             seconds: float) -> list[dict[str, Any]]:
    """Rows of :data:`COUNTERS`: each function's counters over ``seconds``, with its probes."""
    return [{"function": fn, "probes": probes.get(fn, ""), "prog_id": s.prog_id,
             "runs": s.run_cnt, "run_time_ns": s.run_time_ns, "seconds": seconds}
            for fn, s in functions.items()]


def totals(df: pd.DataFrame) -> dict[str, float]:
    """A program's :data:`TOTALS` from its overhead frame: its functions' rates summed,
    nanoseconds per run over all of their runs; NaN where it was not measured."""
    if why(df):
        return dict.fromkeys(TOTALS, math.nan)
    runs = int(df["runs"].sum())
    return {"runs_per_s": float(df["runs_per_s"].sum()),
            "ns_per_run": float(df["run_time_ns"].sum()) / runs if runs else math.nan,
            "cpu_pct": float(df["cpu_pct"].sum())}


def sum_hosts(frames: Mapping[Any, pd.DataFrame]) -> Overhead:
    """One program's frames from many hosts as one: each function's runs, run time, runs
    per second and CPU share summed over ``hosts`` (how many hosts it ran on), ``seconds``
    the longest window; no ``prog_id`` (each host has its own)."""
    parts = [df.assign(hosts=1) for df in frames.values() if len(df)]
    if not parts:
        return Overhead(typed(pd.DataFrame(columns=SUMMED_COLUMNS)))
    joined = pd.concat(parts, ignore_index=True)
    summed = joined.groupby(["function", "probes"], sort=False, as_index=False).agg(
        hosts=("hosts", "sum"), runs=("runs", "sum"), run_time_ns=("run_time_ns", "sum"),
        seconds=("seconds", "max"), runs_per_s=("runs_per_s", "sum"),
        cpu_pct=("cpu_pct", "sum"))
    with np.errstate(divide="ignore", invalid="ignore"):
        summed["ns_per_run"] = np.where(summed["runs"] > 0,
                                        summed["run_time_ns"] / summed["runs"], np.nan)
    return Overhead(typed(summed[SUMMED_COLUMNS]))


def costly(df: pd.DataFrame, cpu_pct: float) -> bool:
    """True when the functions of ``df`` were measured to take at least ``cpu_pct`` % of a
    CPU together."""
    return bool(len(df)) and not why(df) and totals(df)["cpu_pct"] >= cpu_pct


def describe(name: str, df: pd.DataFrame) -> str:
    """One line: what program ``name`` costs, and its most expensive function."""
    t = totals(df)
    line = (f"{name} costs {t['cpu_pct']:.2f}% of a CPU: {t['runs_per_s']:,.0f} runs/s at "
            f"{_ns(t['ns_per_run'])} a run")
    if len(df) > 1:
        top = df.sort_values("cpu_pct", ascending=False).iloc[0]
        line += f"; most in {top['function']} ({top['cpu_pct']:.2f}%)"
    return line


def _ns(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f} ns"


# -- rates between readings (%bpf top) --------------------------------------------------


@dataclass
class Reading:
    """One program's counters at one moment (``time.monotonic()``)."""

    at: float
    run_cnt: int
    run_time_ns: int


class Rates:
    """Recent readings of many programs, by key, and their rates between the last two.

    ``keep`` readings are kept per program (what a sparkline draws); a program not read
    in a round is forgotten (it was unloaded).
    """

    def __init__(self, keep: int = 60) -> None:
        self.keep = keep
        self.history: dict[Any, collections.deque[tuple[float, float]]] = {}
        self._last: dict[Any, Reading] = {}

    def add(self, readings: Mapping[Any, runstats.RunStats], at: float | None = None
            ) -> dict[Any, dict[str, float]]:
        """Take one round of readings; each program's rates since its previous reading
        (NaN for one read for the first time)."""
        at = time.monotonic() if at is None else at
        out = {}
        for key, s in readings.items():
            before = self._last.get(key)
            now = Reading(at, s.run_cnt, s.run_time_ns)
            self._last[key] = now
            if before is None or now.at <= before.at or now.run_cnt < before.run_cnt:
                out[key] = {"runs_per_s": math.nan, "ns_per_run": math.nan,
                            "cpu_pct": math.nan}
                continue
            dt = now.at - before.at
            runs = now.run_cnt - before.run_cnt
            spent = now.run_time_ns - before.run_time_ns
            rate = {"runs_per_s": runs / dt, "ns_per_run": spent / runs if runs else math.nan,
                    "cpu_pct": spent / (dt * 1e9) * 100}
            out[key] = rate
            self.history.setdefault(key, collections.deque(maxlen=self.keep)).append(
                (at, rate["cpu_pct"]))
        for gone in set(self._last) - set(readings):
            del self._last[gone]
            self.history.pop(gone, None)
        return out

    def series(self, key: Any) -> Sequence[float]:
        """The CPU shares of ``key`` at its recent readings, oldest first."""
        return [v for _, v in self.history.get(key, ())]
