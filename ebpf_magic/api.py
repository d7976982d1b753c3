"""The read API that live, replayed and cluster programs all implement.

A consumer (the browser, plots, the recorder, the magics) takes a :class:`ProgramView`
and reads it only through these members: it never asks which kind of program it holds,
and never probes for attributes. A live :class:`~ebpf_magic.program.Program`, a
:class:`~ebpf_magic.sessions.replayed.ReplayedProgram`, a cluster program, a bpftrace
program and a tool's run are its implementations.

What every program or stream gives the same way is written once here: :class:`ProgramBase`
(``summary()``, ``save()``, ``browse()``) and :class:`StreamBase` (``to_perfetto()``).
``save()`` and ``to_perfetto()`` reach up the layers only inside the method, as the layering
test allows (to :mod:`ebpf_magic.sessions` and :mod:`ebpf_magic.export`); ``browse()``
returns the browser presentation registered (:func:`map_browser`), as pandas' ``plot()``
finds its plotting backend.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import pandas as pd

T = TypeVar("T")

# What messages call each kind of item: one word for one thing, everywhere.
MAP = "map"
EVENT_STREAM = "event stream"
ITERATOR = "iterator"
PROGRAM = "program"


class Named(Mapping[str, T]):
    """Items by name; an unknown name says the nearest names and all that exist.

    ``what`` names an item in messages: :data:`MAP`, :data:`EVENT_STREAM`, :data:`ITERATOR`
    or :data:`PROGRAM`.
    """

    def __init__(self, items: Mapping[str, T], what: str) -> None:
        self._items = dict(items)
        self._what = what

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.missing(name)) from None

    def missing(self, name: object) -> str:
        """The message for a name that is not here."""
        names = list(self._items)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        return f"no {self._what} named {name!r}{hint}; {self._what}s: {', '.join(names) or 'none'}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _ipython_key_completions_(self) -> list[str]:
        """The names IPython offers after ``prog.maps["`` or ``prog.events["``."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"<{self._what}s {', '.join(self._items) or '(none)'}>"


@runtime_checkable
class MapView(Protocol):
    """One map: what it is, its entries now as a frame, and its history if recorded."""

    name: str
    kind: str  # the kernel's map type, e.g. "hash", "percpu_array", "ringbuf"

    @property
    def declared(self) -> str:
        """How the program declared it (``BPF_HISTOGRAM``, ``SEC(".maps")`` ...), or ""."""

    @property
    def key_type(self) -> str: ...

    @property
    def value_type(self) -> str: ...

    @property
    def max_entries(self) -> int | None: ...

    @property
    def percpu(self) -> bool: ...

    @property
    def key_dtype(self) -> Any:
        """The numpy dtype of a key (None when the map has no keys)."""

    @property
    def value_dtype(self) -> Any:
        """The numpy dtype of one value (one CPU's for per-CPU maps)."""

    @property
    def writable(self) -> bool:
        """True while entries can be changed (a running live program's map)."""

    @property
    def df(self) -> pd.DataFrame:
        """The entries, key columns then value columns."""

    @property
    def value_columns(self) -> list[str]:
        """The columns of :attr:`df` that hold the value (the rest are the key)."""

    def info(self) -> dict[str, Any]:
        """One row of ``maps.df``: map, kind, key, value, entries, max_entries, full."""

    def hist(self, kind: str | None = None, step: int = 1) -> Any:
        """The map as a :class:`~ebpf_magic.data.histograms.Histogram`."""

    def __len__(self) -> int: ...


@runtime_checkable
class EditableMap(MapView, Protocol):
    """A map whose entries a browser may change in place."""

    def row_key(self, row: Mapping[str, Any]) -> Any:
        """The key of a row of :attr:`df`."""

    def set_cell(self, key: Any, column: str, value: Any) -> None:
        """Write one value column of the entry at ``key``."""

    def __delitem__(self, key: Any) -> None: ...


@runtime_checkable
class StreamView(Protocol):
    """One event stream: its rows and what it received and lost."""

    name: str
    kind: str  # the buffer's map type: "perf_event_array" or "ringbuf"

    @property
    def df(self) -> pd.DataFrame:
        """Every event kept, one row each."""

    @property
    def stats(self) -> dict[str, Any]:
        """received, kept, lost_kernel, lost_reader ... (see :class:`~.data.streams.Stats`)."""

    def capture(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """:attr:`df` and :attr:`stats` taken together, so that every event received is in
        the frame or counted as not held (what a recording keeps)."""

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events (all with ``None``). A cluster program's are ordered by a
        column its hosts show in wall-clock time (``stream_options={"time": ...}``); without
        one, hosts' events share no clock: it gives the ``n`` newest of each host."""

    def __len__(self) -> int: ...


@runtime_checkable
class GlobalsView(Protocol):
    """A program's global variables: ``{name: value}``, and :attr:`df` listing them."""

    def __getitem__(self, name: str) -> Any: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    @property
    def df(self) -> pd.DataFrame:
        """One row per variable: name, section, c_type, value."""


@runtime_checkable
class ProgramView(Protocol):
    """A program as its readers see it, wherever it runs or ran."""

    name: str
    backend: str  # "bcc" or "libbpf"
    source: str
    cflags: list[str]  # compiler flags, -D definitions included
    pid: int | None  # the process its probes were limited to, if any
    attached: list[str]  # what was attached, one entry per probe, as the kernel said
    started_at: float | None  # time.time() when it started
    stopped_at: float | None

    @property
    def warnings(self) -> list[Any]:
        """What the compiler or loader warned about, in order; ``str()`` of each is its text
        (a recording keeps them; one written before it kept them has none)."""

    @property
    def notes(self) -> list[Any]:
        """What the backend chose or noticed (a variant loaded, a layout learned), as
        :attr:`warnings`."""

    @property
    def state(self) -> str:
        """One word or phrase for ``%bpf list``: "running", "stopped", "replayed" ..."""

    @property
    def maps(self) -> Mapping[str, MapView]: ...

    @property
    def events(self) -> Mapping[str, StreamView]: ...

    @property
    def globals(self) -> GlobalsView:
        """Its global variables (a libbpf program's ``.rodata``, ``.data``, ``.bss``);
        none for a BCC program. Read like its maps: not once a live program stopped."""

    @property
    def iter(self) -> Mapping[str, Any]:
        """Its BPF iterators by function name; reading one's ``df`` runs it. Only a live
        libbpf program has any (a recording holds no kernel to walk)."""

    @property
    def running(self) -> bool:
        """True while it is attached in a kernel."""

    @property
    def readable(self) -> bool:
        """True while its maps can be read (a stopped live program's cannot)."""

    @property
    def probes(self) -> list[Any]:
        """What it is attached to (:class:`~ebpf_magic.probes.Probe`)."""

    @property
    def functions(self) -> list[str]: ...

    @property
    def unattached(self) -> list[str]:
        """Functions no probe reaches."""

    @property
    def uptime(self) -> float: ...

    @property
    def events_seen(self) -> int: ...

    @property
    def tables(self) -> Mapping[str, pd.DataFrame]:
        """Frames saved with it (empty for a live program)."""

    @property
    def overhead(self) -> pd.DataFrame:
        """What each of its functions costs, as the kernel's run statistics counted it: one
        row per function (``function``, ``probes``, ``runs``, ``run_time_ns``, ``seconds``,
        ``runs_per_s``, ``ns_per_run``, ``cpu_pct``, see :mod:`ebpf_magic.data.overhead`);
        a cluster program's summed over its hosts. Where they were not counted (or a
        recording holds none) the numbers are missing, never zeros, and
        ``attrs["unmeasured"]`` says why and how to enable them."""

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """The frames of maps ``names`` (default all) read together, never while it stops.

        Raises :class:`~ebpf_magic.errors.BPFError` once its maps can no longer be read.
        """

    def summary(self) -> dict[str, Any]:
        """One row of ``%bpf list``: name, probes, maps, events, uptime_s, state
        (:meth:`ProgramBase.summary`)."""

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        """Where it runs or ran, as its recording keeps it: system, kernel, machine, the
        backend's versions, cpus, hostname (None when ``hostname`` is False), and for a
        cluster program one row per engine under ``hosts``."""

    def prog_ids(self) -> list[int]: ...

    def map_ids(self) -> list[int]: ...

    def stop(self) -> None: ...

    def save(self, path: Any, **options: Any) -> Any:
        """Write a recording; returns its path (:meth:`ProgramBase.save`)."""

    def browse(self, interval: float = 1.0, top_n: int = 100) -> Any:
        """A browser widget of its maps (:meth:`ProgramBase.browse`)."""


class ProgramBase:
    """``summary()``, ``save()`` and ``browse()`` written once for every
    :class:`ProgramView`: a program class inherits them and gives the members they read."""

    name: str
    attached: list[str]

    def summary(self: ProgramView) -> dict[str, Any]:
        """One row of ``%bpf list``: its probes, its maps while they can be read, the events
        it received, how long it ran, and its :attr:`~ProgramView.state`."""
        return {"name": self.name, "probes": ", ".join(self.attached) or "-",
                "maps": ", ".join(self.maps) if self.readable else "",
                "events": self.events_seen, "uptime_s": round(self.uptime, 1),
                "state": self.state}

    def save(self: ProgramView, path: Any, **options: Any) -> Any:
        """Write a recording of it (see :func:`ebpf_magic.sessions.save`, which takes the
        ``options``: ``snapshots``, ``hostname``, ``tables``); returns the path written."""
        from ebpf_magic.sessions import save

        return save(self, path, **options)

    def browse(self: ProgramView, interval: float = 1.0, top_n: int = 100) -> Any:
        """A browser widget of its maps, refreshed every ``interval`` seconds while it runs,
        showing the ``top_n`` largest rows: the browser the presentation layer registered
        (:func:`map_browser`: :class:`ebpf_magic.present.widgets.MapBrowser`)."""
        return map_browser()(self, interval=interval, top_n=top_n)


# What ProgramBase.browse() returns, found as pandas finds its plotting backend: the browser
# the presentation layer registered, or the module named here imported on first use (it
# registers itself). The objects never import presentation, which sits above them.
MAP_BROWSER_MODULE = "ebpf_magic.present.widgets"
_map_browser: Callable[..., Any] | None = None


def map_browser() -> Callable[..., Any]:
    """The registered map browser (:func:`present_maps_with`), importing
    :data:`MAP_BROWSER_MODULE` for it the first time."""
    if _map_browser is None:
        importlib.import_module(MAP_BROWSER_MODULE)
    if _map_browser is None:
        raise TypeError(f"{MAP_BROWSER_MODULE} registered no map browser "
                        "(ebpf_magic.api.present_maps_with)")
    return _map_browser


def present_maps_with(browser: Callable[..., Any]) -> None:
    """Make ``browser(program, interval=..., top_n=...)`` what every program's ``browse()``
    returns (:mod:`ebpf_magic.present.widgets` registers its map browser on import)."""
    global _map_browser
    _map_browser = browser


class StreamBase:
    """What every :class:`StreamView` exports the same way: :meth:`to_perfetto`."""

    def to_perfetto(self: StreamView, path: Any, **options: Any) -> Any:
        """Write its events as a Perfetto trace at ``path``; ``options`` as
        :func:`ebpf_magic.export.to_perfetto` takes them (time, track, duration, phase...).
        Returns the path written."""
        from ebpf_magic.export import to_perfetto

        return to_perfetto(self, path, **options)
