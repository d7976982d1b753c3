"""Event frames as a Perfetto trace, for ui.perfetto.dev and Perfetto's trace processor.

The trace is Perfetto's own protobuf format (``TracePacket``s of ``TrackEvent``s, see
perfetto.dev's "Converting arbitrary timestamped data to Perfetto"), written with the
message classes the ``perfetto`` package ships. Each row of a frame becomes an instant
event, or, with ``duration=`` or ``phase=``, part of a slice; ``counters=`` columns become
counter tracks. Rows go on tracks per thread (``tid``), process (``pid``), CPU (``cpu``) or
any column, so the UI draws one lane per thread under its process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.api import ProgramView, StreamView
from ebpf_magic.errors import ExportError
from ebpf_magic.internal import files

TIME_COLUMNS = ("ts", "time", "timestamp", "t", "ts_ns", "time_ns", "timestamp_ns", "ktime_ns")
TID_COLUMNS = ("tid",)
PID_COLUMNS = ("pid", "tgid")
CPU_COLUMNS = ("cpu", "event_cpu")
NAME_COLUMNS = ("comm", "task")
TRACKS = ("thread", "process", "cpu")
HOST = "host"  # a cluster program's frames say which host each row came from
CHUNK = 20_000  # packets serialized at a time
SEQUENCE = 1  # every packet is on one sequence, without interned data
_BEGIN, _END, _INSTANT, _COUNTER = 1, 2, 3, 4  # TrackEvent.Type


class ExportWarning(UserWarning):
    """Rows an export left out (no time, a span end without its begin...)."""


def _first(columns: Sequence[str], names: Iterable[str]) -> str | None:
    return next((c for c in names if c in columns), None)


def time_column(df: pd.DataFrame) -> str | None:
    """The column a frame's times are in: the first of :data:`TIME_COLUMNS`, else the first
    datetime column, else None."""
    cols = [str(c) for c in df.columns]
    return _first(cols, TIME_COLUMNS) or next(
        (c for c in cols if pd.api.types.is_datetime64_any_dtype(df[c])), None)


def nanoseconds(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A time column as int64 ns and where it has a value: kernel ns as they are, datetimes
    since the epoch (UTC), timedeltas as lengths, floats as seconds."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    for is_kind, unit in ((pd.api.types.is_datetime64_any_dtype, "datetime64[ns]"),
                          (pd.api.types.is_timedelta64_dtype, "timedelta64[ns]")):
        if is_kind(col):
            values = col.to_numpy(dtype=unit)
            return values.view(np.int64), ~np.isnat(values)
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        raise ExportError(f"column {col.name!r} is not a time ({col.dtype})",
                          "Name a column of kernel ns timestamps or datetimes: time='...'.")
    ok = col.notna().to_numpy(copy=True)
    if pd.api.types.is_integer_dtype(col):
        values = col.to_numpy(dtype=np.uint64 if pd.api.types.is_unsigned_integer_dtype(col)
                              else np.int64, na_value=0)
        ok &= values <= np.iinfo(np.int64).max
        return np.where(ok, values, 0).astype(np.int64), ok
    seconds = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(ok, np.round(seconds * 1e9), 0).astype(np.int64), ok


@dataclass
class _Batch:
    """One frame's events, ready to sort with the others: parallel arrays of events."""

    ts: np.ndarray  # int64 ns
    kind: np.ndarray  # TrackEvent type
    track: np.ndarray  # uuid
    row: np.ndarray  # the row whose name and args it carries; -1: none (a slice end)
    rank: np.ndarray  # order among events of one time: ends, instants, begins
    tie: np.ndarray  # order among events of one time and rank (see Timeline._slices)
    names: np.ndarray  # per row
    category: str
    args: list[tuple[str, str, list]] = field(default_factory=list)  # (name, field, per row)
    values: np.ndarray | None = None  # counter values, per event


