"""Replaying recordings without a compiler, privileges, or even Linux.

:func:`load` reads a ``.bpfrec`` file (see :mod:`ebpf_magic.sessions.recording`) into a
:class:`ReplayedProgram` with the read API of a live program: ``.events[NAME].df``,
``.maps[NAME].df``, ``.maps[NAME].info()``, ``.browse()``, and the plots that
work from those frames. It loads nothing into the kernel.

A file is untrusted input: the loader checks the zip's member count from its
end records before parsing its directory, checks sizes before decompressing,
accepts only the member names the format uses, validates every manifest field's
type and range, and checks every Parquet file against the manifest. What a
Parquet member decodes to is bounded from its footer and page headers before
decoding, then measured row group by row group (``load(max_bytes=)``). Anything
else is a :class:`~ebpf_magic.errors.ReplayError` saying what is wrong.

Notebooks that run live on a Linux box and replay elsewhere find recordings by
name: ``recordings/NAME.bpfrec`` under the working directory (the notebook's
folder), or under the folder named by ``EBPF_MAGIC_RECORDINGS``. Setting
``EBPF_MAGIC_REPLAY=1`` replays even where live tracing would work, and
``EBPF_MAGIC_RECORD=1`` makes live runs refresh the recordings.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import platform
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.backend import BACKENDS, available, choose_backend
from ebpf_magic.errors import BPFError, ReplayError
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import recording

RECORDINGS_ENV = "EBPF_MAGIC_RECORDINGS"
REPLAY_ENV = "EBPF_MAGIC_REPLAY"
RECORD_ENV = "EBPF_MAGIC_RECORD"

# Limits on what one recording may cost to read. ``load(max_bytes=...)`` replaces MAX_BYTES,
# which bounds both the unpacked members and the decoded frames (each a separate total).
MAX_BYTES = 1 << 30  # unpacked members in total; decoded frames in total
MAX_MEMBERS = 10_000
MAX_DIRECTORY_ENTRY = 128  # central-directory bytes per member (names are under 30 bytes)
MAX_MANIFEST = 16 << 20
MAX_FOOTER = 1 << 20  # a Parquet member's metadata footer
MAX_ROW_GROUP_BYTES = 1 << 30  # one Parquet row group decoded: the unit read at once
MAX_COLUMN_BYTES = 512 << 20  # one column of one row group, as its metadata declares it
OBJECT_BYTES = 64  # what a value costs decoded as a Python object (pointer and object)
# manifest times are seconds since the epoch that pandas and datetime can both show
MIN_TIME = 0.0
MAX_TIME = float(2**33)  # year 2242
_MEMBER = re.compile(r"(streams/\d{1,6}|tables/\d{1,6}|maps/\d{1,6}/\d{1,6})\.parquet")
_NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64"}
_TIMES = re.compile(r"[<>|=]?[Mm]8\[(s|ms|us|ns)\]")
_TZ = re.compile(r"datetime64\[(s|ms|us|ns), UTC\]")
_SCALAR_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|S\d{1,6}|V\d{1,6})")

_settings: dict[str, Any] = {"dir": None, "record": None, "replay": None}


# -- where recordings live, and whether to use them ---------------------------------


def recordings_dir() -> Path:
    """The folder recordings are looked up in and saved to by name.

    ``set_recordings_dir()`` wins, then ``$EBPF_MAGIC_RECORDINGS``, then
    ``recordings/`` in the working directory (a notebook's own folder).
    """
    chosen = _settings["dir"] or os.environ.get(RECORDINGS_ENV)
    return Path(chosen) if chosen else Path.cwd() / "recordings"


def set_recordings_dir(path: str | os.PathLike | None) -> None:
    """Use ``path`` for recordings by name (None: back to the default)."""
    _settings["dir"] = None if path is None else Path(path)


def recording_path(name: str) -> Path:
    """Where the recording of the program called ``name`` is (or would be)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ValueError(f"{name!r} cannot name a recording file (use letters, digits, _ . -)")
    return recordings_dir() / f"{name}{recording.SUFFIX}"


def find_recording(name: str) -> Path | None:
    """The recording of ``name`` in :func:`recordings_dir`, if there is one."""
    try:
        path = recording_path(name)
    except ValueError:
        return None
    return path if path.is_file() else None


def _flag(key: str, env: str) -> bool:
    if _settings[key] is not None:
        return bool(_settings[key])
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")


def set_recording(on: bool | None) -> None:
    """Make live runs refresh their recordings (None: follow ``$EBPF_MAGIC_RECORD``)."""
    _settings["record"] = on


def recording_enabled() -> bool:
    """True when live runs should (re)write their recordings."""
    return _flag("record", RECORD_ENV)


def set_replay(on: bool | None) -> None:
    """Replay recordings even where live tracing works (None: follow ``$EBPF_MAGIC_REPLAY``)."""
    _settings["replay"] = on


def can_run_live(source: str | None = None, backend: str | None = None) -> tuple[bool, str]:
    """Whether this process can load BPF programs, and if not, why not.

    With ``source``, whether the backend for it (``backend``, else chosen by its dialect) is
    available here; without, whether any backend is.
    """
    if _flag("replay", REPLAY_ENV):
        how = "set_replay(True)" if _settings["replay"] else f"{REPLAY_ENV}=1"
        return False, f"replay was requested ({how})"
    if platform.system() != "Linux":
        return False, f"eBPF needs Linux; this is {platform.system()}"
    from ebpf_magic.kernel import host as kernel

    if not kernel.has_bpf_rights():
        return False, f"no rights to load BPF: {kernel.rights_summary()}"
    try:
        wanted = [choose_backend(source, backend)] if source is not None else list(BACKENDS)
    except BPFError:
        return True, "live"  # an unknown --backend is the live run's error to report
    why = []
    for name in wanted:
        ok, reason = available(name)
        if ok:
            return True, "live"
        why.append(f"no {name} backend: {reason.splitlines()[0] if reason else 'missing'}")
    return False, "; ".join(why)


def live() -> bool:
    """True when ``%%bpf`` cells run live here, False when they replay recordings."""
    return can_run_live()[0]


def replay_cell(name: str, why: str = "") -> ReplayedProgram:
    """The recording of ``name`` for a ``%%bpf NAME`` cell that cannot run live.

    ``why`` (from :func:`can_run_live`) goes into the error when there is no
    recording.
    """
    path = find_recording(name)
    if path is None:
        raise ReplayError(f"%%bpf {name} cannot run live here ({why or 'no BPF'}) and there is "
                          f"no recording of it at {recording_path(name)}",
                          f"Run the notebook live once with {RECORD_ENV}=1 (or %%bpf {name} "
                          f"--record) and `%bpf save {name}`, or point {RECORDINGS_ENV} at "
                          "the folder holding the recordings.")
    return load(path, name)


def announce(prog: ReplayedProgram, why: str = "") -> str:
    """The line a notebook shows when a cell replays instead of running live."""
    because = f" ({why})" if why else ""
    return f"{prog.name}: {prog.recording}{because}"


# -- replayed objects --------------------------------------------------------------


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
        if h.get("cpus"):
            facts.append(f"{h['cpus']} CPUs")
        on = f"on {h['hostname']} " if h.get("hostname") else ""
        return f"{on}({', '.join(facts)})"

    def __str__(self) -> str:
        return (f"replayed from {self.path}, captured {self.where()} at {_when(self.start)} "
                f"for {self.duration:.1f} s")


class ReplayedStream:
    """The recorded events of one stream."""

    running = False

    def __init__(self, name: str, df: pd.DataFrame, stats: dict[str, Any]) -> None:
        self.name = name
        self._df = df
        self.stats = dict(stats)

    @property
    def df(self) -> pd.DataFrame:
        return self._df.copy(deep=False)

    @property
    def received(self) -> int:
        return len(self._df)

    def __len__(self) -> int:
        return len(self._df)

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events (all with ``None``)."""
        return self.df if n is None else self._df.iloc[len(self._df) - min(n, len(self._df)):]

    def live(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """A recording does not change: its events, as a table."""
        return self.df

    def summary(self) -> str:
        lost = self.stats.get("lost_kernel", 0)
        return f"{self.name} (replayed): {len(self._df):,} events, {lost:,} lost in the kernel"

    def __repr__(self) -> str:
        return f"<ReplayedStream {self.name}: {len(self._df)} event(s)>"

    def _repr_html_(self) -> str:
        return self._df.tail(20).to_html()


@dataclass
class ReplayedHandle:
    """What a live map's handle says about its layout (no descriptor)."""

    name: str
    kind: str
    key_dtype: np.dtype | None
    value_dtype: np.dtype | None
    max_entries: int
    declared: str = ""
    fd: int = -1
    extra: dict = field(default_factory=dict)


class ReplayedMap:
    """The recorded snapshots of one map; ``.df`` is the last one. Read-only."""

    writable = False

    def __init__(self, name: str, meta: dict[str, Any],
                 snapshots: list[tuple[float, pd.DataFrame]]) -> None:
        self.name = name
        self.kind = meta["kind"]
        self.key_type = meta["key_type"]
        self.value_type = meta["value_type"]
        self.max_entries = meta["max_entries"]
        self.handle = ReplayedHandle(name, self.kind, meta["key_dtype"], meta["value_dtype"],
                                     self.max_entries or 0, meta["declared"])
        self._info = dict(meta["info"])
        self._snapshots = snapshots

    @property
    def percpu(self) -> bool:
        return self.kind in ("percpu_hash", "percpu_array", "lru_percpu_hash")

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
        return recording.stack(self._snapshots)

    def history(self) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
        """``(time, frame)`` of every snapshot, oldest first (what heatmaps take)."""
        return [(pd.Timestamp(t, unit="s", tz="UTC"), df) for t, df in self._snapshots]

    def hist(self, kind: str | None = None, step: int = 1) -> Any:
        """The final snapshot of a histogram map as a :class:`.histograms.Histogram`."""
        from ebpf_magic.data.histograms import Histogram

        try:
            return Histogram(self.df, kind=kind, name=self.name)
        except ValueError:
            raise TypeError(f"{self.name} was not recorded as a histogram") from None

    def __len__(self) -> int:
        return len(self._snapshots[-1][1]) if self._snapshots else 0

    def __getitem__(self, key: Any) -> Any:
        raise TypeError(f"{self.name} is a replayed map: read it as a table with .df")

    def __repr__(self) -> str:
        return (f"<ReplayedMap {self.name}: {self.handle.declared or self.kind} "
                f"{self.key_type} -> {self.value_type}, {len(self._snapshots)} snapshot(s)>")

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


class _Named(Mapping):
    def __init__(self, items: dict[str, Any], what: str) -> None:
        self._items = items
        self._what = what

    def __getitem__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"no {self._what} named {name!r}; {self._what}s: "
                           f"{', '.join(self._items) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def _ipython_key_completions_(self) -> list[str]:
        """The names IPython offers after ``prog.maps["`` or ``prog.events["``."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<{self._what}s {', '.join(self._items) or '(none)'} (replayed)>"


class ReplayedMaps(_Named):
    def __init__(self, maps: dict[str, ReplayedMap]) -> None:
        super().__init__(maps, "map")

    @property
    def df(self) -> pd.DataFrame:
        return pd.DataFrame([m.info() for m in self._items.values()])

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


class ReplayedStreams(_Named):
    def __init__(self, streams: dict[str, ReplayedStream]) -> None:
        super().__init__(streams, "stream")

    @property
    def received(self) -> int:
        return sum(len(s) for s in self._items.values())

    def close(self) -> None:
        pass


class ReplayedProgram:
    """A recorded program, read back: the read API of a live one, nothing in the kernel."""

    running = False
    readable = True  # recorded maps stay readable; a stopped live program's do not

    def __init__(self, name: str, program: dict[str, Any], info: RecordingInfo,
                 streams: dict[str, ReplayedStream], maps: dict[str, ReplayedMap],
                 snapshots: list[recording.Snapshot],
                 tables: dict[str, pd.DataFrame] | None = None) -> None:
        self.name = name
        self.source: str = program["source"]
        self.cflags: list[str] = program["cflags"]
        self.pid: int | None = program["pid"]
        self.probes: list[Probe] = program["probes"]
        self.attached: list[str] = program["attached"]
        self.backend: str = program["backend"]
        self.recording = info
        self.started_at = info.start
        self.stopped_at = info.end
        self.warnings: list[str] = []
        self.events = ReplayedStreams(streams)
        self.maps = ReplayedMaps(maps)
        self.recorder = recording.Recorder(self)
        self.recorder.snapshots = snapshots
        self.tables: dict[str, pd.DataFrame] = dict(tables or {})

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

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "probes": ", ".join(self.attached) or "-",
                "maps": ", ".join(self.maps), "events": self.events_seen,
                "uptime_s": round(self.uptime, 1), "state": "replayed"}

    def stop(self) -> None:
        """Nothing runs: a no-op, for code written for live programs."""

    def save(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write this recording again (e.g. ``hostname=False`` to share it)."""
        return recording.save(self, path, **options)

    def browse(self, *args: Any, **kwargs: Any) -> Any:
        """The map browser, over the recorded snapshots."""
        from ebpf_magic.present.widgets import MapBrowser

        return MapBrowser(lambda: dict(self.maps), *args, **kwargs)

    def __enter__(self) -> ReplayedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ReplayedProgram {self.name}: {self.recording}>"

    def _repr_html_(self) -> str:
        import html

        return (f"<p><b>{html.escape(self.name)}</b> {html.escape(str(self.recording))}</p>"
                + pd.DataFrame([self.summary()]).to_html(index=False))


# -- reading -------------------------------------------------------------------------


# A map's listing row (maps.Map.info()): exactly these fields, of these types.
_MAP_INFO = {"map": str, "kind": str, "key": str, "value": str, "entries": int,
             "max_entries": int, "full": bool}


def _map_info(info: dict[str, Any], where: str) -> dict[str, Any]:
    """A recorded map listing row, checked field by field (widgets show it as HTML).

    Fields other than these are refused.
    """
    unknown = sorted(str(k) for k in set(info) - set(_MAP_INFO))
    if unknown:
        raise ReplayError(f"malformed recording: {where} has unknown fields {unknown[:5]}")
    return {key: _need(info, key, types, where, optional=True)
            for key, types in _MAP_INFO.items() if key in info}


def _need(obj: Any, key: str, types: type | tuple[type, ...], where: str,
          optional: bool = False) -> Any:
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


def _stream_stats(stats: dict, where: str) -> dict[str, Any]:
    """A stream's counters as the live stream has them: ints, ``lost_per_cpu`` keyed by CPU."""
    out: dict[str, Any] = {}
    for key in stats:
        if key == "lost_per_cpu":
            per_cpu = _need(stats, key, dict, where)
            if not all(isinstance(c, str) and c.isdigit() and len(c) < 8 for c in per_cpu):
                raise ReplayError(f"malformed recording: {where}.lost_per_cpu has a key "
                                  "that is not a CPU number")
            out[key] = {int(c): _need(per_cpu, c, int, f"{where}.lost_per_cpu")
                        for c in per_cpu}
        else:
            out[str(key)] = _need(stats, key, int, where)
    return out


def _need_time(obj: Any, key: str, where: str) -> float | None:
    value = _need(obj, key, (int, float), where, optional=True)
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ReplayError(f"malformed recording: {where}.{key} is not a finite time")
    if not MIN_TIME <= value <= MAX_TIME:
        shown = f"{value:.6g}" if isinstance(value, float) else f"{str(value)[:20]}"
        raise ReplayError(f"malformed recording: {where}.{key} is out of range ({shown} s "
                          f"since 1970, not between {MIN_TIME:.0f} and {MAX_TIME:.0f})")
    return float(value)


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReplayError(f"malformed recording: {where} is not a list of strings")
    return list(value)


def _safe_dtype(descr: Any, where: str, depth: int = 0) -> np.dtype | None:
    """A numpy dtype from its JSON description, allowing plain C data only."""
    if descr is None and depth == 0:
        return None
    try:
        return np.dtype(_dtype_spec(descr, where, depth))
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's own rejection of a crafted layout
        raise ReplayError(f"malformed recording: {where} is not a valid layout ({e})") from None


def _dtype_spec(descr: Any, where: str, depth: int) -> Any:
    if depth > 16:
        raise ReplayError(f"malformed recording: {where} nests too deeply")
    if isinstance(descr, str):
        if not _SCALAR_DTYPE.fullmatch(descr):
            raise ReplayError(f"malformed recording: {where} names an unsupported type {descr!r}")
        return descr
    if not isinstance(descr, list) or not descr or len(descr) > 4096:
        raise ReplayError(f"malformed recording: {where} is not a type description")
    fields = []
    for item in descr:
        if not isinstance(item, list) or len(item) not in (2, 3) or not isinstance(item[0], str):
            raise ReplayError(f"malformed recording: {where} has a malformed field")
        spec: tuple = (item[0], _dtype_spec(item[1], where, depth + 1))
        if len(item) == 3:
            shape = item[2]
            if not isinstance(shape, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 20
                    for n in shape) or len(shape) > 4:
                raise ReplayError(f"malformed recording: {where} has a malformed array shape")
            spec += (tuple(shape),)
        fields.append(spec)
    return fields


_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def _directory_extent(path: Path) -> tuple[int, int] | None:
    """``(members, bytes)`` of a zip's central directory, read from its end records alone.

    Finds the end-of-central-directory record (and its ZIP64 form) the way
    :mod:`zipfile` does, so the limits hold for the directory zipfile will read;
    None when there is no such record (zipfile then rejects the file itself).
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < _EOCD.size:
            return None
        start = max(size - (1 << 16) - _EOCD.size, 0)
        f.seek(start)
        tail = f.read()
        at = len(tail) - _EOCD.size
        if not (tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < _EOCD.size:
                return None
        record = _EOCD.unpack_from(tail, at)
        members, directory = record[4], record[5]
        where = start + at  # the record's offset in the file
        if where < _EOCD64_LOCATOR.size + _EOCD64.size:
            return members, directory
        f.seek(where - _EOCD64_LOCATOR.size)
        locator = f.read(_EOCD64_LOCATOR.size)
        if locator[:4] != b"PK\x06\x07":
            return members, directory
        f.seek(where - _EOCD64_LOCATOR.size - _EOCD64.size)
        record64 = _EOCD64.unpack(f.read(_EOCD64.size))
        if record64[0] != b"PK\x06\x06":
            return members, directory
        return record64[7], record64[8]


class _Archive:
    """A recording's zip, read within limits."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            extent = _directory_extent(path)
        except OSError as e:
            raise ReplayError(f"cannot read {path} ({e})") from None
        if extent is not None:
            members, directory = extent
            if members > MAX_MEMBERS or directory > MAX_MEMBERS * MAX_DIRECTORY_ENTRY:
                raise ReplayError(f"{path} lists {members:,} members in {directory:,} bytes, "
                                  f"more than a recording may hold ({MAX_MEMBERS:,} members in "
                                  f"{MAX_MEMBERS * MAX_DIRECTORY_ENTRY:,} bytes)")
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                RuntimeError, OverflowError, KeyError, IndexError) as e:
            raise ReplayError(f"{path} is not a recording (not a readable zip file: {e})",
                              "Recordings are .bpfrec files written by prog.save() or "
                              "%bpf save.") from None
        if len(infos) > MAX_MEMBERS:
            raise ReplayError(f"{path} has {len(infos)} members, more than a recording may "
                              f"hold ({MAX_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise ReplayError(f"{path} is a crafted file: it repeats member names")
        for name in names:
            if name != recording.MANIFEST and not _MEMBER.fullmatch(name):
                raise ReplayError(f"{path} is not a recording: unexpected member {name!r}")
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise ReplayError(f"{path} would unpack to {total} bytes, more than the limit "
                              f"({max_bytes})", "Pass max_bytes= to load() for larger "
                              "recordings you trust.")
        if any(i.flag_bits & 0x1 for i in infos):
            raise ReplayError(f"{path} has encrypted members, which recordings never have")
        self.path = path
        self.sizes = {i.filename: i.file_size for i in infos}
        self.budget = max_bytes  # members still allowed to unpack
        self.decoded = max_bytes  # frames still allowed to decode

    def read(self, name: str, limit: int | None = None) -> bytes:
        if name not in self.sizes:
            raise ReplayError(f"{self.path} is truncated or incomplete: {name} is missing")
        cap = min(self.sizes[name], self.budget if limit is None else limit)
        if self.sizes[name] > cap:
            raise ReplayError(f"{self.path}: {name} is larger than allowed ({cap} bytes)")
        try:
            with self.zf.open(name) as f:
                data = f.read(cap + 1)
        except Exception as e:  # noqa: BLE001 - zlib, CRC and format errors of a bad member
            raise ReplayError(f"{self.path} is corrupted: cannot read {name} ({e})") from None
        if len(data) > cap:
            raise ReplayError(f"{self.path}: {name} unpacks to more than it declares")
        self.budget -= len(data)
        return data

    def close(self) -> None:
        self.zf.close()


def _column(col: Any, kind: str, where: str) -> Any:
    """One Parquet column as the pandas values the manifest says it held."""
    import pyarrow as pa

    t = col.type
    bad = ReplayError(f"{where} does not match the manifest: {t} is not {kind}")
    if kind in _NUMERIC:
        dt = np.dtype(kind)
        if t != pa.from_numpy_dtype(dt) or col.null_count:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    if _TIMES.fullmatch(kind):
        dt = np.dtype(kind)
        unit = np.datetime_data(dt)[0]
        want = pa.timestamp(unit) if dt.kind == "M" else pa.duration(unit)
        if t != want:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    m = _TZ.fullmatch(kind)
    if m:
        if t != pa.timestamp(m.group(1), tz="UTC"):
            raise bad
        return pd.Series(col.to_pandas()).astype(kind.replace("datetime64", "datetime64", 1))
    if kind in ("str", "object:str", "json", "category", "string"):
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise bad
        values = col.to_pylist()
        if kind == "json":
            try:
                return _objects([None if v is None else json.loads(v) for v in values])
            except (ValueError, RecursionError) as e:
                raise ReplayError(f"{where}: a json column holds invalid JSON ({e})") from None
        if kind == "category":
            return pd.Categorical(values)
        if kind in ("str", "string"):
            return pd.array(values, dtype=kind)
        return _objects(values)
    if kind == "bytes":
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind == "list":
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind in recording.EXTENSION_DTYPES:
        ok = {"boolean": pa.types.is_boolean, "string": pa.types.is_string}.get(
            kind, pa.types.is_integer if "Int" in kind else pa.types.is_floating)
        if not (ok(t) or pa.types.is_null(t)):
            raise bad
        return pd.array(col.to_pylist(), dtype=kind)
    raise ReplayError(f"{where}: unknown column type {kind!r} in the manifest")


def _objects(values: list[Any]) -> pd.Series:
    """Python objects as an ``object`` column (pandas would infer ``str`` from strings)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return pd.Series(out, dtype=object, copy=False)


# Decoding a Parquet member is bounded twice. Before anything is decoded, its
# footer and page headers (row groups, rows, values and bytes of every page) must
# fit the budget at a conservative width per value. Then row groups are decoded
# one at a time and their actual decoded size is added up; string columns whose
# dictionaries might expand past the limits stay dictionary-encoded until then,
# so one row group of repeated long strings is measured, not materialized.

_PHYSICAL_WIDTH = {"BOOLEAN": 8, "INT32": 8, "INT64": 8, "INT96": 12, "FLOAT": 8, "DOUBLE": 8,
                   "BYTE_ARRAY": 8}


def _too_big(where: str, what: str, size: int, limit: int) -> ReplayError:
    return ReplayError(f"{where}: {what} {size:,} bytes, over the limit of {limit:,} bytes",
                       "Pass max_bytes= to load() for larger recordings you trust.")


class _Thrift:
    """Just enough of Thrift's compact protocol to read Parquet footers and page headers."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("Parquet metadata runs past its end")
        self.pos += n

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("Parquet metadata holds an overlong integer")

    def int(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self, depth: int = 0) -> dict[int, Any]:
        """A struct's integer, struct and list fields by id (other values are skipped)."""
        if depth > 16:
            raise ValueError("Parquet metadata nests too deeply")
        fields: dict[int, Any] = {}
        last = 0
        while (head := self.byte()) & 0x0F:
            last = last + (head >> 4) if head >> 4 else self.int()
            fields[last] = self.value(head & 0x0F, depth)
        return fields

    def value(self, kind: int, depth: int) -> Any:
        if kind in (1, 2):  # a boolean, in the field header itself
            return kind == 1
        if kind in (4, 5, 6):
            return self.int()
        if kind == 12:
            return self.struct(depth + 1)
        if kind in (3, 7, 8):  # byte, double, binary
            self.skip(1 if kind == 3 else 8 if kind == 7 else self.varint())
        elif kind in (9, 10):  # list, set
            head = self.byte()
            count = self.varint() if head >> 4 == 15 else head >> 4
            return self.elements(count, [head & 0x0F], depth)
        elif kind == 11:  # map
            count = self.varint()
            if count:
                types = self.byte()
                self.elements(count, [types >> 4, types & 0x0F], depth)
        else:
            raise ValueError(f"Parquet metadata holds an unknown Thrift type {kind}")
        return None

    def elements(self, count: int, kinds: list[int], depth: int) -> list[Any]:
        if count > self.end - self.pos:  # every element takes at least a byte
            raise ValueError("Parquet metadata holds a list longer than itself")
        out = []
        for _ in range(count):
            for kind in kinds:
                if kind in (1, 2):
                    self.skip(1)
                else:
                    out.append(self.value(kind, depth + 1))
        return out


_DATA_PAGES = {0: 5, 3: 8}  # page type -> the header field describing a data page


def _row_groups(data: bytes, footer: int) -> list[tuple[int, list[dict[int, int]]]]:
    """``(rows, [column chunk metadata])`` of each row group, from the footer's own bytes.

    pyarrow's accessors for column chunk metadata abort the whole process on
    some malformed footers, so the numbers the limits need are read here.
    Column chunk metadata is Parquet's ColumnMetaData, by Thrift field id.
    """
    end = len(data) - 8
    if footer > end - 4:
        raise ValueError("the metadata footer is longer than the file")
    meta = _Thrift(data, end - footer, end).struct()
    groups = []
    for group in meta.get(4) or []:
        if not isinstance(group, dict) or not isinstance(group.get(3), int):
            raise ValueError("a row group has no row count")
        chunks = [c.get(3) if isinstance(c, dict) else None for c in group.get(1) or []]
        for chunk in chunks:
            if not (isinstance(chunk, dict) and all(isinstance(chunk.get(k), int)
                                                    for k in (5, 6, 7, 9))):
                raise ValueError("a column chunk has no readable metadata")
        groups.append((group[3], chunks))
    return groups


@dataclass
class _Chunk:
    """What a column chunk's pages hold, from their own headers."""

    values: int = 0  # values in data pages
    size: int = 0  # uncompressed bytes of all pages
    looked_up: int = 0  # values of data pages that index the dictionary
    dictionary: tuple[int, int, int, int] | None = None  # offset, stored, unpacked, entries


def _pages(data: bytes, chunk: dict[int, int]) -> _Chunk:
    """The pages of a column chunk, from their own headers.

    The reader decodes whole pages, whatever the column's metadata says, so
    these are the numbers that bound what decoding it costs. It reads no pages
    for a column that declares no values.
    """
    out = _Chunk()
    if chunk[5] <= 0:
        return out
    start = chunk[9]
    dictionary = chunk.get(11)
    if isinstance(dictionary, int) and 0 < dictionary < start:
        start = dictionary
    end = start + chunk[7]
    if not 0 <= start <= end <= len(data):
        raise ValueError("a column's pages lie outside the file")
    reader = _Thrift(data, start, end)
    while reader.pos < end:
        header = reader.struct()
        uncompressed, compressed = header.get(2), header.get(3)
        if not (isinstance(uncompressed, int) and isinstance(compressed, int)
                and uncompressed >= 0):
            raise ValueError("a page header has no valid sizes")
        kind = header.get(1)
        described = header.get(_DATA_PAGES.get(kind, 0))
        if isinstance(described, dict) and isinstance(described.get(1), int):
            count = max(described[1], 0)
            out.values += count
            encoding = described.get(2 if kind == 0 else 4)
            if encoding == _DELTA_BYTE_ARRAY:
                raise ValueError("a page is DELTA_BYTE_ARRAY-encoded, whose values share "
                                 "prefixes without bound; recordings never use it")
            if encoding not in _PLAIN_ENCODINGS:
                out.looked_up += count
        elif kind == 2 and isinstance(header.get(7), dict):
            entries = header[7].get(1)
            out.dictionary = (reader.pos, compressed, uncompressed,
                              entries if isinstance(entries, int) else -1)
        out.size += uncompressed
        reader.skip(compressed)
    return out


_PLAIN_ENCODINGS = {0, 3, 4, 5, 6, 9}  # value encodings that do not index a dictionary
_DELTA_BYTE_ARRAY = 7
_CODECS = {0: None, 1: "snappy", 2: "gzip", 4: "brotli", 6: "zstd", 7: "lz4_raw"}


def _longest_entry(data: bytes, chunk: dict[int, int], pages: _Chunk) -> int | None:
    """The longest value in a chunk's string dictionary, or None when that is costly to tell."""
    import pyarrow as pa

    if pages.dictionary is None:
        return 0
    start, stored, unpacked, entries = pages.dictionary
    if chunk.get(4) not in _CODECS or not 0 <= entries <= 1 << 16 or unpacked > 4 << 20:
        return None
    raw = data[start:start + stored]
    codec = _CODECS[chunk[4]]
    if codec is not None:
        try:
            raw = pa.Codec(codec).decompress(raw, decompressed_size=unpacked).to_pybytes()
        except (pa.ArrowException, ValueError):
            return None
    longest = pos = 0
    for _ in range(entries):  # PLAIN byte arrays: a 4-byte length, then the bytes
        n = int.from_bytes(raw[pos:pos + 4], "little")
        longest = max(longest, min(n, len(raw)))
        pos += 4 + n
    return longest


def _leaves(t: Any) -> int:
    """How many Parquet leaf columns an Arrow type is stored as."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaves(t.value_type)
    if pa.types.is_struct(t):
        return sum(_leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaves(t.key_type) + _leaves(t.item_type)
    return 1


def _read_parquet(data: bytes, names: list[str], rows: int, objects: list[bool], budget: int,
                  where: str) -> tuple[Any, int]:
    """A Parquet member as an Arrow table, and what it costs decoded, within ``budget`` bytes.

    ``objects`` says which columns become Python objects (each value then costs
    :data:`OBJECT_BYTES` more).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(data) < 12 or data[-4:] != b"PAR1":
        raise ReplayError(f"{where} is not a Parquet file")
    footer = int.from_bytes(data[-8:-4], "little")
    if footer > MAX_FOOTER:
        raise ReplayError(f"{where} has a {footer:,}-byte metadata footer, more than a "
                          f"recording writes ({MAX_FOOTER:,})")
    pf = pq.ParquetFile(pa.BufferReader(data), thrift_string_size_limit=MAX_FOOTER,
                        thrift_container_size_limit=1 << 16)
    meta = pf.metadata
    fields = pf.schema_arrow
    if meta.num_rows != rows or fields.names != names:
        raise ReplayError(f"{where} does not match the manifest (its rows or columns differ)")
    owner = [i for i, f in enumerate(fields) for _ in range(_leaves(f.type))]
    if len(owner) != meta.num_columns:
        raise ReplayError(f"{where} does not match the manifest (its columns differ)")
    leaves = [pf.schema.column(j) for j in range(meta.num_columns)]
    groups = _row_groups(data, footer)
    if len(groups) != meta.num_row_groups or any(
            len(chunks) != len(leaves) or n != meta.row_group(g).num_rows
            for g, (n, chunks) in enumerate(groups)):
        raise ReplayError(f"{where} is inconsistent: its row groups cannot be read")
    group_limit = min(MAX_ROW_GROUP_BYTES, budget)
    column_limit = min(MAX_COLUMN_BYTES, budget)
    total = grown = 0
    expanding: set[int] = set()  # string columns whose dictionaries are indexed
    bounded = True  # whether what those dictionaries expand to is known to fit
    for g, (group_rows, chunks) in enumerate(groups):
        estimate = expansion = 0
        for j, (leaf, chunk) in enumerate(zip(leaves, chunks, strict=True)):
            if leaf.max_repetition_level == 0 and chunk[5] != group_rows:
                raise ReplayError(f"{where} is inconsistent: a column of row group {g} holds "
                                  f"{chunk[5]} values for {group_rows} rows")
            pages = _pages(data, chunk)
            values = pages.values
            declared = max(chunk[6], pages.size)
            if declared > column_limit:
                raise _too_big(where, f"column {leaf.path} of row group {g} declares",
                               declared, column_limit)
            width = leaf.length if leaf.physical_type == "FIXED_LEN_BYTE_ARRAY" else \
                _PHYSICAL_WIDTH.get(leaf.physical_type, 8)
            per_value = width + (OBJECT_BYTES if objects[owner[j]] else 0)
            estimate += max(max(chunk[5], values) * per_value, declared)
            if leaf.physical_type == "BYTE_ARRAY" and pages.looked_up:
                expanding.add(j)
                longest = _longest_entry(data, chunk, pages)
                bounded = bounded and longest is not None
                expansion += pages.looked_up * (longest or 0) * (2 if objects[owner[j]] else 1)
        bounded = bounded and estimate + expansion <= group_limit
        grown += expansion
        if estimate > group_limit:
            raise _too_big(where, f"row group {g} would decode to", estimate, group_limit)
        total += estimate
        if total > budget:
            raise _too_big(where, "its metadata declares at least", total, budget)

    # strings whose dictionaries might expand past the limits stay dictionary-encoded until
    # their decoded size is known
    strings = [] if bounded and total + grown <= budget else sorted(expanding)
    pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings,
                        thrift_string_size_limit=MAX_FOOTER,
                        thrift_container_size_limit=1 << 16)
    parts = []
    spent = 0
    for g in range(meta.num_row_groups):
        part = pf.read_row_group(g, use_threads=False)
        if part.num_rows != groups[g][0]:
            raise ReplayError(f"{where} is inconsistent: row group {g} holds {part.num_rows} "
                              f"rows, not the {groups[g][0]} it declares")
        cost = 0
        for i, column in enumerate(part.columns):
            for chunk in column.chunks:
                size, count = _decoded_size(chunk)
                cost += 2 * size + count * OBJECT_BYTES if objects[i] else size
        spent += cost
        if cost > group_limit:
            raise _too_big(where, f"row group {g} decodes to", cost, group_limit)
        if spent > budget:
            raise _too_big(where, "it decodes to at least", spent, budget)
        parts.append(pa.Table.from_arrays([_plain(c) for c in part.columns],
                                          names=part.column_names))
    if not parts:
        return pa.table({n: pa.array([], _plain_type(f.type)) for n, f in
                         zip(names, fields, strict=True)}), 0
    return pa.concat_tables(parts), spent


