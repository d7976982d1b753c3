"""One program on many hosts, read as one: :class:`ClusterProgram` and its merged maps and streams.

Each engine compiles and attaches the source itself (its own kernel, headers, BTF and
backend) and keeps its program by name (:mod:`ebpf_magic.cluster.engine`). The client
keeps, per engine, what it attached or the error it gave. Frames are gathered from every
running engine at once and joined with ``host`` and ``engine`` columns first. An engine
that died or stopped answering loses its own rows only: the frame says so in a
:class:`~ebpf_magic.cluster.connect.ClusterWarning`, and :attr:`ClusterProgram.missing`
says which hosts and why.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from ebpf_magic.api import EVENT_STREAM, ITERATOR, MAP, Named, ProgramBase, StreamBase
from ebpf_magic.cluster import engine
from ebpf_magic.cluster.connect import (
    ClusterError,
    ClusterWarning,
    Engines,
    Failure,
    current,
)
from ebpf_magic.data import histograms, overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.data.streams import Stats
from ebpf_magic.errors import BPFError
from ebpf_magic.probes import Probe
from ebpf_magic.program import register, unregister
from ebpf_magic.sessions import format as fmt

FIRST_COLUMNS = ("host", "engine")


class Missing(NamedTuple):
    """A host whose rows a cluster program lacks, and why.

    ``gone`` when it will not come back: it failed to start, or its engine died or left.
    Otherwise (no answer in time, an error reading) the next read asks it again.
    """

    host: str
    reason: str
    gone: bool = True


class ClusterProgram(ProgramBase):
    """``source`` started on the engines ``targets`` names, each attaching it locally.

    Args:
        source: the BPF C text (either backend's dialect).
        name: the program's name on every engine (a second start of it replaces the first).
        engines: the cluster (default: the last :func:`~ebpf_magic.cluster.connect` or the
            default profile's).
        targets: ``"all"``, engine ids, or host names (see :meth:`Engines.select`).
        timeout: seconds each engine has to answer (default: the engines').
        options: passed to :class:`~ebpf_magic.program.Program` on each engine
            (``attach``, ``cflags``, ``defines``, ``pid``, ``stream_options``,
            ``backend``, ``globals``, ``line_offset``); with ``frontend="bpftrace"``,
            ``source`` is a bpftrace program and they go to
            :class:`~ebpf_magic.bpftrace.BpftraceProgram` (``pid``, ``command``, ``params``...).

    Hosts that fail to start are in :attr:`missing` with their error; the others run.
    When no host starts, :class:`~ebpf_magic.cluster.connect.ClusterError` lists each one's error.
    ``save()`` writes one recording of every host's maps and events and each host's facts
    (:meth:`host_facts`); :func:`ebpf_magic.load` replays it with the same merged frames,
    with no cluster, BPF rights or backend.
    """

    def __init__(self, source: str, *, name: str = "bpf", engines: Engines | None = None,
                 targets: str | Sequence[int | str] | None = None,
                 timeout: float | None = None, **options: Any) -> None:
        self.name = name
        #: the program's name on the engines: ``NAME#TOKEN``, so that programs of one name
        #: from two notebooks sharing a cluster do not replace each other
        self.key = f"{name}#{secrets.token_hex(4)}"
        self.source = source
        self.cflags = list(options.get("cflags", ()))
        self.pid: int | None = options.get("pid")
        #: columns every host shows as wall-clock datetimes (``stream_options["time"]``)
        self.time_columns = list((options.get("stream_options") or {}).get("time") or ())
        self.engines = engines if engines is not None else current()
        self.timeout = self.engines.timeout if timeout is None else timeout
        self.ids = self.engines.select(targets)
        self.missing: dict[int, Missing] = {}
        self.started_at = time.time()
        self.stopped_at: float | None = None
        self._stopping = False  # set as stop() begins: reads that overlap it end in its error
        try:
            answers, failures = self.engines.call(self.ids, engine.start, self.key, source,
                                                  options, timeout=self.timeout)
        except BaseException:
            # Ctrl-C while engines start: each runs its stop after its start, in order
            self.engines.send(self.ids, engine.stop, self.key)
            raise
        # an engine that did not answer in time may still start it: its stop runs after
        self.engines.send([i for i, why in failures.items() if not why.gone], engine.stop,
                          self.key)
        self.hosts = {i: a["facts"]["host"] for i, a in answers.items()}
        self.facts = {i: a["facts"] for i, a in answers.items()}
        self.hosts.update({i: self.engines.host(i) for i in failures})
        self._started = {i: a for i, a in answers.items() if a["ok"]}
        for i, a in answers.items():
            if not a["ok"]:
                hint = f" ({a['hint']})" if a["hint"] else ""
                self.missing[i] = Missing(self.hosts[i], f"{a['error']}: {a['message']}{hint}")
        for i, why in failures.items():
            self.missing[i] = Missing(self.hosts[i], why.reason)
        if not self._started:
            self.stop()
            raise ClusterError(f"{name} started on no host:\n" + self._missing_lines(),
                               "Fix the error (the same on every host?) and run the cell again.")
        register(self)
        first = self._started[min(self._started)]
        self.backend: str = first["backend"]
        self._first = first
        self._maps = Named({n: ClusterMap(self, n, meta) for n, meta in first["maps"].items()},
                           MAP)
        self._events = Named({n: ClusterStream(self, n, kind)
                              for n, kind in first["events"].items()}, EVENT_STREAM)

    # -- what it is --------------------------------------------------------------

    @property
    def maps(self) -> Named[ClusterMap]:
        """Each map, read from every running host into one frame."""
        return self._maps

    @property
    def events(self) -> Named[ClusterStream]:
        """Each event stream, gathered from every running host into one frame."""
        return self._events

    @property
    def attached_on(self) -> dict[int, list[str]]:
        """``{engine id: probes attached there}`` for the engines that started."""
        return {i: list(a["attached"]) for i, a in self._started.items()}

    @property
    def attached(self) -> list[str]:
        """Every probe attached on some host, each once."""
        return list(dict.fromkeys(p for a in self._started.values() for p in a["attached"]))

    @property
    def warnings(self) -> list[str]:
        return list(self._first["warnings"])

    @property
    def notes(self) -> list[str]:
        return list(self._first["notes"])

    @property
    def running_on(self) -> list[int]:
        """Engines where the program runs (as far as the last call to them told)."""
        if self.stopped_at is not None:
            return []
        return [i for i in self._started if i not in self.missing or not self.missing[i].gone]

    @property
    def running(self) -> bool:
        return bool(self.running_on)

    @property
    def readable(self) -> bool:
        return self.running

    @property
    def probes(self) -> list[Probe]:
        return [Probe(*p) for p in self._first["probes"]]

    @property
    def functions(self) -> list[str]:
        return list(self._first["functions"])

    @property
    def unattached(self) -> list[str]:
        return list(self._first["unattached"])

    @property
    def uptime(self) -> float:
        return (self.stopped_at or time.time()) - self.started_at

    @property
    def events_seen(self) -> int:
        """Events read on every host that answers."""
        if not self.running:
            return 0
        return sum(s["events_seen"] for s in self._gather(engine.status, self.key).values())

    @property
    def tables(self) -> Mapping[str, pd.DataFrame]:
        """Frames saved with the program: none for a running one."""
        return {}

    @property
    def overhead(self) -> overhead.Overhead:
        """What each function costs, summed over the hosts that measure it (``hosts`` says
        how many; see :func:`ebpf_magic.data.overhead.sum_hosts`). Hosts whose kernel does
        not count are left out with a :class:`ClusterWarning`; where none does, the frame
        has no rows and ``.unmeasured`` gives the first host's reason."""
        if not self.running:
            return overhead.unmeasured([], f"{self.name} was stopped on every host")
        answers = self._gather(engine.overhead, self.key)
        measured = {i: engine.decode(a["table"]).to_pandas() for i, a in answers.items()
                    if "table" in a}
        unmeasured = {i: a["unmeasured"] for i, a in answers.items() if "table" not in a}
        if not measured:
            first = min(unmeasured, default=None)
            return overhead.unmeasured([], f"{self.name}: no host measures its overhead" + (
                f"; {self.hosts[first]}: {unmeasured[first]}" if first is not None else ""))
        if unmeasured:
            warnings.warn(ClusterWarning(
                f"{self.name}: overhead summed without {len(unmeasured)} host(s) that do not "
                "measure it: " + "; ".join(f"{self.hosts[i]}: {why}"
                                           for i, why in unmeasured.items())), stacklevel=2)
        return overhead.sum_hosts(measured)

    @property
    def globals(self) -> SavedGlobals:
        """Empty: the engines' global variables are not gathered (nor saved in its recording).

        Each host's copy has its own; read them there, from ``%%px``:
        ``ebpf_magic.cluster.engine.program(NAME).globals``.
        """
        return SavedGlobals((), self.name)

    @property
    def iter(self) -> Named[Any]:
        """Empty: iterators are run on each host, from ``%%px``:
        ``ebpf_magic.cluster.engine.program(NAME).iter[FUNCTION].df``."""
        return Named({}, ITERATOR)

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """The merged frames of maps ``names`` (default all), one call to each host."""
        names = list(self._maps if names is None else names)
        for name in names:
            self._maps[name]  # an unknown name is a KeyError naming the nearest
        parts = self._gather(engine.map_tables, self.key, names)
        return {n: self._frame({i: engine.decode(p[n]) for i, p in parts.items()})
                for n in names}

    def prog_ids(self, engine: int | None = None) -> list[int]:
        """Ids of the loaded functions, each in its own host's kernel (or ``engine``'s)."""
        ids = self.running_on if engine is None else [engine]
        return [p for i in ids if i in self._started for p in self._started[i]["prog_ids"]]

    def map_ids(self) -> list[int]:
        return [m for i in self.running_on for m in self._started[i]["map_ids"]]

    def host_table(self) -> pd.DataFrame:
        """One row per targeted engine: host, state, attached probes or why it is missing."""
        rows = []
        for i in self.ids:
            miss = self.missing.get(i)
            state = ("stopped" if self.stopped_at is not None else
                     "missing" if miss is not None else "running")
            attached = ", ".join(self._started[i]["attached"]) if i in self._started else ""
            rows.append({"host": self.hosts.get(i, f"engine {i}"), "engine": i,
                         "state": state, "attached": attached,
                         "reason": miss.reason if miss else ""})
        return pd.DataFrame(rows, columns=["host", "engine", "state", "attached", "reason"])

    @property
    def state(self) -> str:
        """``running on HOST, ...`` (or ``stopped``), then ``; missing HOST (engine N):
        REASON`` for each host that is not running it."""
        running = ", ".join(self.hosts[i] for i in self.running_on)
        state = f"running on {running}" if running else "stopped"
        if self.missing:
            state += "; missing " + "; ".join(f"{m.host} (engine {i}): {m.reason}"
                                             for i, m in self.missing.items())
        return state

    def report(self) -> str:
        """What each host did with the cell: its probes, or its error."""
        lines = []
        for i in self.ids:
            host = f"{self.hosts.get(i, f'engine {i}')} (engine {i})"
            if i in self._started:
                lines.append(f"{self.name} on {host}: attached "
                             f"{', '.join(self._started[i]['attached']) or 'no probes'}")
            elif i in self.missing:
                lines.append(f"{self.name} on {host}: FAILED, {self.missing[i].reason}")
        parts = []
        if self._maps:
            parts.append(f"maps: {', '.join(self._maps)}")
        if self._events:
            parts.append(f"events: {', '.join(self._events)}")
        parts.append(f"backend: {self.backend}")
        return "\n".join([*lines, "; ".join(parts)])

    # -- gathering ---------------------------------------------------------------

    def _missing_lines(self) -> str:
        return "\n".join(f"  {m.host} (engine {i}): {m.reason}" for i, m in self.missing.items())

    def _stopped_error(self) -> BPFError:
        return BPFError(f"{self.name} was stopped on every host; its maps and streams are "
                        "gone", "Run the cell again, or save() before stop().")

    def _gather(self, func: Callable[..., Any], *args: Any) -> dict[int, Any]:
        """``func(*args)`` from every running engine; the others are warned about.

        A read that :meth:`stop` overtook (e.g. a recorder's) is the stopped error.
        """
        if self._stopping:
            raise self._stopped_error()
        answers, failures = self.engines.call(self.running_on, func, *args,
                                              timeout=self.timeout)
        if self._stopping:  # stop() began meanwhile: the engines may have said "no program"
            raise self._stopped_error()
        for i in answers:
            self.missing.pop(i, None)
        for i, why in failures.items():
            self.missing[i] = Missing(self.hosts[i], why.reason, why.gone)
        if self.missing:
            warnings.warn(ClusterWarning(
                f"{self.name}: no rows from {len(self.missing)} host(s):\n"
                f"{self._missing_lines()}"), stacklevel=3)
        return answers

    def _frame(self, parts: Mapping[int, pa.Table]) -> pd.DataFrame:
        """Per-engine tables joined, ``host`` (categorical) and ``engine`` first, by engine.

        Joined as Arrow tables and converted once, so each value is copied once.
        """
        order = sorted(parts)
        if not order:
            return pd.DataFrame({"host": pd.Categorical([]), "engine": np.zeros(0, np.int64)})
        tables = [parts[i] for i in order]
        sizes = [t.num_rows for t in tables]
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        hosts = list(dict.fromkeys(self.hosts[i] for i in order))
        codes = np.repeat(np.array([hosts.index(self.hosts[i]) for i in order], np.int32), sizes)
        table = table.add_column(0, "engine", pa.array(np.repeat(np.array(order, np.int64),
                                                                 sizes)))
        table = table.add_column(0, "host", pa.DictionaryArray.from_arrays(codes, hosts))
        return table.to_pandas(split_blocks=True, self_destruct=True)

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop the program on every engine that can still answer; idempotent.

        Engines that died already released everything with their process; the others
        are stopped even when some do not answer (they are then in :attr:`missing`).
        """
        if self._stopping:
            return
        self._stopping = True
        try:
            _, failures = self.engines.call(self.ids, engine.stop, self.key,
                                            timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - a closed client: the engines are out of reach
            failures = {i: Failure(f"cannot reach the cluster to stop it: {e}") for i in self.ids}
        for i, why in failures.items():
            self.missing[i] = Missing(self.hosts.get(i, f"engine {i}"), why.reason, why.gone)
        self.stopped_at = time.time()
        unregister(self)

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        """Where it ran: the hosts' kernels, machines and names joined, the CPUs of those that
        ran, and under ``"hosts"`` one row per targeted engine (``hostname`` False leaves
        every name out).

        A row is ``engine``, ``host``, ``kernel``, ``machine``, ``cpus`` (None for an engine
        that never answered), ``state`` (``ran`` or ``missing``) and ``reason``.
        """
        hosts = []
        for i in self.ids:
            facts = self.facts.get(i, {})
            miss = self.missing.get(i)
            hosts.append({"engine": i, "host": self.hosts.get(i, f"engine {i}") if hostname
                          else None, "kernel": facts.get("kernel"),
                          "machine": facts.get("machine"), "cpus": facts.get("cpus"),
                          "state": "missing" if miss else "ran",
                          "reason": miss.reason[:fmt.MAX_HOST_REASON] if miss else ""})
        ran = [h for h in hosts if h["state"] == "ran"]
        return {"system": "Linux",
                "kernel": ", ".join(dict.fromkeys(h["kernel"] for h in hosts if h["kernel"])),
                "machine": ", ".join(dict.fromkeys(h["machine"] for h in hosts
                                                   if h["machine"])),
                "cpus": sum(h["cpus"] or 0 for h in ran),
                "hostname": ", ".join(dict.fromkeys(h["host"] for h in ran))
                if hostname else None,
                "hosts": hosts}

    def __enter__(self) -> ClusterProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        hosts = ", ".join(self.hosts[i] for i in self.running_on) or "-"
        state = "running" if self.running else "stopped"
        return f"<ClusterProgram {self.name} ({state}) on {hosts}; missing: {len(self.missing)}>"

    def _repr_html_(self) -> str:
        return self.host_table().to_html(index=False)


class ClusterMap:
    """One map of a cluster program: every host's entries in one frame."""

    writable = False  # entries are changed on a host's own Program, not through the merge

    def __init__(self, program: ClusterProgram, name: str, meta: dict[str, Any]) -> None:
        self.program = program
        self.name = name
        self.kind: str = meta["kind"]
        self._meta = meta

    @property
    def declared(self) -> str:
        return self._meta["declared"]

    @property
    def key_type(self) -> str:
        return self._meta["key_type"]

    @property
    def value_type(self) -> str:
        return self._meta["value_type"]

    @property
    def max_entries(self) -> int | None:
        return self._meta["max_entries"]

    @property
    def percpu(self) -> bool:
        return self._meta["percpu"]

    @property
    def key_dtype(self) -> np.dtype | None:
        return self._meta["key_dtype"]

    @property
    def value_dtype(self) -> np.dtype:
        return self._meta["value_dtype"]

    @property
    def value_columns(self) -> list[str]:
        return list(self._meta["value_columns"])

    @property
    def df(self) -> pd.DataFrame:
        """Every running host's entries now, ``host`` and ``engine`` columns first."""
        parts = self.program._gather(engine.map_table, self.program.key, self.name)
        return self.program._frame({i: engine.decode(b) for i, b in parts.items()})

    def hist(self, kind: str | None = None, step: int = 1,
             per_host: bool = False) -> histograms.Histogram:
        """The hosts' histograms summed bucket by bucket, or one per host (``per_host``)."""
        parts = self.program._gather(engine.map_hist, self.program.key, self.name, kind, step)
        if not parts:
            return histograms.Histogram(histograms.bucket_frame(np.zeros(0), np.zeros(0)),
                                        kind=kind or "log2", name=self.name)
        kind = kind or parts[min(parts)][1]
        df = self.program._frame({i: engine.decode(b) for i, (b, _) in parts.items()})
        if per_host:
            return histograms.Histogram(df.drop(columns="engine"), kind=kind, name=self.name)
        sections = [c for c in df.columns
                    if c not in (*FIRST_COLUMNS, *histograms.BUCKET_COLUMNS)]
        merged = histograms.bucket_frame(df["slot"].to_numpy(), df["count"].to_numpy(), kind,
                                         step, df[sections] if sections else None)
        return histograms.Histogram(merged, kind=kind, name=self.name)

    def info(self) -> dict[str, Any]:
        """One row of ``maps.df``: entries summed over hosts; full if full on any host."""
        infos = self._infos()
        entries = [r["entries"] for r in infos.values() if r.get("entries") is not None]
        return {"map": self.name, "kind": self.declared or self.kind, "key": self.key_type,
                "value": self.value_type, "entries": sum(entries) if entries else None,
                "max_entries": self.max_entries,
                "full": any(r.get("full") for r in infos.values())}

    def _infos(self) -> dict[int, dict[str, Any]]:
        status = self.program._gather(engine.status, self.program.key)
        return {i: s["maps"].get(self.name, {}) for i, s in status.items()}

    def __len__(self) -> int:
        return int(self.info()["entries"] or 0)

    def __repr__(self) -> str:
        return (f"<ClusterMap {self.name}: {self.declared or self.kind} {self.key_type} -> "
                f"{self.value_type} on {len(self.program.running_on)} host(s)>")


class ClusterStream(StreamBase):
    """One event stream of a cluster program: every host's events in one frame."""

    def __init__(self, program: ClusterProgram, name: str, kind: str) -> None:
        self.program = program
        self.name = name
        self.kind = kind

    @property
    def df(self) -> pd.DataFrame:
        """Every event each running host holds, ``host`` and ``engine`` columns first."""
        return self.tail(None)

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events of the merged frame (all with ``None``, host after host).

        Newest by the first of :attr:`ClusterProgram.time_columns` the events have, which
        each host shows in wall-clock time: the rows are then in its order. Without one,
        hosts' events share no clock to order them by: the ``n`` newest of each host.
        """
        order = self.program.time_columns
        parts = self.program._gather(engine.stream_table, self.program.key, self.name, n, order)
        df = self.program._frame({i: engine.decode(b) for i, b in parts.items()})
        column = next((c for c in order if c in df.columns), None)
        if n is None or column is None:
            return df
        return df.sort_values(column, kind="stable").tail(n).reset_index(drop=True)

    @property
    def stats_by_host(self) -> pd.DataFrame:
        """Each host's counters (see :attr:`stats`), one row per engine."""
        status = self.program._gather(engine.status, self.program.key)
        return self.program._frame({i: pa.Table.from_pylist([s["streams"][self.name]])
                                    for i, s in status.items()})

    @property
    def stats(self) -> Stats:
        """The counters summed over the hosts that answered (see :attr:`stats_by_host`);
        ``failed`` is 1 if the stream failed on any of them."""
        by_host = self.stats_by_host.drop(columns=list(FIRST_COLUMNS))
        return Stats({c: int(by_host[c].max() if c == "failed" else by_host[c].sum())
                      for c in by_host.columns})

    def capture(self) -> tuple[pd.DataFrame, Stats]:
        """Every host's events, then the counters summed; ``held`` is the rows gathered
        (events that reached a host between the two asks are in ``received`` only)."""
        df = self.df
        stats = self.stats
        stats["held"] = len(df)
        return df, stats

    def __len__(self) -> int:
        return int(self.stats.get("held", 0))

    def __repr__(self) -> str:
        hosts = len(self.program.running_on)
        return f"<ClusterStream {self.name} ({self.kind}) on {hosts} host(s)>"


def run(source: str, *, name: str = "bpf", profile: str | None = None,
        targets: str | Sequence[int | str] | None = None, **options: Any) -> ClusterProgram:
    """Start ``source`` on the cluster of ``profile`` (default: the connected one)."""
    return ClusterProgram(source, name=name, engines=current(profile), targets=targets,
                          **options)
