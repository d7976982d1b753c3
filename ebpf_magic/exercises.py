"""Exercises that check themselves: a learner's answer against ground truth.

A teaching notebook asks for a program or an analysis, measures the right answer by
other means (a workload whose count it knows, a value from ``/proc``, a histogram
computed from raw values) and calls :func:`check`. The :class:`Verdict` says the answer
is right, or names the mistake it looks like:

* counted per thread where per process was asked, or the reverse (``threads``);
* one CPU's slot of a per-CPU map (``per_cpu``), or parts not added up;
* every value off by a unit's factor: nanoseconds for microseconds, bytes for KiB;
* histogram buckets one log2 slot off, or read cumulatively;
* running totals where what each interval added was asked;
* keys in network byte order;
* a mistake the notebook names with the value it would give (``mistakes``);
* else more or fewer than the truth, and where.

Answers are read through the read API (:mod:`ebpf_magic.api`) only, so a live program,
a replayed one and plain values check alike. An exercise whose answer is a program the
learner writes says so where that program is replayed: nothing of theirs ran.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.api import MapView, ProgramView, StreamView
from ebpf_magic.data.histograms import Histogram, label

RIGHT, WRONG, EMPTY, NEEDS_KERNEL = "right", "not yet", "not attempted yet", "needs a live kernel"
_MARKS = {RIGHT: "✓", WRONG: "✗", EMPTY: "…", NEEDS_KERNEL: "◌"}
_COLOURS = {RIGHT: "#1a7f37", WRONG: "#b3261e", EMPTY: "#666666", NEEDS_KERNEL: "#8a6d00"}
# units a number can be off by, each scale in its family's smallest unit
_TIME = {"ns": 1.0, "µs": 1e3, "ms": 1e6, "s": 1e9}
_SIZE = {"bytes": 1.0, "KiB": 1024.0, "MiB": 1024.0 ** 2}
_FACTORS = (1e3, 1e6, 1e9, 1024.0, 1024.0 ** 2)
_BUCKETS = {"low", "high", "count"}  # the columns of a histogram's frame
_CLOSE = 0.05  # how far a ratio may stray from a unit's factor and still be that factor


@dataclass(frozen=True, repr=False)
class Verdict:
    """What :func:`check` found: ``status`` (:data:`RIGHT`, :data:`WRONG`, :data:`EMPTY`
    or :data:`NEEDS_KERNEL`) and a message saying why. True only when right."""

    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == RIGHT

    def __str__(self) -> str:
        return f"{_MARKS[self.status]} {self.status}: {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = _COLOURS[self.status]
        return (f'<div style="border-left:4px solid {colour};padding:2px 8px">'
                f'<b style="color:{colour}">{_MARKS[self.status]} {self.status}</b>: '
                f"{html.escape(self.message)}</div>")


class _Unreadable(ValueError):
    """A value of a shape no comparison takes; the message says what was found."""


def check(answer: Any, truth: Any, *, program: ProgramView | None = None,
          key: str | None = None, tolerance: float = 0.0, unit: str = "",
          threads: Mapping[int, int] | None = None, per_cpu: MapView | None = None,
          mistakes: Mapping[str, Any] | None = None) -> Verdict:
    """Compare ``answer`` with ``truth`` and say why they differ.

    ``answer``: a number, a mapping or Series (key -> number), a list, a
    :class:`~ebpf_magic.data.histograms.Histogram`, a DataFrame, a map (:class:`MapView`:
    its entries, a per-CPU map's ``total``, a histogram map's buckets) or an event stream
    (:class:`StreamView`: with ``key``, how many events carry each value of that column).
    None or ``...`` means not attempted. ``truth``: the same kinds, measured by the
    notebook; only its keys are compared (a map may hold other processes' entries).

    ``program``: the learner's program, when the exercise is to write one: a replayed
    program cannot be checked (:data:`NEEDS_KERNEL`), a stopped one is not there yet.
    ``tolerance``: the relative error allowed (sampled measurements). ``unit``: the unit
    the question asks for ("ns", "µs", "ms", "s", "bytes", "KiB", "MiB"), named in hints.
    ``threads``: ``{thread id: process id}`` of the workload's threads, to recognise
    counts per thread where per process was asked and the reverse. ``per_cpu``: the
    per-CPU map a number was read from, to recognise one CPU's slot. ``mistakes``:
    ``{hint: the answer that mistake gives}``, told when the answer matches one.
    """
    if program is not None and not program.running:
        if program.readable:
            return Verdict(NEEDS_KERNEL, f"{program.name} is replayed from a recording here, "
                           "so nothing you wrote ran; this exercise checks your program, in a "
                           "kernel that loads BPF (run the notebook live: as root, or in the "
                           "'Python 3 (eBPF)' kernel). Exercises on recorded data work here.")
        return Verdict(EMPTY, f"{program.name} is not running (stopped, or its cell failed): "
                       "run your %%bpf cell again, then the cells after it")
    want = _read(truth, key)
    wrong = {hint: w for hint, w in ((h, _read(v, key)) for h, v in (mistakes or {}).items())
             if w is not None}
    try:
        got = _read(answer, key)
    except _Unreadable as e:
        return Verdict(WRONG, str(e))
    if got is None:
        return Verdict(EMPTY, _empty(answer))
    if want is None:
        return Verdict(EMPTY, "there is no ground truth yet: run the cells above first")
    if _same(got, want, tolerance):
        if tolerance and not _same(got, want, 0.0):
            return Verdict(RIGHT, f"{_describe(got)}, and the ground truth is {_describe(want)} "
                           f"(within {tolerance:.0%})")
        return Verdict(RIGHT, f"matches the ground truth, {_describe(want)}")
    for hint, value in wrong.items():
        if _same(got, value, tolerance):
            return Verdict(WRONG, hint)
    return Verdict(WRONG, _diagnose(got, want, tolerance, unit, threads, per_cpu))


# --- answers as numbers, {key: number}, [numbers] or Histograms --------------------------

def _read(obj: Any, key: str | None) -> Any:
    """The answer in one of four shapes, or None when nothing is in it yet."""
    if obj is None or obj is Ellipsis:
        return None
    if isinstance(obj, MapView):  # before StreamView: a stream fails this test cheaply
        df = obj.df
        obj = obj.hist() if _BUCKETS <= set(df.columns) else df  # the kind its program declared
    elif isinstance(obj, StreamView):
        obj = obj.df
    if isinstance(obj, Histogram):
        return obj if obj.total else None
    if isinstance(obj, pd.DataFrame):
        return _read_frame(obj, key)
    if isinstance(obj, pd.Series):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        out = {_plain(k): _number(v) for k, v in obj.items()}
        return out if any(v for v in out.values()) else None
    if isinstance(obj, (list, tuple, np.ndarray)):
        values = [_number(v) for v in obj]
        return values if any(v is not None for v in values) else None
    return _number(obj)


def _read_frame(df: pd.DataFrame, key: str | None) -> Any:
    if df.empty:
        return None
    if _BUCKETS <= set(df.columns):
        hist = Histogram(df)
        return hist if hist.total else None
    if key is not None:
        if key not in df.columns:
            raise _Unreadable(f"there is no column {key!r} to count by (columns: "
                              f"{', '.join(map(str, df.columns))})")
        return {_plain(k): float(n) for k, n in df[key].value_counts().items()}
    value = next((c for c in ("total", "value", "count") if c in df.columns), None)
    keys = [c for c in df.columns if c != value and not str(c).startswith("value[")]
    if value is None or len(keys) > 1:
        raise _Unreadable(f"a frame with columns {', '.join(map(str, df.columns))}: give one "
                          "number, a Series, or a frame of key and value")
    if not keys:
        return _number(df[value].sum())
    out = {_plain(k): _number(v) for k, v in zip(df[keys[0]], df[value], strict=True)}
    return out if any(out.values()) else None


def _plain(key: Any) -> Any:
    """Keys compare across numpy and Python: integers as int, the rest as they are."""
    if isinstance(key, (np.integer, np.bool_)):
        return int(key)
    if isinstance(key, float) and key.is_integer():
        return int(key)
    return key


def _number(value: Any) -> float | None:
    if value is None or value is Ellipsis:
        return None
    if isinstance(value, (pd.Series, pd.DataFrame, list, tuple, np.ndarray, Mapping)):
        raise _Unreadable(f"a value that is itself a collection ({type(value).__name__}) where "
                          "a number was expected")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Unreadable(f"{value!r} is not a number") from None


def _empty(answer: Any) -> str:
    if answer is None or answer is Ellipsis:
        return "replace the placeholder with your answer"
    name = getattr(answer, "name", "") if isinstance(answer, (MapView, StreamView)) else ""
    what = f"{name} is" if name else "your answer is"
    return f"{what} empty: nothing counted yet (fill in the program, then run the workload)"


def _buckets(hist: Histogram) -> dict[tuple[int, int], float]:
    """A histogram's non-empty buckets as ``{(low, high): count}``."""
    df = hist.df[hist.df["count"] != 0]
    out: dict[tuple[int, int], float] = {}
    for low, high, n in zip(df["low"], df["high"], df["count"], strict=True):
        out[int(low), int(high)] = out.get((int(low), int(high)), 0.0) + float(n)
    return out


def _slots(buckets: dict[tuple[int, int], float]) -> dict[int, float] | None:
    """The buckets as ``{log2 slot: count}``, or None unless every one is a log2 bucket."""
    out = {}
    for low, high in buckets:
        slot = high.bit_length() - 1
        if high != 1 << slot or low != (0 if slot == 0 else high >> 1):
            return None
        out[slot] = buckets[low, high]
    return out


# --- comparing -----------------------------------------------------------------------------

def _close(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= max(tolerance * abs(b), 1e-9 * max(1.0, abs(b)))


def _same(got: Any, want: Any, tolerance: float) -> bool:
    """True when ``got`` is ``want``: on ``want``'s keys (a map may hold more), element by
    element, bucket by bucket."""
    if isinstance(want, Histogram):
        if not isinstance(got, Histogram):
            return False
        g, w = _buckets(got), _buckets(want)
        return all(_close(g.get(b, 0.0), w.get(b, 0.0), tolerance) for b in set(g) | set(w))
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            _close(got.get(k) or 0.0, v or 0.0, tolerance) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            _close(g, w, tolerance) for g, w in zip(got, want, strict=True))
    return isinstance(got, float) and _close(got, want, tolerance)


# --- naming the mistake ----------------------------------------------------------------------

def _diagnose(got: Any, want: Any, tolerance: float, unit: str,
              threads: Mapping[int, int] | None, per_cpu: MapView | None) -> str:
    if isinstance(want, float) and isinstance(got, (dict, list)):
        return _parts(got, want, tolerance, per_cpu)
    if isinstance(want, Histogram):
        return _histogram(got, want, unit)
    if type(got) is not type(want):
        return f"your answer is {_shape(got)}; the question asks for {_shape(want)}"
    if isinstance(want, dict):
        hint = (_thread_keys(got, want, threads) if threads else None) or _swapped(got, want)
        if hint:
            return hint
    if isinstance(want, float) and per_cpu is not None:
        hint = _one_cpu(got, per_cpu, tolerance)
        if hint:
            return hint
    factor = _factor(_pairs(got, want))
    if factor is not None:
        return _units(factor, unit)
    if isinstance(want, list):
        return _sequence(got, want, tolerance)
    return _more_or_fewer(got, want, tolerance)


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        return f"a value per key ({len(value)} keys)"
    if isinstance(value, list):
        return f"a list of {len(value)} numbers"
    if isinstance(value, Histogram):
        return "a histogram"
    return "one number"


def _parts(got: Any, want: float, tolerance: float, per_cpu: MapView | None) -> str:
    parts = list(got.values()) if isinstance(got, dict) else got
    parts = [p for p in parts if p is not None]
    shown = _describe(got)
    if per_cpu is not None and len(parts) == len(_cpu_values(per_cpu)):
        how = ("a per-CPU map keeps one value per CPU, each counting what ran there: add them "
               "up (sum them, or read the frame's total column)")
        return f"{shown} are the per-CPU slots; {how}" if _close(
            sum(parts), want, tolerance) else f"{shown}: {how}"
    if _close(sum(parts), want, tolerance):
        return f"you have the parts ({shown}); the question asks for one number: add them up"
    return f"the question asks for one number; your answer holds {len(parts)} ({shown})"


def _pairs(got: Any, want: Any) -> list[tuple[float, float]]:
    """(answer, truth) pairs of what both have, for ratios."""
    if isinstance(want, dict):
        return [(got[k], v) for k, v in want.items() if got.get(k) and v]
    if isinstance(want, list):
        return [(g, w) for g, w in zip(got, want, strict=False) if g and w]
    return [(got, want)] if got and want else []


def _factor(pairs: list[tuple[float, float]]) -> float | None:
    """The unit factor every answer/truth ratio shares, if one does."""
    if not pairs:
        return None
    for factor in _FACTORS:
        for f in (factor, 1 / factor):
            if all(abs(g / w / f - 1) < _CLOSE for g, w in pairs):
                return f
    return None


def _units(factor: float, unit: str) -> str:
    size = factor if factor >= 1 else 1 / factor
    how = "larger" if factor > 1 else "smaller"
    said = f"your numbers are {size:,.0f} times {how} than the truth"
    for family in (_TIME, _SIZE):
        if unit not in family:
            continue
        scale = family[unit] / factor  # the unit the answer is in
        named = next((n for n, s in family.items() if abs(s / scale - 1) < _CLOSE), None)
        if named is None:
            break
        why = (": bpf_ktime_get_ns() and the ns columns count nanoseconds" if named == "ns"
               else "")
        op = "divide" if factor > 1 else "multiply"
        return (f"{said}: they are in {named}, the question asks for {unit}{why} "
                f"({op} by {size:,.0f})")
    return f"{said}: a unit mixed up (ns, µs, ms; bytes, KiB)?"


def _thread_keys(got: dict, want: dict, threads: Mapping[int, int]) -> str | None:
    """Per thread where per process was asked (or the reverse), from ``{tid: pid}``."""
    pids = set(threads.values())
    if set(want) <= pids:  # asked per process
        workers = sorted(k for k in got if threads.get(k, k) != k)
        if workers:
            pid = threads[workers[0]]
            return (f"you counted each thread on its own: {_keys(workers)} are threads of "
                    f"process {pid}. The question asks per process: the process id (tgid) is "
                    "the upper 32 bits of bpf_get_current_pid_tgid() (>> 32); the lower 32 "
                    "bits are the thread id")
    elif set(want) <= set(threads):  # asked per thread
        for pid in sorted(pids):
            mine = [t for t in want if threads[t] == pid]
            if len(mine) > 1 and _close(got.get(pid), sum(want[t] for t in mine), 0.0):
                return (f"you counted per process ({pid} holds all {len(mine)} threads' "
                        "counts); the question asks per thread: the thread id is the lower 32 "
                        "bits of bpf_get_current_pid_tgid() (a u32 keeps them), the process "
                        "id the upper")
    return None


def _swapped(got: dict, want: dict) -> str | None:
    """Keys in network byte order: 0x0008 where 0x0800 was meant."""
    found = []
    for k, v in want.items():
        if not isinstance(k, int) or k < 0 or k >= 1 << 32:
            continue
        width = 2 if k < 1 << 16 else 4
        swapped = int.from_bytes(k.to_bytes(width, "big"), "little")
        if swapped != k and got.get(k) is None and _close(got.get(swapped), v, 0.0):
            found.append((k, swapped))
    if not found:
        return None
    k, s = found[0]
    return (f"your key {s:#06x} is {k:#06x} with its bytes swapped: packet headers are in "
            "network byte order (big-endian); convert with bpf_ntohs() (16 bits) or "
            "bpf_ntohl() (32 bits) before using them as keys")


def _cpu_values(per_cpu: MapView) -> list[float]:
    df = per_cpu.df
    columns = [c for c in df.columns if str(c).startswith("value[cpu")]
    return [float(df[c].sum()) for c in columns]


def _one_cpu(got: float, per_cpu: MapView, tolerance: float) -> str | None:
    values = _cpu_values(per_cpu)
    cpu = next((i for i, v in enumerate(values) if _close(got, v, tolerance)), None)
    if cpu is None or len(values) < 2:
        return None
    return (f"{_num(got)} is CPU {cpu}'s slot only: a per-CPU map keeps one value per CPU, "
            f"each counting what ran there ({_describe(values)}); add them up (sum them, or "
            "read the frame's total column)")


def _histogram(got: Any, want: Histogram, unit: str) -> str:
    if not isinstance(got, Histogram):
        return f"your answer is {_shape(got)}; the question asks for a histogram (a map's " \
               ".hist(), or histograms.from_values())"
    g, w = _buckets(got), _buckets(want)
    gs, ws = _slots(g), _slots(w)
    if gs is not None and ws is not None and len(gs) == len(ws):
        pairs = list(zip(sorted(gs), sorted(ws), strict=True))
        shifts = {a - b for a, b in pairs}
        if len(shifts) == 1 and all(_close(gs[a], ws[b], 0.0) for a, b in pairs):
            (shift,) = shifts
            if abs(shift) == 1:
                return ("every count is one bucket off: bpf_log2l(v) puts v in slot "
                        "floor(log2 v) + 1, so slot i holds [2^(i-1), 2^i) (slot 0 holds 0) "
                        "and a bucket's high bound is exclusive; compute slots with "
                        "bpf_log2l() itself, not log2() by hand")
            sizes = unit in _SIZE
            powers = [f for f in _FACTORS if (f in (1024.0, 1024.0 ** 2)) == sizes]
            factor = next((f for f in powers if abs(math.log2(f) - abs(shift)) <= 1), None)
            if factor is not None:
                return _units(factor if shift > 0 else 1 / factor, unit)
    ordered = [w[b] for b in sorted(w)]
    upward = [float(x) for x in np.cumsum(ordered)]
    downward = [float(x) for x in np.cumsum(ordered[::-1])[::-1]]
    if len(ordered) > 1 and sorted(g) == sorted(w) and any(
            _same([g[b] for b in sorted(g)], r, 0.0) for r in (upward, downward)):
        return ("your buckets hold running totals: each bucket counts only the values in its "
                "own range [low, high), not those below (or above) it")
    kind = "log2" if ws is not None else "linear"
    diff = [f"{label(*b, kind)}: {_num(g.get(b, 0.0))} where {_num(w.get(b, 0.0))}"
            for b in sorted(set(g) | set(w)) if not _close(g.get(b, 0.0), w.get(b, 0.0), 0.0)]
    if got.total == want.total:
        head = f"the same {want.total:,} values in all, in other buckets"
    else:
        head = _more_or_fewer(float(got.total), float(want.total), 0.0, what="values in all")
    return f"{head}; buckets that differ: {', '.join(diff[:4])}"


def _sequence(got: list, want: list, tolerance: float) -> str:
    running = list(np.cumsum(want))
    if len(got) == len(want) and _same(got, [float(x) for x in running], tolerance):
        return ("these are running totals: each snapshot counts everything since the program "
                "started; the question asks what each interval added: subtract the snapshot "
                "before (the first one counts from the start)")
    if len(got) != len(want):
        return f"{len(got)} values where the truth has {len(want)}: one per snapshot"
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not _close(g, w, tolerance)]
    return (f"{len(bad)} of {len(want)} values differ, the first at position {bad[0]}: "
            f"{_num(got[bad[0]])} where {_num(want[bad[0]])}")