class Timeline:
    """A Perfetto trace built from one or more event frames; :meth:`write` saves it.

    Tracks are shared between frames: two streams' events of one thread land on one
    track. ``left_out`` counts rows that could not be placed, by reason.
    """

    def __init__(self) -> None:
        self._uuids: dict[tuple, int] = {}
        self._tracks: dict[int, dict[str, Any]] = {}  # uuid -> TrackDescriptor fields
        self._batches: list[_Batch] = []
        self.left_out: dict[str, int] = {}

    # -- tracks ------------------------------------------------------------------

    def _track(self, key: tuple, **desc: Any) -> int:
        if key not in self._uuids:
            self._uuids[key] = len(self._uuids) + 1
            self._tracks[self._uuids[key]] = {"uuid": self._uuids[key], **desc}
        return self._uuids[key]

    def _tracks_of(self, values: np.ndarray, make: Any) -> np.ndarray:
        """The uuid of each value's track, ``make(value)`` creating the track of a value."""
        if not len(values):
            return np.zeros(0, np.int64)
        unique, inverse = np.unique(values, return_inverse=True)
        return np.array([make(v) for v in unique.tolist()], dtype=np.int64)[inverse]

    def _process(self, pid: int, name: str) -> int:
        return self._track(("process", pid), process={"pid": pid, "process_name": name})

    def _group_tracks(self, df: pd.DataFrame, how: str, label: str) -> np.ndarray:
        """The track uuid of every row, its tracks created on the way."""
        cols = list(df.columns)
        comm = _first(cols, NAME_COLUMNS)
        names = _strings(df[comm]) if comm else np.full(len(df), "")
        if how in TRACKS and HOST in cols:
            return self._host_tracks(df, how, names)
        if how == "thread":
            tid_col = _first(cols, TID_COLUMNS)
            pid_col = _first(cols, PID_COLUMNS) or tid_col
            tids = df[tid_col].to_numpy(dtype=np.int64)
            pids = df[pid_col].to_numpy(dtype=np.int64)
            out = np.empty(len(df), np.int64)
            keys = pd.DataFrame({"pid": pids, "tid": tids, "name": names})
            leaders = keys[keys["pid"] == keys["tid"]].drop_duplicates("pid")
            process_name = dict(zip(leaders["pid"], leaders["name"], strict=True))
            for (pid, tid), idx in keys.groupby(["pid", "tid"], sort=True).indices.items():
                pid, tid = int(pid), int(tid)
                parent = self._process(pid, process_name.get(pid, str(names[idx[0]])))
                out[idx] = self._track(("thread", pid, tid), parent_uuid=parent,
                                       thread={"pid": pid, "tid": tid,
                                               "thread_name": str(names[idx[0]])})
            return out
        if how == "process":
            pid_col = _first(cols, PID_COLUMNS)
            pids = df[pid_col].to_numpy(dtype=np.int64)
            out = np.empty(len(df), np.int64)
            for pid, idx in pd.Series(pids).groupby(pids, sort=True).indices.items():
                out[idx] = self._process(int(pid), str(names[idx[0]]))
            return out
        if how == "cpu":
            return self._tracks_of(df[_first(cols, CPU_COLUMNS)].to_numpy(dtype=np.int64),
                                   lambda c: self._track(("cpu", c), name=f"CPU {c}"))
        if how == "":
            return np.full(len(df), self._track(("track", label), name=label), np.int64)
        return self._tracks_of(_strings(df[how]),
                               lambda v: self._track(("column", how, v), name=f"{how} {v}"))

    def _host_tracks(self, df: pd.DataFrame, how: str, names: np.ndarray) -> np.ndarray:
        """Tracks of the events of many hosts: under a track per host, a named track per
        thread (``comm pid/tid``), process (``comm pid``) or CPU, so that one host's pid
        is never taken for another's process."""
        ids = [c for c in _track_columns(list(df.columns), how) if c not in (HOST, *NAME_COLUMNS)]
        keys = pd.DataFrame({HOST: _strings(df[HOST]),
                             **{c: df[c].to_numpy(dtype=np.int64) for c in ids}})
        out = np.empty(len(df), np.int64)
        for key, idx in keys.groupby([HOST, *ids], sort=True).indices.items():
            host, *numbers = key
            parent = self._track((HOST, host), name=host)
            what = "/".join(str(int(n)) for n in numbers)
            name = f"CPU {what}" if how == "cpu" else f"{names[idx[0]]} {what}".strip()
            out[idx] = self._track((HOST, host, how, what), parent_uuid=parent, name=name)
        return out

    def _lane(self, parent: int, lane: int) -> int:
        """Lane ``lane`` of a track: slices there may overlap those of the track itself."""
        if lane == 0:
            return parent
        desc = self._tracks[parent]
        name = desc.get("name") or desc.get("thread", {}).get("thread_name") or \
            desc.get("process", {}).get("process_name", "")
        return self._track(("lane", parent, lane), parent_uuid=parent, name=name)

    # -- adding frames -------------------------------------------------------------

    def add(self, events: pd.DataFrame | StreamView, *, time: str | None = None,
            name: str | None = None, track: str | None = None, duration: str | None = None,
            anchor: str = "start", phase: str | None = None, begin: Any = 0, end: Any = 1,
            counters: str | Sequence[str] = (), args: bool | Sequence[str] = True,
            instants: bool = True, stream: str | None = None) -> Timeline:
        """Add a frame's events (a DataFrame, or a stream whose ``.df`` is read); returns self.

        - ``time``: the timestamp column (default: the first of ts, time, timestamp, t...,
          else the first datetime column): kernel ns (``bpf_ktime_get_ns()``), datetimes,
          or float seconds.
        - ``name``: a column naming each event, or one name for all (default: the
          stream's name, or "event").
        - ``track``: ``"thread"`` (``tid``, under its ``pid``'s process), ``"process"``
          (``pid``), ``"cpu"``, another column (a track per value), or None: thread,
          process, cpu or one track, whichever columns the frame has. ``comm`` names
          threads and processes. A cluster program's rows (a ``host`` column) go on
          named tracks under a track per host, since pids of two hosts are not one.
        - ``duration``: a column of span lengths (ns, or timedeltas): each row is a slice
          starting at its time (``anchor="end"``: ending there).
        - ``phase``: a column telling begins (value ``begin``) from ends (value ``end``),
          such as a probe's entry and exit events: each end closes the latest open begin
          of its track, and the pair is one slice named after the begin. Ends without a
          begin, begins never ended and rows of other phases are left out and counted.
        - ``counters``: numeric columns drawn as counter tracks, one per track and column.
        - ``args``: the columns shown as each event's arguments (True: every column not
          already its time, name, span, counter or track).
        - ``instants``: with neither ``duration`` nor ``phase``, rows become instant events;
          False leaves only the counters.
        - ``stream``: where the events came from: their category, default name, and the
          name of their track when there is one track (default: the stream's name).
        """
        if isinstance(events, pd.DataFrame):
            df, label = events, stream or "event"
        elif isinstance(events, StreamView):
            df, label = events.df, stream or events.name
        else:
            raise ExportError(f"not an event frame: a {type(events).__name__}",
                              "Pass a DataFrame of events, or a stream (prog.events[NAME]).")
        if anchor not in ("start", "end"):
            raise ExportError(f"anchor must be 'start' or 'end', not {anchor!r}")
        if duration is not None and phase is not None:
            raise ExportError("give duration= or phase=, not both",
                              "duration: one row per span; phase: a row at each begin and end.")
        cols = [str(c) for c in df.columns]
        counter_cols = [counters] if isinstance(counters, str) else list(counters)
        arg_cols = None if args is True else list(args or [])
        for given in (time, duration, phase, *counter_cols, *(arg_cols or [])):
            if given is not None and given not in cols:
                raise ExportError(f"no column {given!r}; columns: {', '.join(cols)}")
        for col in counter_cols:
            if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
                raise ExportError(f"counter column {col!r} is not numeric ({df[col].dtype})")
        time = time or time_column(df)
        if time is None:
            raise ExportError(f"no time column in {label!r}; columns: {', '.join(cols)}",
                              "Name the column of timestamps (bpf_ktime_get_ns()): time='...'.")
        how = self._how(df, track)
        ts, keep = nanoseconds(df[time])  # nothing is changed before this passes
        self._count("no time", int((~keep).sum()))
        df = df[keep].reset_index(drop=True)
        ts = ts[keep]
        tracks = self._group_tracks(df, how, label) if len(df) else np.zeros(0, np.int64)
        if name is not None and name in cols:
            names = _strings(df[name])
        else:
            names = np.full(len(df), name or label, dtype=object)
        used = {time, name, duration, phase, *counter_cols, *_track_columns(cols, how)}
        arg_cols = [c for c in cols if c not in used] if arg_cols is None else arg_cols
        none = np.zeros(0, np.int64)
        batch = _Batch(ts=none, kind=none, track=none, row=none, rank=none, tie=none,
                       names=names, category=label,
                       args=[(c, *_argument(df[c])) for c in arg_cols])
        if duration is not None:
            spans, ok = nanoseconds(df[duration])
            ok &= spans >= 0
            self._count("no duration", int((~ok).sum()))
            rows = np.flatnonzero(ok)
            length = spans[ok]
            start = ts[ok] - length if anchor == "end" else ts[ok]
            self._slices(batch, rows, start, start + length, tracks[ok])
        elif phase is not None:
            self._pairs(batch, df[phase].to_numpy(), begin, end, ts, tracks)
        elif instants:
            n = len(df)
            self._append(batch, ts, np.full(n, _INSTANT), tracks, np.arange(n), np.ones(n),
                         np.zeros(n))
        self._batches.append(batch)
        for col in counter_cols:
            self._counter(df, col, ts, tracks, label)
        return self

    @staticmethod
    def _how(df: pd.DataFrame, track: str | None) -> str:
        cols = [str(c) for c in df.columns]
        needs = {"thread": TID_COLUMNS, "process": PID_COLUMNS, "cpu": CPU_COLUMNS}
        if track is None:
            return next((how for how, names in needs.items() if _first(cols, names)), "")
        if track in needs:
            if not _first(cols, needs[track]):
                raise ExportError(f"track={track!r} needs a column named "
                                  f"{' or '.join(needs[track])}; columns: {', '.join(cols)}",
                                  "Or name the column to make tracks of: track='COLUMN'.")
            return track
        if track not in cols:
            raise ExportError(f"no column {track!r} to make tracks of; columns: {', '.join(cols)}",
                              f"track= takes {', '.join(TRACKS)} or a column name.")
        return track

    def _count(self, reason: str, n: int) -> None:
        if n:
            self.left_out[reason] = self.left_out.get(reason, 0) + n

    @staticmethod
    def _append(batch: _Batch, ts: np.ndarray, kind: np.ndarray, track: np.ndarray,
                row: np.ndarray, rank: np.ndarray, tie: np.ndarray) -> None:
        for name, new in (("ts", ts), ("kind", kind), ("track", track), ("row", row),
                          ("rank", rank), ("tie", tie)):
            setattr(batch, name, np.concatenate([getattr(batch, name), new.astype(np.int64)]))

    def _slices(self, batch: _Batch, rows: np.ndarray, start: np.ndarray, stop: np.ndarray,
                tracks: np.ndarray) -> None:
        """Slices [start, stop) of ``rows``; ones that overlap without nesting get lanes."""
        order = np.lexsort((-(stop - start), start, tracks))
        lanes = np.zeros(len(rows), np.int64)
        open_: dict[int, list[list[int]]] = {}  # track -> per lane, the ends of open slices
        for i in order:
            stacks = open_.setdefault(int(tracks[i]), [])
            lane = 0  # the first lane where it nests in, or follows, what is open there
            while lane < len(stacks):
                ends = stacks[lane]
                while ends and ends[-1] <= start[i]:
                    ends.pop()
                if not ends or ends[-1] >= stop[i]:
                    break
                lane += 1
            else:
                stacks.append([])
            stacks[lane].append(int(stop[i]))
            lanes[i] = lane
        pairs = np.stack([tracks, lanes], axis=1) if len(rows) else np.zeros((0, 2), np.int64)
        unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
        uuids = np.array([self._lane(int(t), int(lane)) for t, lane in unique],
                         dtype=np.int64)[inverse.reshape(-1)]
        n = len(rows)
        # at one time: ends first (the inner first), then instants, then begins (the outer
        # first); a slice of no length ends after it begins
        self._append(batch, stop, np.full(n, _END), uuids, np.full(n, -1),
                     np.where(stop > start, 0, 3), -start)
        self._append(batch, start, np.full(n, _BEGIN), uuids, rows, np.full(n, 2),
                     -(stop - start))

    def _pairs(self, batch: _Batch, phases: np.ndarray, begin: Any, end: Any, ts: np.ndarray,
               tracks: np.ndarray) -> None:
        is_begin, is_end = phases == begin, phases == end
        self._count("neither begin nor end", int((~is_begin & ~is_end).sum()))
        open_: dict[int, list[int]] = {}
        rows, stops = [], []
        for i in np.lexsort((np.arange(len(ts)), ts)):
            if is_begin[i]:
                open_.setdefault(int(tracks[i]), []).append(int(i))
            elif is_end[i]:
                opened = open_.get(int(tracks[i]))
                if opened:
                    rows.append(opened.pop())
                    stops.append(ts[i])
                else:
                    self._count("end without begin", 1)
        self._count("begin without end", sum(len(v) for v in open_.values()))
        rows_a = np.array(rows, dtype=np.int64)
        self._slices(batch, rows_a, ts[rows_a], np.array(stops, dtype=np.int64), tracks[rows_a])

    def _counter(self, df: pd.DataFrame, col: str, ts: np.ndarray, tracks: np.ndarray,
                 label: str) -> None:
        series = df[col]
        slot, _ = _argument(series)
        if slot == "int_value":  # whole numbers exact; others (and uint64 past int64) doubles
            values, ok = series.to_numpy(dtype=np.int64), np.ones(len(series), bool)
        else:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            ok = ~np.isnan(values)
        self._count(f"no value of {col}", int((~ok).sum()))
        track = self._tracks_of(tracks[ok], lambda t: self._track(
            ("counter", t, col), parent_uuid=t, name=col, counter={}))
        n = int(ok.sum())
        batch = _Batch(ts=ts[ok], kind=np.full(n, _COUNTER), track=track,
                       row=np.full(n, -1), rank=np.ones(n, np.int64), tie=np.zeros(n, np.int64),
                       names=np.zeros(0, dtype=object), category=label, values=values[ok])
        self._batches.append(batch)

    # -- writing -------------------------------------------------------------------

    def write(self, path: str | Path) -> Path:
        """Write the trace to ``path`` (``.perfetto-trace`` or ``.pftrace``); returns the path."""
        from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TracePacket

        out = Path(path)
        batches = [b for b in self._batches if b.ts.size]
        with files.AtomicFile(out) as atomic:
            f = atomic.file
            trace = Trace()
            for i, desc in enumerate(self._tracks.values()):
                packet = trace.packet.add(trusted_packet_sequence_id=SEQUENCE)
                if i == 0:
                    packet.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
                _describe(packet.track_descriptor, desc)
            f.write(trace.SerializeToString())
            if not batches:
                return out
            which = np.concatenate([np.full(b.ts.size, i) for i, b in enumerate(batches)])
            at = np.concatenate([np.arange(b.ts.size) for b in batches])
            ts = np.concatenate([b.ts for b in batches])
            rank = np.concatenate([b.rank for b in batches])
            tie = np.concatenate([b.tie for b in batches])
            order = np.lexsort((at, which, tie, rank, ts))
            columns = [_Columns(b) for b in batches]
            which, at = which[order].tolist(), at[order].tolist()
            for lo in range(0, len(order), CHUNK):
                trace = Trace()
                add = trace.packet.add
                for b, k in zip(which[lo:lo + CHUNK], at[lo:lo + CHUNK], strict=True):
                    c = columns[b]
                    c.event(add(timestamp=c.ts[k], trusted_packet_sequence_id=SEQUENCE)
                            .track_event, k)
                f.write(trace.SerializeToString())
        return out