def _decoded_size(arr: Any) -> tuple[int, int]:
    """``(bytes, values)`` of an Arrow array with its dictionaries expanded, without expanding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        lengths = pc.binary_length(arr.dictionary)
        data = pc.sum(pc.take(lengths, arr.indices)).as_py() or 0
        return arr.indices.nbytes + (len(arr) + 1) * 8 + data, len(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        size, count = _decoded_size(arr.values)
        return size + (len(arr) + 1) * 8, count + len(arr)
    if pa.types.is_struct(t):
        sizes = [_decoded_size(arr.field(i)) for i in range(t.num_fields)]
        return sum(s for s, _ in sizes), sum(c for _, c in sizes) + len(arr)
    return arr.nbytes, len(arr)


def _plain_type(t: Any) -> Any:
    """``t`` with its dictionary-encoded parts as their value types."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_plain_type(t.field(i).type))
                          for i in range(t.num_fields)])
    return t


def _plain(column: Any) -> Any:
    plain = _plain_type(column.type)
    return column if plain == column.type else column.cast(plain)


def _frame(archive: _Archive, desc: dict[str, Any], where: str) -> pd.DataFrame:
    member = _need(desc, "file", str, where)
    rows = _need(desc, "rows", int, where)
    cols = _need(desc, "columns", list, where)
    index = _str_list(desc.get("index", []), f"{where}.index")
    spec: list[tuple[str, str]] = []
    for c in cols:
        if not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)):
            raise ReplayError(f"malformed recording: {where}.columns is not [[name, type]...]")
        spec.append((c[0], c[1]))
    names = [n for n, _ in spec]
    if len(set(names)) != len(names) or not set(index) <= set(names):
        raise ReplayError(f"malformed recording: {where} has duplicate or unknown columns")
    data = archive.read(member)
    where = f"{archive.path}:{member}"
    objects = [kind not in _NUMERIC and not _TIMES.fullmatch(kind) for _, kind in spec]
    try:
        table, cost = _read_parquet(data, names, rows, objects, archive.decoded, where)
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a crafted or damaged Parquet file
        raise ReplayError(f"{where} is not a readable Parquet file ({e})") from None
    archive.decoded -= cost
    if table.num_rows != rows:
        raise ReplayError(f"{where} does not match the manifest (row count)")
    try:
        values = {name: _column(table.column(i).combine_chunks(), kind, where)
                  for i, (name, kind) in enumerate(spec)}
    except ReplayError:
        raise
    except Exception as e:  # noqa: BLE001 - a value the declared type cannot hold
        raise ReplayError(f"{where} holds values its declared types cannot hold ({e})") \
            from None
    df = pd.DataFrame(values, index=pd.RangeIndex(rows)) if values else \
        pd.DataFrame(index=pd.RangeIndex(rows))
    if index:
        df = df.set_index(index)
        if index[0].startswith("level_") and len(index) == 1:
            df.index.name = None
    return df


