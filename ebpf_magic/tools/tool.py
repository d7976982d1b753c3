"""What a tool is: a declaration, and the running (or replayed) program it starts.

A :class:`Tool` declares an investigation on the public API: libbpf-style C (one source,
or :class:`Variant` sources picked by the probes this kernel has), its :class:`Option`
list (how each reaches the program: a ``const volatile`` global it sets, or a probe it
changes), the tables it reads from the program's maps and streams (units in column names),
and its default plot. ``tool.start(**options)`` (or calling the tool) compiles it with
the libbpf backend (kernel structs read with CO-RE) and returns a :class:`ToolRun`: a
:class:`~ebpf_magic.api.ProgramView` (``.maps``, ``.events``, ``stop()``, ``save()``,
``browse()``) with the tool's ``.df`` and ``.plot()`` on top, live or replayed.

Tables are computed from a :class:`Reading`: the program's map frames and event frames
(or, for ``interval`` runs, what each interval added), so a live run, a stopped one and a
recording give the same table. A stopped live run keeps the tables it had when stopped; a
saved one keeps them in its recording (``tool:NAME`` tables), where the frames computed
on the live machine (symbolized stacks, this kernel's syscall names) are kept as they were.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pandas as pd

from ebpf_magic import discover
from ebpf_magic.api import ProgramBase, ProgramView
from ebpf_magic.errors import (
    AttachError,
    BPFError,
    NotPrivilegedError,
    OptionError,
    VerifierError,
)
from ebpf_magic.program import Program

_PER_CPU = re.compile(r"^(.*)\[cpu\d+\]$")  # a per-CPU map's column of one CPU's values
META_TABLE = "tool"  # the recording table saying which tool, with which options
TABLE_PREFIX = "tool:"  # the recording tables holding the tool's own tables
PID_MAX = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit machines
TASK_COMM_LEN = 16


# -- option types -------------------------------------------------------------------------


def pid(value: Any) -> int:
    """A process or thread id, 1 to the kernel's PID_MAX_LIMIT."""
    number = _whole(value)
    if not 1 <= number <= PID_MAX:
        raise ValueError(f"wants a process id from 1 to {PID_MAX:,}, got {value!r}")
    return number


def count(value: Any) -> int:
    """A whole number, at least 1."""
    number = _whole(value)
    if number < 1:
        raise ValueError(f"wants a whole number of at least 1, got {value!r}")
    return number


def natural(value: Any) -> int:
    """A whole number, at least 0."""
    number = _whole(value)
    if number < 0:
        raise ValueError(f"wants a whole number of at least 0, got {value!r}")
    return number


def seconds(value: Any) -> float:
    """A positive number of seconds, at most a day."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and 0 < number <= 86_400):
        raise ValueError(f"wants a number of seconds above 0 and at most 86400, got {value!r}")
    return number


def comm(value: Any) -> str:
    """A command name as the kernel keeps it (``task->comm``): at most 15 bytes."""
    text = str(value)
    if not text or len(text.encode()) >= TASK_COMM_LEN or "\0" in text:
        raise ValueError(f"wants a command name of 1 to {TASK_COMM_LEN - 1} bytes (the "
                         f"kernel keeps no more), got {value!r}")
    return text


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"wants a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        raise ValueError(f"wants a whole number, got {value!r}") from None


def flag(value: Any) -> bool:
    """A yes/no option (on the ``%bpf tool`` line: present or not)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"wants True or False, got {value!r}")