def _describe(track: Any, desc: dict[str, Any]) -> None:
    track.uuid = desc["uuid"]
    if desc.get("parent_uuid"):
        track.parent_uuid = desc["parent_uuid"]
    if desc.get("name"):
        track.name = desc["name"]
    if "process" in desc:
        track.process.pid = desc["process"]["pid"]
        track.process.process_name = desc["process"]["process_name"]
    if "thread" in desc:
        track.thread.pid = desc["thread"]["pid"]
        track.thread.tid = desc["thread"]["tid"]
        track.thread.thread_name = desc["thread"]["thread_name"]
    if "counter" in desc:
        track.counter.SetInParent()


def _strings(col: pd.Series) -> np.ndarray:
    """A column's values as str, missing ones too (``<NA>``, ``nan``, ``None``)."""
    return np.array([str(v) for v in col.tolist()], dtype=object)


def _track_columns(cols: Sequence[str], how: str) -> list[str]:
    """The columns that tracks made with ``how`` show: left out of the arguments."""
    if how in TRACKS:
        names = {"thread": (PID_COLUMNS, TID_COLUMNS, NAME_COLUMNS),
                 "process": (PID_COLUMNS, NAME_COLUMNS), "cpu": (CPU_COLUMNS,)}[how]
        return [c for c in (_first(cols, n) for n in names) if c] + \
            ([HOST] if HOST in cols else [])
    return [how] if how else []