def load(path: str | os.PathLike, name: str | None = None, *,
         max_bytes: int = MAX_BYTES) -> ReplayedProgram:
    """Read the recording at ``path`` into a :class:`ReplayedProgram` (named ``name``).

    Raises :class:`~ebpf_magic.errors.ReplayError` for anything that is not
    a complete, well-formed recording, including files whose members unpack to
    more than ``max_bytes`` or whose frames decode to more (see
    :data:`OBJECT_BYTES` for what a Python object counts).
    """
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"no recording at {path}",
                          f"Recordings by name live in {recordings_dir()}.")
    archive = _Archive(path, max_bytes)
    try:
        return _load(archive, name)
    finally:
        archive.close()


def _load(archive: _Archive, name: str | None) -> ReplayedProgram:
    raw = archive.read(recording.MANIFEST, MAX_MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReplayError(f"{archive.path} has a corrupted manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != recording.FORMAT:
        raise ReplayError(f"{archive.path} is not an ebpf_magic recording")
    version = _need(manifest, "version", int, "manifest")
    if version > recording.VERSION or version < 1:
        raise ReplayError(f"{archive.path} is a version {version} recording; this ebpf_magic "
                          f"reads versions up to {recording.VERSION}",
                          "Upgrade ebpf_magic to replay it.")
    prog = _need(manifest, "program", dict, "manifest")
    program = {
        "name": _need(prog, "name", str, "program"),
        "source": _need(prog, "source", str, "program"),
        "cflags": _str_list(_need(prog, "cflags", list, "program"), "program.cflags"),
        "pid": _need(prog, "pid", int, "program", optional=True),
        "attached": _str_list(_need(prog, "attached", list, "program"), "program.attached"),
        "backend": _backend(prog),
        "probes": [],
    }
    for p in _need(prog, "probes", list, "program"):
        program["probes"].append(Probe(
            _need(p, "kind", str, "probe"), _need(p, "target", str, "probe"),
            _need(p, "function", str, "probe"), _need(p, "pid", int, "probe", optional=True)))
    host = _need(manifest, "host", dict, "manifest")
    for key in ("system", "kernel", "machine", "hostname"):
        _need(host, key, str, "host", optional=True)
    for key in ("bcc", "libbpf", "clang"):  # the versions of the backend that ran it
        if key in host:
            _need(host, key, str, "host", optional=True)
    _need(host, "cpus", int, "host", optional=True)
    capture = _need(manifest, "capture", dict, "manifest")
    info = RecordingInfo(archive.path, version, host, _need_time(capture, "start", "capture"),
                         _need_time(capture, "end", "capture"),
                         _need_time(capture, "saved", "capture"))

    streams: dict[str, ReplayedStream] = {}
    for i, s in enumerate(_need(manifest, "streams", list, "manifest")):
        where = f"streams[{i}]"
        sname = _need(s, "name", str, where)
        stats = _stream_stats(_need(s, "stats", dict, where), f"{where}.stats")
        streams[sname] = ReplayedStream(sname, _frame(archive, s, where), stats)

    maps: dict[str, ReplayedMap] = {}
    by_time: dict[float, dict[str, pd.DataFrame]] = {}
    for i, m in enumerate(_need(manifest, "maps", list, "manifest")):
        where = f"maps[{i}]"
        mname = _need(m, "name", str, where)
        meta = {"kind": _need(m, "kind", str, where),
                "declared": _need(m, "declared", str, where),
                "key_type": _need(m, "key_type", str, where),
                "value_type": _need(m, "value_type", str, where),
                "max_entries": _need(m, "max_entries", int, where, optional=True),
                "key_dtype": _safe_dtype(m.get("key_dtype"), f"{where}.key_dtype"),
                "value_dtype": _safe_dtype(m.get("value_dtype"), f"{where}.value_dtype"),
                "info": _map_info(_need(m, "info", dict, where), f"{where}.info")}
        snaps = []
        for j, snap in enumerate(_need(m, "snapshots", list, where)):
            t = _need_time(snap, "time", f"{where}.snapshots[{j}]")
            if t is None:
                raise ReplayError(f"malformed recording: {where}.snapshots[{j}] has no time")
            df = _frame(archive, snap, f"{where}.snapshots[{j}]")
            snaps.append((t, df))
            by_time.setdefault(t, {})[mname] = df
        maps[mname] = ReplayedMap(mname, meta, snaps)
    snapshots = [recording.Snapshot(t, frames) for t, frames in sorted(by_time.items())]
    tables = {}
    for i, t in enumerate(_need(manifest, "tables", list, "manifest") if "tables" in manifest
                          else []):
        tables[_need(t, "name", str, f"tables[{i}]")] = _frame(archive, t, f"tables[{i}]")
    return ReplayedProgram(name or program["name"], program, info, streams, maps, snapshots,
                           tables)


def _backend(prog: dict[str, Any]) -> str:
    """The backend that ran a recorded program; for recordings that do not name it, the one
    its source's dialect chooses."""
    if prog.get("backend") is None:
        return choose_backend(prog["source"])
    name = _need(prog, "backend", str, "program")
    if name not in BACKENDS:
        raise ReplayError(f"malformed recording: program.backend is {name[:40]!r}, not one of "
                          f"{', '.join(BACKENDS)}")
    return name


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A recording's manifest alone (program, host, capture), without its data."""
    archive = _Archive(Path(path), MAX_BYTES)
    try:
        return json.load(io.BytesIO(archive.read(recording.MANIFEST, MAX_MANIFEST)))
    except ValueError as e:
        raise ReplayError(f"{path} has a corrupted manifest ({e})") from None
    finally:
        archive.close()