def _more_or_fewer(got: Any, want: Any, tolerance: float, what: str = "") -> str:
    if isinstance(want, dict):
        missing = [k for k, v in want.items() if v and not got.get(k)]
        if missing:
            return (f"no entry for {_keys(missing)}, where the truth has "
                    f"{_describe({k: want[k] for k in missing})}; your answer has "
                    f"{_keys(list(got))}")
        bad = [k for k in want if not _close(got.get(k) or 0.0, want[k], tolerance)]
        more = all((got.get(k) or 0.0) > want[k] for k in bad)
        head = ", ".join(f"{k!r}: {_num(got.get(k) or 0.0)} where {_num(want[k])}"
                         for k in bad[:3]) + (f" (and {len(bad) - 3} more keys)" if len(bad) > 3
                                              else "")
        return f"{head}: {'more' if more else 'less'} than the truth, so " \
               f"{_WHY_MORE if more else _WHY_FEWER}"
    what = f" {what}" if what else ""
    if got > want:
        return f"{_num(got)}{what} is {_num(got - want)} more than the truth, {_num(want)}: " \
               f"{_WHY_MORE}"
    return f"{_num(got)}{what} is {_num(want - got)} less than the truth, {_num(want)}: " \
           f"{_WHY_FEWER}"


_WHY_MORE = ("your answer takes in something the question leaves out (another process's "
             "events, where a filter on the pid is missing? something counted twice?)")
_WHY_FEWER = ("your answer leaves out something the question includes (a filter too strict? "
              "events lost: see the stream's stats?)")


# --- text ------------------------------------------------------------------------------------

def _num(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _keys(keys: list) -> str:
    text = ", ".join(map(repr, keys[:6]))
    return text + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _describe(value: Any) -> str:
    if isinstance(value, Histogram):
        n = len(_buckets(value))
        return f"{value.total:,} values in {n} bucket{'s' if n != 1 else ''}"
    if isinstance(value, dict):
        items = [f"{k!r}: {_num(v)}" for k, v in list(value.items())[:6] if v is not None]
        more = f", and {len(value) - 6} more" if len(value) > 6 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, list):
        return "[" + ", ".join("None" if v is None else _num(v) for v in value[:12]) + \
            (", ..." if len(value) > 12 else "") + "]"
    return _num(value)
