"""Recorded programs read back, without a compiler, privileges, or even Linux.

:func:`load` reads a ``.bpfrec`` file (checked by :mod:`ebpf_magic.sessions.reader`)
into a :class:`ReplayedProgram`: a :class:`~ebpf_magic.api.ProgramView` whose
maps and streams are :class:`~ebpf_magic.api.MapView` and
:class:`~ebpf_magic.api.StreamView`, so ``.events[NAME].df``, ``.maps[NAME].df``,
``.maps[NAME].info()``, ``.browse()`` and the plots that work from those frames
read it as they read a live program. It loads nothing into the kernel.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_integer_dtype

from ebpf_magic.api import EVENT_STREAM, ITERATOR, MAP, Named, ProgramBase, StreamBase
from ebpf_magic.data import eventframe, overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.data.histograms import BUCKET_COLUMNS, Histogram, bucket_frame
from ebpf_magic.data.maps import normalize_dtype, record_from_row
from ebpf_magic.errors import ReplayError
from ebpf_magic.internal import dtypes
from ebpf_magic.internal.tables import Listing
from ebpf_magic.kernel import mapkinds
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import format as fmt
from ebpf_magic.sessions import policy, reader, writer
from ebpf_magic.sessions.snapshots import Snapshot, Snapshots, stack


def _when(t: float | None) -> str:
    if t is None:
        return "unknown time"
    try:
        stamp = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return "unknown time"
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class RecordingInfo:
    """Where and when a recording was captured."""

    path: Path
    version: int
    host: dict[str, Any]
    start: float | None
    end: float | None
    saved: float | None

    @property
    def duration(self) -> float:
        return (self.end or 0.0) - (self.start or 0.0) if self.start and self.end else 0.0

    def where(self) -> str:
        h = self.host
        facts = [f"{h.get('system') or 'Linux'} {h.get('kernel') or '?'}"]
        if h.get("bcc"):
            facts.append(f"BCC {h['bcc']}")
        if h.get("libbpf"):
            facts.append(f"libbpf {h['libbpf']}")
        if h.get("bpftrace"):
            facts.append(f"bpftrace {h['bpftrace']}")
        if h.get("cpus"):
            facts.append(f"{h['cpus']} CPUs")
        on = f"on {h['hostname']} " if h.get("hostname") else ""
        return f"{on}({', '.join(facts)})"

    def __str__(self) -> str:
        return (f"replayed from {self.path}, captured {self.where()} at {_when(self.start)} "
                f"for {self.duration:.1f} s")


class RecordedMessage(str):
    """A recorded warning or note: its text, and ``kind`` where the live one had a kind
    (a structured note's), else None."""

    kind: str | None

    def __new__(cls, text: str, kind: str | None = None) -> RecordedMessage:
        message = super().__new__(cls, text)
        message.kind = kind
        return message


class ReplayedStream(StreamBase):
    """The recorded events of one stream (a :class:`~ebpf_magic.api.StreamView`)."""

    def __init__(self, name: str, kind: str, df: pd.DataFrame, stats: dict[str, Any]) -> None:
        self.name = name
        self.kind = kind
        self._df = df
        self._stats = dict(stats)

    @property
    def df(self) -> pd.DataFrame:
        return self._df.copy(deep=False)

    @property
    def stats(self) -> dict[str, Any]:
        """The counters the live stream had when it was saved."""
        return dict(self._stats)

    def capture(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The recorded events and counters."""
        return self.df, self.stats

    @property
    def received(self) -> int:
        return len(self._df)

    def __len__(self) -> int:
        return len(self._df)

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events (all with ``None``)."""
        return self.df if n is None else self._df.iloc[len(self._df) - min(n, len(self._df)):]

    def live(self, *_args: Any, **_kwargs: Any) -> pd.DataFrame:
        """A recording does not change: its events, as a table."""
        return self.df

    def summary(self) -> str:
        lost = self._stats.get("lost_kernel", 0)
        return f"{self.name} (replayed): {len(self._df):,} events, {lost:,} lost in the kernel"

    def __repr__(self) -> str:
        return f"<ReplayedStream {self.name}: {len(self._df)} event(s)>"

    def _repr_html_(self) -> str:
        return self._df.tail(20).to_html()


class ReplayedMap:
    """The recorded snapshots of one map; ``.df`` is the last one. Read-only.

    A :class:`~ebpf_magic.api.MapView` whose layout and listing row are the live
    map's, as recorded.
    """

    writable = False

    def __init__(self, recorded: reader.RecordedMap) -> None:
        self.name = recorded.name
        self.kind = recorded.kind
        self.declared = recorded.declared
        self.key_type = recorded.key_type
        self.value_type = recorded.value_type
        self.max_entries = recorded.max_entries
        # gaps between fields come back as ``__pad`` fields, which live maps leave out too
        self.key_dtype = None if recorded.key_dtype is None else \
            normalize_dtype(recorded.key_dtype)
        self.value_dtype = None if recorded.value_dtype is None else \
            normalize_dtype(recorded.value_dtype)
        self._value_columns = recorded.value_columns
        self._length = recorded.length
        self._info = dict(recorded.info)
        self._snapshots = recorded.snapshots

    @property
    def percpu(self) -> bool:
        return mapkinds.kind(self.kind).percpu

    @property
    def value_columns(self) -> list[str]:
        """The columns of :attr:`df` that hold the value; the others are the key."""
        if self._value_columns is not None:
            return list(self._value_columns)
        vdt = self.value_dtype
        # a recording that says neither (or whose layout would make too many): the usual names
        if vdt is None or dtypes.scalars(vdt) > fmt.MAX_LAYOUT_COLUMNS:
            return [c for c in self.df.columns if c in ("value", "count")]
        return list(dtypes.columns(np.zeros(0, vdt), "value" if not vdt.names else ""))

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    @property
    def df(self) -> pd.DataFrame:
        """The final snapshot."""
        if not self._snapshots:
            return pd.DataFrame()
        return self._snapshots[-1][1].copy(deep=False)

    @property
    def snapshots(self) -> pd.DataFrame:
        """Every recorded snapshot stacked, with a leading ``time`` column."""
        return stack(self._snapshots)

    def history(self) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
        """``(time, frame)`` of every snapshot, oldest first (what heatmaps take)."""
        return [(pd.Timestamp(t, unit="s", tz="UTC"), df) for t, df in self._snapshots]

    def hist(self, kind: str | None = None, step: int = 1) -> Histogram:
        """The final snapshot as a :class:`.histograms.Histogram`, as the live map reads it.

        Slots are bucketed as ``kind`` ("log2" or "linear", by default as recorded) of width
        ``step``: a ``BPF_HISTOGRAM``'s recorded buckets, or a map keyed by slot (an integer
        key, or a struct key's ``slot`` field, its other fields naming a histogram each).
        A bpftrace ``hist()``/``lhist()`` map's buckets are its own (``kind`` only checked).
        Raises TypeError for a map that holds no histogram.
        """
        df = self.df
        if self.declared.startswith(("hist(", "lhist(")):
            own = "linear" if self.declared.startswith("lhist(") else "log2"
            if kind not in (None, own):
                raise ValueError(f"{self.name} is a {own} histogram ({self.declared})")
            return Histogram(df, kind=own, name=self.name.lstrip("@"))
        if {"slot", "count"} <= set(df.columns):  # buckets, with the bounds they were saved with
            if kind is None:
                kind = Histogram(df).kind if {"low", "high"} <= set(df.columns) else "log2"
            slots, counts = df["slot"], df["count"]
            sections = df.drop(columns=[c for c in BUCKET_COLUMNS if c in df.columns])
        else:
            values = [c for c in self.value_columns if c in df.columns]
            if self.percpu and "total" in df.columns:
                values = ["total"]
            slot = "key" if "key" in df.columns else "slot" if "slot" in df.columns else None
            if slot is None or len(values) != 1 or not is_integer_dtype(df[slot]):
                raise TypeError(f"{self.name} was not recorded as a histogram: it has no "
                                "integer slot key and one count") from None
            slots, counts = df[slot], df[values[0]]
            sections = df.drop(columns=[slot, *self.value_columns, "total"], errors="ignore")
            kind = kind or "log2"
        return Histogram(bucket_frame(slots.to_numpy(), counts.to_numpy(), kind, step,
                                      sections if len(sections.columns) else None),
                         kind=kind, name=self.name)

    def __len__(self) -> int:
        """The live map's ``len()`` when saved (rows of the final snapshot, if not recorded)."""
        if self._length is not None:
            return self._length
        return len(self._snapshots[-1][1]) if self._snapshots else 0

    def __getitem__(self, key: Any) -> Any:
        """The value at ``key`` in the final snapshot, as the live map gave it: ``key`` an
        int, a tuple or a dict of the key's fields; the value an int, str, dict of fields,
        or one per CPU for per-CPU maps. KeyError names a key that is not there."""
        row = self._row(key)
        vdt = self.value_dtype
        if vdt is None:
            raise TypeError(f"{self.name} was recorded without its value's layout: read it as "
                            "a table with .df")
        columns = set(self.value_columns)
        cpus = sorted({int(m.group(1)) for c in row for m in [_PER_CPU.search(c)] if m})
        if not self.percpu or not cpus:
            return _value(row, vdt, columns)
        return [_value({_PER_CPU.sub("", c): v for c, v in row.items()
                        if c.endswith(f"[cpu{cpu}]")}, vdt, columns) for cpu in cpus]

    def get(self, key: Any, default: Any = None) -> Any:
        """``self[key]``, or ``default`` where the final snapshot has no such key."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        try:
            self._row(key)
        except KeyError:
            return False
        return True

    def _row(self, key: Any) -> dict[str, Any]:
        """The row of the final snapshot at ``key`` (encoded as the live map encodes it)."""
        kdt = self.key_dtype
        if kdt is None:
            raise TypeError(f"{self.name} is a {self.kind} map: it has no keys (read .df)")
        df = self.df
        prefix = "" if kdt.names else "key"
        columns = [f"key.{c}" if f"key.{c}" in df.columns else c
                   for c in eventframe.columns(np.zeros(0, kdt), prefix)]
        if not set(columns) <= set(df.columns):  # buckets, stacks, a bpftrace map's table
            raise TypeError(f"{self.name} was recorded as a table of "
                            f"{', '.join(map(str, df.columns))}, not by its keys: read it "
                            "with .df")
        try:
            encoded = dtypes.encode(key, kdt)
        except (TypeError, ValueError) as e:
            raise KeyError(f"{key!r} is not a valid key of {self.name} ({self.key_type}): "
                           f"{e}") from None
        wanted = dict(zip(columns, (v[0] for v in eventframe.columns(encoded, prefix).values()),
                          strict=True))
        found = np.ones(len(df), bool)
        for column, value in wanted.items():
            found &= (df[column] == value).to_numpy(bool)
        if not found.any():
            raise KeyError(f"{key!r} is not a key of {self.name} in its final snapshot "
                           "(.snapshots has the earlier ones)")
        return df[found].iloc[0].to_dict()

    def __repr__(self) -> str:
        return (f"<ReplayedMap {self.name}: {self.declared or self.kind} "
                f"{self.key_type} -> {self.value_type}, {len(self._snapshots)} snapshot(s)>")

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


_PER_CPU = re.compile(r"\[cpu(\d+)\]$")


def _value(row: dict[str, Any], vdt: np.dtype, columns: set[str]) -> Any:
    """The value of ``vdt`` in the value columns of ``row``, as plain Python."""
    raw = record_from_row(row, vdt, "", columns) if vdt.names else row["value"]
    return dtypes.to_python(dtypes.encode(raw, vdt)[0], vdt)


class ReplayedMaps(Named[ReplayedMap]):
    """A replayed program's maps by name; ``.df`` lists them as the live listing does."""

    def __init__(self, maps: Mapping[str, ReplayedMap]) -> None:
        super().__init__(maps, MAP)

    @property
    def df(self) -> pd.DataFrame:
        return Listing([m.info() for m in self.values()])

    def _repr_html_(self) -> str:
        return self.df._repr_html_()


class ReplayedStreams(Named[ReplayedStream]):
    """A replayed program's event streams by name."""

    def __init__(self, streams: Mapping[str, ReplayedStream]) -> None:
        super().__init__(streams, EVENT_STREAM)

    @property
    def received(self) -> int:
        return sum(len(s) for s in self.values())


class ReplayedProgram(ProgramBase):
    """A recorded program, read back: a :class:`~ebpf_magic.api.ProgramView`, nothing in the
    kernel."""

    running = False
    readable = True  # recorded maps stay readable; a stopped live program's do not
    state = "replayed"

    def __init__(self, recorded: reader.Recording, name: str | None = None) -> None:
        program = recorded.program
        self.name: str = name or program["name"]
        self.source: str = program["source"]
        self.cflags: list[str] = program["cflags"]
        self.pid: int | None = program["pid"]
        self.probes: list[Probe] = program["probes"]
        self.attached: list[str] = program["attached"]
        self.backend: str = program["backend"]
        self.recording = RecordingInfo(recorded.path, recorded.version, recorded.host,
                                       recorded.start, recorded.end, recorded.saved)
        self.started_at = recorded.start
        self.stopped_at = recorded.end
        #: what the compiler warned about and the backend noted, as recorded (none in
        #: recordings older than them)
        self.warnings = [RecordedMessage(m["text"], m["kind"]) for m in recorded.warnings]
        self.notes = [RecordedMessage(m["text"], m["kind"]) for m in recorded.notes]
        self.events = ReplayedStreams({s.name: ReplayedStream(s.name, s.kind, s.df, s.stats)
                                       for s in recorded.streams})
        self.maps = ReplayedMaps({m.name: ReplayedMap(m) for m in recorded.maps})
        by_time: dict[float, dict[str, pd.DataFrame]] = {}
        for m in recorded.maps:
            for t, df in m.snapshots:
                by_time.setdefault(t, {})[m.name] = df
        #: every map's snapshots, as a recorder holds them
        self.snapshots = Snapshots(Snapshot(t, frames) for t, frames in sorted(by_time.items()))
        self.tables: dict[str, pd.DataFrame] = dict(recorded.tables)
        #: the global variables' values when it was saved (none in older recordings)
        self.globals = SavedGlobals(recorded.globals, self.name)
        self.iter: Named[Any] = Named({}, ITERATOR)  # nothing to walk in a recording
        self._overhead = recorded.overhead

    @property
    def overhead(self) -> overhead.Overhead:
        """What each function had cost when it was saved (see
        :attr:`~ebpf_magic.api.ProgramView.overhead`); none, with ``.unmeasured`` saying
        why, where it was not measured or the recording is older than overhead in them."""
        if self._overhead is None:
            return overhead.unmeasured([], f"{self.name}: the recording {self.recording.path} "
                                           "was written before recordings kept what programs "
                                           "cost; save it again from a live run to keep it")
        if "unavailable" in self._overhead:
            return overhead.unmeasured([], "not measured where it was recorded: "
                                           f"{self._overhead['unavailable']}")
        return overhead.restore(self._overhead["rows"])

    @property
    def functions(self) -> list[str]:
        return sorted({p.function for p in self.probes if p.function})

    @property
    def unattached(self) -> list[str]:
        return []

    @property
    def uptime(self) -> float:
        return self.recording.duration

    @property
    def events_seen(self) -> int:
        return self.events.received

    def prog_ids(self) -> list[int]:
        return []

    def map_ids(self) -> list[int]:
        return []

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """The maps' final recorded frames."""
        return {name: self.maps[name].df for name in (self.maps if names is None else names)}

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        """The host it was captured on, as recorded (without its names if ``hostname`` is
        False)."""
        host = self.recording.host
        return dict(host) if hostname else writer.without_names(host)

    def stop(self) -> None:
        """Nothing runs: a no-op, for code written for live programs."""

    def __enter__(self) -> ReplayedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ReplayedProgram {self.name}: {self.recording}>"

    def _repr_html_(self) -> str:
        return (f"<p><b>{html.escape(self.name)}</b> {html.escape(str(self.recording))}</p>"
                + Listing([self.summary()])._repr_html_())


def load(path: str | os.PathLike, name: str | None = None, *,
         max_bytes: int = fmt.MAX_BYTES) -> ReplayedProgram:
    """Read the recording at ``path`` into a :class:`ReplayedProgram` (named ``name``).

    Raises :class:`~ebpf_magic.errors.ReplayError` for anything that is not
    a complete, well-formed recording, including files whose members unpack to
    more than ``max_bytes`` or whose frames decode to more (see
    :data:`.format.OBJECT_BYTES` for what a Python object counts).
    """
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"no recording at {path}",
                          f"Recordings by name live in {policy.recordings_dir()}.")
    return ReplayedProgram(reader.read(path, max_bytes), name)


def replay_cell(name: str, why: str = "") -> ReplayedProgram:
    """The recording of ``name`` for a ``%%bpf NAME`` cell that cannot run live.

    ``why`` (from :func:`.policy.can_run_live`) goes into the error when there is no
    recording.
    """
    path = policy.find_recording(name)
    if path is None:
        raise ReplayError(f"%%bpf {name} cannot run live here ({why or 'no BPF'}) and there is "
                          f"no recording of it at {policy.recording_path(name)}",
                          f"Run the notebook live once with {policy.RECORD_ENV}=1 (or %%bpf "
                          f"{name} --record) and `%bpf save {name}`, or point "
                          f"{policy.RECORDINGS_ENV} at the folder holding the recordings.")
    return load(path, name)


def announce(prog: ReplayedProgram, why: str = "") -> str:
    """The line a notebook shows when a cell replays instead of running live."""
    because = f" ({why})" if why else ""
    return f"{prog.name}: {prog.recording}{because}"