def _argument(col: pd.Series) -> tuple[str, list]:
    """The DebugAnnotation field a column's values go in, and the values as Python objects."""
    if pd.api.types.is_bool_dtype(col) and not col.hasnans:
        return "bool_value", col.tolist()
    if pd.api.types.is_integer_dtype(col) and not col.hasnans:
        big = pd.api.types.is_unsigned_integer_dtype(col) and len(col) and \
            int(col.max()) > np.iinfo(np.int64).max
        return ("uint_value" if big else "int_value"), col.tolist()
    if pd.api.types.is_float_dtype(col):
        return "double_value", col.astype(np.float64).tolist()
    return "string_value", _strings(col).tolist()


class _Columns:
    """A batch's arrays as Python lists, to write its events one by one without numpy."""

    def __init__(self, b: _Batch) -> None:
        self.ts, self.kind = b.ts.tolist(), b.kind.tolist()
        self.track, self.row = b.track.tolist(), b.row.tolist()
        self.values = b.values.tolist() if b.values is not None else []
        self.integral = b.values is not None and b.values.dtype.kind in "iu"
        self.names = [str(n) for n in b.names]
        self.category, self.args = b.category, b.args

    def event(self, event: Any, k: int) -> None:
        kind, event.type, event.track_uuid = self.kind[k], self.kind[k], self.track[k]
        if kind == _COUNTER:
            if self.integral:
                event.counter_value = self.values[k]
            else:
                event.double_counter_value = self.values[k]
            return
        row = self.row[k]
        if row < 0:  # a slice's end carries nothing but its time and track
            return
        event.name = self.names[row]
        event.categories.append(self.category)
        add = event.debug_annotations.add
        for name, slot, values in self.args:
            add(name=name, **{slot: values[row]})