# -- the declaration ----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a tool, as a keyword argument and as ``%bpf tool`` flags.

    ``name`` is the keyword (``pid``), ``flags`` the command-line spellings (``-p``,
    ``--pid``). ``type`` checks and converts a value (a string from the command line, or
    a Python value), raising ValueError with what it wants; :func:`flag` makes a
    yes/no option. ``sets`` names the C global (``const volatile``) the value is written
    to before load, through ``to_c`` when the C wants another form (a boolean as 1, a
    command name as ``char[16]``). An option that sets no global is read by the tool's
    Python side (its attach specs, its tables). ``default`` None means "not given".
    """

    name: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[Any], Any] = int
    default: Any = None
    sets: str | None = None
    to_c: Callable[[Any], Any] | None = None
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_flag(self) -> bool:
        return self.type is flag

    def check(self, value: Any) -> Any:
        """``value`` converted by :attr:`type`; OptionError naming the option if it is bad."""
        if value is None:
            return bool(self.default) if self.is_flag else self.default
        try:
            out = self.type(value)
        except (TypeError, ValueError) as e:
            raise OptionError(f"{self.name}: {e}",
                              f"{'/'.join(self.flags)}: {self.help}") from None
        if self.choices is not None and out not in self.choices:
            raise OptionError(f"{self.name}: {value!r} is not one of "
                              f"{', '.join(map(str, self.choices))}",
                              f"{'/'.join(self.flags)}: {self.help}")
        return out

    def c_value(self, value: Any) -> Any:
        """What the C global receives for ``value``."""
        if self.to_c is not None:
            return self.to_c(value)
        return int(value) if isinstance(value, bool) else value


@dataclass(frozen=True)
class Variant:
    """One way to build a tool: its C source and the probes this kernel must offer for it.

    ``needs`` are probe specs in the ``-a`` syntax (``tracepoint:block:block_rq_issue``,
    ``rawtracepoint:block_rq_issue`` for ``tp_btf``/``raw_tp``, ``kprobe:FUNC``,
    ``kfunc:FUNC``); by default the probes its ``SEC()`` names attach to. A tool's
    variants are tried in order: the first whose needs this kernel meets is used.
    """

    name: str
    source: str | Callable[[Mapping[str, Any]], str]
    needs: tuple[str, ...] = ()
    about: str = ""

    def text(self, options: Mapping[str, Any]) -> str:
        """The C source for ``options`` (a source may depend on them: a map's size)."""
        return self.source if isinstance(self.source, str) else self.source(options)

    def probes(self, options: Mapping[str, Any] | None = None) -> list[str]:
        """The probe specs this variant needs (its SEC() names with ``options``, or the
        defaults')."""
        return list(self.needs) or section_probes(self.text(options or {}))


Table = Callable[["Reading"], pd.DataFrame]
Plot = Callable[["ToolRun", Any], Any]


@dataclass(frozen=True)
class Tool:
    """A ready-made investigation (see the module doc).

    Args:
        name: the tool's name (``runqlat``), also the default name of its runs.
        answers: the question it answers, one line (``%bpf tool list`` shows it).
        source: its C (libbpf style, CO-RE), a function of the options giving it, or
            :class:`Variant` s tried in order.
        options: its :class:`Option` list.
        table: the main table, from a :class:`Reading` (``.df``); units in column names.
        plot: the default picture, ``plot(run, ax)``; returns the matplotlib Axes.
        tables: further named tables, ``run.table(NAME)``.
        attach: extra probe specs from the options (``profile:hz:{frequency}``), for
            programs whose SEC() names say no target (``perf_event``).
        prepare: more globals from the options, computed in Python before load
            (a cgroup's id from its path).
        time: ``{column: clock}`` of event fields holding ``bpf_ktime_get_ns()``, shown as
            wall-clock datetimes.
        interval: True when the tool's maps can be read per interval (``interval=SECONDS``:
            one table row group per interval, from what each interval added).
        needs: probe specs the tool needs besides its SEC() names (``profile:hz:99``).
    """

    name: str
    answers: str
    source: str | Callable[[Mapping[str, Any]], str] | Sequence[Variant]
    table: Table
    plot: Plot
    options: Sequence[Option] = ()
    tables: Mapping[str, Table] = field(default_factory=dict)
    attach: Callable[[Mapping[str, Any]], list[str]] | None = None
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    time: Mapping[str, str] = field(default_factory=dict)
    interval: bool = False
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_]\w*", self.name):
            raise BPFError(f"a tool's name must be a Python identifier, not {self.name!r}")
        names = [o.name for o in self.all_options]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BPFError(f"tool {self.name}: options named twice: {', '.join(dup)}")
        if "main" in self.tables:
            raise BPFError(f"tool {self.name}: 'main' names the main table; call it otherwise")

    # -- description ---------------------------------------------------------------------

    @property
    def variants(self) -> list[Variant]:
        if isinstance(self.source, str) or callable(self.source):
            return [Variant("default", self.source)]
        return list(self.source)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option's default value."""
        return self.check_options({})

    @property
    def all_options(self) -> list[Option]:
        """The declared options, and ``interval`` for tools read per interval."""
        extra = [INTERVAL] if self.interval else []
        return list(self.options) + extra

    def option(self, name: str) -> Option:
        for opt in self.all_options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def probes(self) -> list[str]:
        """Every probe spec any variant needs, and the tool's own extra ones."""
        defaults = self.defaults
        return list(dict.fromkeys([p for v in self.variants for p in v.probes(defaults)]
                                  + list(self.needs)))

    def variant(self) -> Variant:
        """The first variant this kernel has the probes for; BPFError naming what is
        missing if none."""
        return self.candidates()[0]

    def candidates(self) -> list[Variant]:
        """The variants this kernel has the probes for, in order; BPFError if none."""
        missing: list[str] = []
        found = []
        defaults = self.defaults
        for v in self.variants:
            lacking = [p for p in v.probes(defaults) if not probe_available(p)]
            if not lacking:
                found.append(v)
            else:
                missing.append(f"{v.name}: {', '.join(lacking)}")
        if not found:
            raise BPFError(f"tool {self.name} cannot run on this kernel: it lacks "
                           + "; ".join(missing),
                           "`%bpf tool list` (or ebpf_magic.tools.listing()) shows which tools "
                           "run here.")
        return found

    def summary(self) -> dict[str, Any]:
        """One row of ``%bpf tool list``: tool, answers, probes, available here."""
        probes = self.probes()
        try:
            chosen = self.variant()
            available, note = True, chosen.name if len(self.variants) > 1 else ""
        except BPFError as e:
            available, note = False, e.message
        return {"tool": self.name, "answers": self.answers, "probes": ", ".join(probes),
                "available": available, "variant": note}

    def signature(self) -> inspect.Signature:
        """``(*, name=None, OPTION=default, ...)``: the keyword arguments of :meth:`start`."""
        params = [inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation="str | None")]
        params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY,
                                     default=False if o.is_flag else o.default)
                   for o in self.all_options]
        return inspect.Signature(params, return_annotation="ToolRun")

    def help(self) -> str:
        """The tool's question, options, table and probes, as ``%bpf tool NAME --help``
        prints them."""
        table = inspect.cleandoc(self.table.__doc__ or "")
        return (f"{self.parser().format_help()}\ntable: {table}\n\n"
                f"probes: {', '.join(self.probes())}")

    # -- options -------------------------------------------------------------------------

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option's value, checked and converted (defaults for those not given)."""
        known = {o.name: o for o in self.all_options}
        unknown = [k for k in options if k not in known]
        if unknown:
            raise OptionError(f"tool {self.name} has no option {', '.join(map(repr, unknown))}",
                              f"Its options: {', '.join(known) or 'none'}.")
        return {name: opt.check(options.get(name)) for name, opt in known.items()}

    def c_globals(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The C globals the options set, then what :attr:`prepare` adds."""
        out = {o.sets: o.c_value(options[o.name]) for o in self.all_options
               if o.sets and options.get(o.name) is not None
               and options.get(o.name) is not False}
        if self.prepare is not None:
            out.update(self.prepare(options))
        return out

    def parser(self) -> argparse.ArgumentParser:
        """The ``%bpf tool NAME`` options, built from the declarations."""
        p = _ToolParser(prog=f"%bpf tool {self.name}", add_help=False,
                        description=self.answers, allow_abbrev=False)
        p.add_argument("--name", metavar="VAR",
                       help=f"the notebook variable to bind (default: {self.name})")
        for o in self.all_options:
            if o.is_flag:
                p.add_argument(*o.flags, dest=o.name, action="store_true", help=o.help)
            else:
                p.add_argument(*o.flags, dest=o.name, metavar=o.metavar, help=o.help,
                               type=_argtype(o))
        return p

    # -- running -------------------------------------------------------------------------

    def start(self, name: str | None = None, *, stream_options: Mapping[str, Any] | None = None,
              **options: Any) -> ToolRun:
        """Compile, load and attach the tool with ``options``; the running :class:`ToolRun`.

        Nothing is left attached if it fails. ``stream_options`` go to the program's event
        streams (``max_rows`` ...).
        """
        values = self.check_options(options)
        attach = self.attach(values) if self.attach is not None else []
        c_globals = self.c_globals(values)
        candidates = self.candidates()
        for i, variant in enumerate(candidates):
            text = variant.text(values)
            streams = {"time": dict(self.time), **dict(stream_options or {})}
            if text in _LAYOUTS:
                streams["dtypes"] = {**_LAYOUTS[text], **streams.get("dtypes", {})}
            try:
                prog = Program(text, name=name or self.name, attach=attach,
                               backend="libbpf", globals=c_globals, stream_options=streams)
                _LAYOUTS[text] = {n: s.dtype for n, s in prog.events.items()
                                  if s.dtype is not None}
                break
            except NotPrivilegedError:
                raise
            except (VerifierError, AttachError):
                # the kernel has the probes but refuses this way of using them (fexit
                # without trampolines): the next variant may do
                if i == len(candidates) - 1:
                    raise
        run = ToolRun(self, prog, values, variant.name)
        if values.get("interval"):
            from ebpf_magic.sessions import record_snapshots

            record_snapshots(prog, every=values["interval"])
        return run

    def __call__(self, name: str | None = None, **options: Any) -> ToolRun:
        return self.start(name, **options)

    def function(self) -> Callable[..., ToolRun]:
        """``start`` as a plain function with one keyword argument per option, documented."""
        def start(**options: Any) -> ToolRun:
            return self.start(**options)

        start.__name__ = start.__qualname__ = self.name
        start.__module__ = "ebpf_magic.tools"
        start.__signature__ = self.signature()  # type: ignore[attr-defined]
        start.__doc__ = (f"Start {self.name}; returns the running ToolRun (its .df, .plot(), "
                         f".stop()).\n\n{self.help()}")
        return start


# the event records' layouts of each source started in this process: learning one from the
# compiled object's DWARF takes seconds for a program that reads big kernel structs
_LAYOUTS: dict[str, dict[str, Any]] = {}

INTERVAL = Option("interval", ("-i", "--interval"), "read the maps every SECONDS and give a "
                  "table per interval (what each interval added)", type=seconds,
                  metavar="SECONDS")


class _ToolParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise OptionError(f"{self.prog}: {message}", self.format_usage().strip())


def _argtype(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.type(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = option.name  # argparse names the type in its messages
    return convert


# -- probes a kernel has ------------------------------------------------------------------

_SECTION = re.compile(r"\bSEC\s*\(\s*\"([^\"]+)\"\s*\)")
_KINDS = {"tracepoint": "tracepoint", "tp": "tracepoint", "raw_tp": "rawtracepoint",
          "raw_tracepoint": "rawtracepoint", "tp_btf": "rawtracepoint", "kprobe": "kprobe",
          "kretprobe": "kprobe", "fentry": "kfunc", "fexit": "kfunc"}


def section_probes(source: str) -> list[str]:
    """The probe specs the ``SEC()`` names of ``source`` attach to (maps and data aside)."""
    out = []
    for sec in _SECTION.findall(source):
        prefix, _, target = sec.partition("/")
        kind = _KINDS.get(prefix)
        if kind is not None and target:
            out.append(f"{kind}:{target.replace('/', ':', 1)}")
    return list(dict.fromkeys(out))


def probe_available(spec: str) -> bool:
    """Whether this kernel offers the probe ``spec`` (``-a`` syntax) and can attach its kind,
    as :func:`ebpf_magic.discover.find` lists it."""
    kind = spec.partition(":")[0]
    if kind == "software":
        return True  # the kernel's own clocks and counters, always there
    try:
        found = discover.find(spec)
    except BPFError:  # the listing's source cannot be read here (tracefs, for one)
        return False
    rows = found[found["probe"] == spec]
    return bool(len(rows)) and bool(rows["attachable"].iloc[0])


# -- reading ------------------------------------------------------------------------------


class Reading:
    """What a tool's table is computed from: map frames, event frames, options, program.

    ``maps(NAME)`` and ``events(NAME)`` give frames: ``maps`` given (all the program's,
    read at one moment, so that tables computed together agree), else read from the
    program on first use. For one interval (``interval``) the maps are what each gained
    in it and the events those of its time; ``program`` is the program itself, for what
    frames do not carry (a live stack map's symbolizer).
    """

    def __init__(self, program: ProgramView, options: Mapping[str, Any],
                 maps: Mapping[str, pd.DataFrame] | None = None,
                 start: float | None = None, end: float | None = None,
                 interval: bool = False) -> None:
        self.program = program
        self.options = dict(options)
        self._maps: dict[str, pd.DataFrame] = dict(maps or {})
        self._interval = interval
        self.start = start if start is not None else program.started_at
        self.end = end if end is not None else (program.stopped_at or time.time())

    def maps(self, name: str) -> pd.DataFrame:
        """The frame of map ``name``."""
        if name not in self._maps:
            if self._interval:
                raise KeyError(f"map {name!r} is not in this reading")
            self._maps[name] = self.program.read_maps([name])[name]
        return self._maps[name]

    def map_view(self, name: str) -> Any:
        """The program's map ``name`` itself (a live one symbolizes its stacks)."""
        return self.program.maps[name]

    def events(self, name: str) -> pd.DataFrame:
        """The events of stream ``name`` so far (only those of this interval, for one)."""
        df = self.program.events[name].df
        if self._interval and "time" in df.columns and len(df):
            times = df["time"]
            lo = pd.Timestamp(self.start, unit="s")
            hi = pd.Timestamp(self.end, unit="s")
            df = df[(times >= lo) & (times < hi)]
        return df

    @property
    def seconds(self) -> float:
        """How long the reading covers."""
        return max((self.end or 0.0) - (self.start or 0.0), 0.0)


def differences(before: Mapping[str, pd.DataFrame], after: Mapping[str, pd.DataFrame],
                value_columns: Mapping[str, list[str]]) -> dict[str, pd.DataFrame]:
    """What each map gained from ``before`` to ``after``: value columns subtracted by key.

    The key is every column that is not a value; numeric values are subtracted, others (a
    name kept in the value) are as they are now. Keys only in ``after`` keep their values;
    rows that gained nothing are left out.
    """
    out = {}
    for name, now in after.items():
        declared = set(value_columns.get(name, []))
        per_cpu = any(_PER_CPU.match(str(c)) for c in now.columns)
        value = [c for c in now.columns if c in declared or (c == "total" and per_cpu) or (
            _PER_CPU.match(str(c)) and _PER_CPU.match(str(c)).group(1) in declared)]
        numbers = [c for c in value if pd.api.types.is_numeric_dtype(now[c])]
        keys = [c for c in now.columns if c not in value]
        old = before.get(name)
        if old is None or not numbers or not len(old):
            out[name] = now
            continue
        if not keys:
            diff = now[numbers].to_numpy() - old[numbers].to_numpy()
            out[name] = now.assign(**dict(zip(numbers, diff.T, strict=True)))
            continue
        merged = now.merge(old[keys + numbers], on=keys, how="left", suffixes=("", "__old"))
        for col in numbers:
            merged[col] = merged[col] - merged[f"{col}__old"].fillna(0).astype(
                merged[col].dtype)
        merged = merged[list(now.columns)]
        out[name] = merged[(merged[numbers] != 0).any(axis=1)].reset_index(drop=True)
    return out


class ToolRun(ProgramBase):
    """A tool's program, running or replayed: the read API, plus ``.df`` and ``.plot()``.

    Everything of :class:`~ebpf_magic.api.ProgramView` is the program's (``maps``,
    ``events``, ``stop()``...; ``summary()`` and ``browse()`` read them as every program's
    do); :meth:`save` also keeps the tool's tables and options, so
    :func:`ebpf_magic.tools.load` gives the tool back.
    """

    def __init__(self, tool: Tool, program: ProgramView, options: Mapping[str, Any],
                 variant: str = "default", saved: Mapping[str, pd.DataFrame] | None = None
                 ) -> None:
        self.tool = tool
        self.program = program
        self.options = dict(options)
        self.variant = variant
        self._saved = dict(saved or {})  # tables as recorded, or as they were at stop()
        self._failed: dict[str, Exception] = {}  # tables that could not be read at stop()

    # -- the tool's tables ----------------------------------------------------------------

    @property
    def df(self) -> pd.DataFrame:
        """The tool's main table (see the tool's doc for its columns)."""
        return self.table()

    def table(self, name: str = "main") -> pd.DataFrame:
        """The tool's table ``name`` (``"main"``: :attr:`df`); :attr:`table_names` lists
        them."""
        return self._compute([name])[name]

    @property
    def table_names(self) -> list[str]:
        return ["main", *self.tool.tables]

    def _table_function(self, name: str) -> Table:
        if name == "main":
            return self.tool.table
        try:
            return self.tool.tables[name]
        except KeyError:
            raise KeyError(f"tool {self.tool.name} has no table {name!r}; tables: "
                           f"{', '.join(self.table_names)}") from None

    def _compute(self, names: list[str]) -> dict[str, pd.DataFrame]:
        """Tables ``names``: kept ones as kept, the others from one reading of the maps."""
        functions = {name: self._table_function(name) for name in names}
        out = {n: self._saved[n].copy() for n in names if n in self._saved}
        for name in names:
            if name in self._failed:
                raise self._failed[name]
        todo = [n for n in names if n not in out]
        if not todo:
            return out
        if not self.program.readable:
            raise BPFError(f"{self.name} was stopped before its {todo[0]} table was read",
                           "A run keeps its tables from the moment it stops; this one's maps "
                           "were released without that (stop the ToolRun, not its program).")
        if self.interval:
            snaps = self._snapshots()
            return {**out, **{n: self._per_interval(functions[n], snaps) for n in todo}}
        maps = self.program.read_maps() if len(todo) > 1 else None
        reading = Reading(self.program, self.options, maps)
        return {**out, **{n: functions[n](reading) for n in todo}}

    @property
    def interval(self) -> float | None:
        """Seconds per table row group, when the run was started with ``interval``."""
        return self.options.get("interval")

    def _snapshots(self) -> list[Any]:
        """The maps as recorded every interval, and as they are now while running."""
        from ebpf_magic.sessions import Snapshot, recorder_of

        snaps = list(recorder_of(self.program) or [])
        if self.program.running:
            snaps.append(Snapshot(time.time(), self.program.read_maps()))
        return snaps

    def _per_interval(self, fn: Table, snaps: list[Any]) -> pd.DataFrame:
        """One table per snapshot interval, each from what the maps gained in it."""
        columns = {n: list(m.value_columns) for n, m in self.program.maps.items()}
        parts = []
        before: dict[str, pd.DataFrame] = {}
        start = self.program.started_at
        for snap in snaps:
            gained = differences(before, snap.maps, columns)
            df = fn(Reading(self.program, self.options, gained, start, snap.time,
                            interval=True))
            parts.append(df.assign(time=pd.Timestamp(snap.time, unit="s")))
            before, start = snap.maps, snap.time
        if not parts:
            return fn(Reading(self.program, self.options)).assign(
                time=pd.Series([], dtype="datetime64[ns]"))
        out = pd.concat(parts, ignore_index=True)
        return out[["time"] + [c for c in out.columns if c != "time"]]

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """The tool's picture of :attr:`df`; returns the matplotlib Axes."""
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.subplots(figsize=kwargs.pop("figsize", (9, 4)))[1]
        return self.tool.plot(self, ax, **kwargs)

    # -- the read API: the program's ------------------------------------------------------

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def backend(self) -> str:
        return self.program.backend

    @property
    def source(self) -> str:
        return self.program.source

    @property
    def cflags(self) -> list[str]:
        return self.program.cflags

    @property
    def pid(self) -> int | None:
        return self.program.pid

    @property
    def attached(self) -> list[str]:
        return self.program.attached

    @property
    def started_at(self) -> float | None:
        return self.program.started_at

    @property
    def stopped_at(self) -> float | None:
        return self.program.stopped_at

    @property
    def maps(self) -> Mapping[str, Any]:
        return self.program.maps

    @property
    def events(self) -> Mapping[str, Any]:
        return self.program.events

    @property
    def globals(self) -> Any:
        return self.program.globals

    @property
    def iter(self) -> Any:
        return self.program.iter

    @property
    def overhead(self) -> pd.DataFrame:
        """What the tool's programs cost (see :attr:`~ebpf_magic.api.ProgramView.overhead`)."""
        return self.program.overhead

    @property
    def running(self) -> bool:
        return self.program.running

    @property
    def readable(self) -> bool:
        return self.program.readable

    @property
    def probes(self) -> list[Any]:
        return self.program.probes

    @property
    def functions(self) -> list[str]:
        return self.program.functions

    @property
    def unattached(self) -> list[str]:
        return self.program.unattached

    @property
    def uptime(self) -> float:
        return self.program.uptime

    @property
    def events_seen(self) -> int:
        return self.program.events_seen

    @property
    def warnings(self) -> list[Any]:
        return list(self.program.warnings)

    @property
    def notes(self) -> list[Any]:
        return list(self.program.notes)

    @property
    def state(self) -> str:
        return self.program.state

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """The program's saved frames, and the tool's: which tool with which options
        (``tool``) and each of its tables now (``tool:main``...), as a recording keeps them."""
        out = dict(self.program.tables)
        out[META_TABLE] = pd.DataFrame([{"tool": self.tool.name, "variant": self.variant,
                                         "options": json.dumps(self.options, default=str)}])
        out.update({TABLE_PREFIX + n: df for n, df in self._compute(self.table_names).items()})
        return out

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        return self.program.read_maps(names)

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        return self.program.host_facts(hostname)

    def prog_ids(self) -> list[int]:
        return self.program.prog_ids()

    def map_ids(self) -> list[int]:
        return self.program.map_ids()

    def stop(self) -> None:
        """Keep the tool's tables as they are now, then stop the program (idempotent).

        The program stops even if a table cannot be read; reading that table later raises
        what reading it raised then.
        """
        try:
            if self.program.running:
                names = [n for n in self.table_names if n not in self._failed]
                try:
                    self._saved.update(self._compute(names))
                except Exception:  # noqa: BLE001 - each kept, raised when read
                    for name in names:
                        try:
                            self._saved[name] = self.table(name)
                        except Exception as e:  # noqa: BLE001
                            self._failed[name] = e
        finally:
            self.program.stop()

    def save(self, path: Any, **options: Any) -> Any:
        """Write a recording with the tool's tables and options (see :attr:`tables`)."""
        from ebpf_magic.sessions import recorder_of, save

        if not isinstance(self.program, Program) and not self.program.running:
            return self.program.save(path, **{"tables": self.tables, **options})
        options.setdefault("snapshots", recorder_of(self.program))
        return save(self, path, **options)

    def __enter__(self) -> ToolRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else ("replayed" if self.readable else "stopped")
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items()
                         if v not in (None, False))
        return f"<ToolRun {self.name}: {self.tool.name}({opts}) {state}>"

    def _repr_html_(self) -> str:
        import html

        return (f"<p><b>{html.escape(self.name)}</b>: {html.escape(self.tool.answers)}</p>"
                + pd.DataFrame([self.summary()]).to_html(index=False))


def from_recording(program: ProgramView, tools: Mapping[str, Tool]) -> ToolRun | None:
    """The tool run a replayed ``program`` was saved from, or None if it was not a tool's.

    Its tables are the recorded ones. ReplayError-like BPFError if the tool is unknown here.
    """
    meta = program.tables.get(META_TABLE)
    if meta is None:
        return None
    if len(meta) != 1 or not {"tool", "options"} <= set(meta.columns):
        raise BPFError(f"{program.name}: the recording's {META_TABLE!r} table is not a tool's",
                       "Load it with ebpf_magic.load() as a plain program.")
    row = meta.iloc[0]
    tool = tools.get(str(row["tool"]))
    if tool is None:
        raise BPFError(f"{program.name} was recorded by tool {row['tool']!r}, which is not "
                       "known here",
                       "Register that tool (ebpf_magic.tools.register) before loading, or load "
                       "the recording as a plain program with ebpf_magic.load().")
    try:
        options = json.loads(str(row["options"]))
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise BPFError(f"{program.name}: the recording's tool options are not readable",
                       "Load it with ebpf_magic.load() as a plain program.")
    saved = {name[len(TABLE_PREFIX):]: df for name, df in program.tables.items()
             if name.startswith(TABLE_PREFIX)}
    variant = str(row["variant"]) if "variant" in meta.columns else "default"
    return ToolRun(tool, program, options, variant, saved)