def _warn_left_out(timeline: Timeline, path: Path) -> None:
    if timeline.left_out:
        counts = ", ".join(f"{n:,} {why}" for why, n in timeline.left_out.items())
        warnings.warn(f"{path}: rows left out: {counts}", ExportWarning, stacklevel=3)


def program_to_perfetto(program: ProgramView, path: str | Path) -> tuple[Path, dict[str, int]]:
    """Every stream of ``program`` that has a time column, as instants in one trace.

    Live, replayed and cluster programs alike; tracks per thread, process or CPU as each
    stream's columns allow. Returns the path and the events written per stream; streams
    without a time column are left out (an :class:`ExportWarning` names them), and a
    program with none raises :class:`~ebpf_magic.errors.ExportError`.
    """
    timeline, written, untimed = Timeline(), {}, []
    for name, stream in program.events.items():
        df = stream.df
        if time_column(df) is None:
            untimed.append(name)
            continue
        timeline.add(df, stream=name)
        written[name] = len(df)
    if not written:
        raise ExportError(f"no event stream of {program.name} has a time column "
                          f"({', '.join(TIME_COLUMNS[:3])}... or datetimes)",
                          "Put a u64 ts = bpf_ktime_get_ns() in the event struct, or export "
                          "one stream naming its column: prog.events[NAME].to_perfetto(path, "
                          "time='COLUMN').")
    out = timeline.write(path)
    if untimed:
        warnings.warn(f"{out}: event streams without a time column left out: {', '.join(untimed)}",
                      ExportWarning, stacklevel=2)
    _warn_left_out(timeline, out)
    return out, written


def to_perfetto(events: pd.DataFrame | StreamView, path: str | Path, **options: Any) -> Path:
    """Write an event frame (or a stream's events) to ``path`` as a Perfetto trace.

    Opens in ui.perfetto.dev and loads in Perfetto's trace processor. ``options`` are
    :meth:`Timeline.add`'s (time, name, track, duration, anchor, phase, begin, end,
    counters, args, instants, stream). Rows left out (no time; span ends without a begin...)
    are counted in an :class:`ExportWarning`. Returns the path.
    """
    timeline = Timeline().add(events, **options)
    written = timeline.write(path)
    _warn_left_out(timeline, written)
    return written
