"""A running BPF program: compile, attach, read, stop.

``Program`` is the library's central object, usable from plain Python::

    with Program(src, attach=["tracepoint:syscalls:sys_enter_write=count"]) as prog:
        ...
        prog.maps["counts"].df

It owns everything it creates (probes, descriptors, stream readers) and
releases all of it on :meth:`stop`, when leaving a ``with`` block, and when the
interpreter exits. A program that fails to start leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from ebpf_magic import source as src
from ebpf_magic.api import ProgramBase, ProgramView
from ebpf_magic.backend import (
    CompiledProgram,
    MapHandle,
    check_globals,
    check_load_options,
    choose_backend,
    compile_program,
    compiles_out_of_process,
    named_probes,
)
from ebpf_magic.data import overhead
from ebpf_magic.data.globalvars import Globals
from ebpf_magic.data.iterators import Iterators
from ebpf_magic.data.maps import Maps, stopped_error
from ebpf_magic.data.streams import Streams, check_options
from ebpf_magic.errors import AttachError
from ebpf_magic.internal.tables import Listing
from ebpf_magic.kernel import runstats, sysbpf
from ebpf_magic.probes import Probe, bind_explicit
from ebpf_magic.suggest import attach_hint

# every program running in this process, in the order they started (see :func:`running`)
_running: dict[int, ProgramView] = {}
_running_lock = threading.Lock()


def register(prog: ProgramView) -> None:
    """Hold ``prog`` as running here until :func:`unregister`.

    A registered program is listed by :func:`running`, stopped by :func:`stop_all` and at
    interpreter exit. The registry holds it, so a running program whose last other
    reference is dropped is still listed, and still stopped. :class:`Program` registers
    itself; so does any other :class:`~ebpf_magic.api.ProgramView` that holds something in
    a kernel until its ``stop()`` (a program running on many hosts).
    """
    with _running_lock:
        _running[id(prog)] = prog


def unregister(prog: ProgramView) -> None:
    """Forget ``prog`` once it has released everything (no-op if not registered)."""
    with _running_lock:
        if _running.get(id(prog)) is prog:
            del _running[id(prog)]


def running() -> list[ProgramView]:
    """Every program running in this process, oldest first.

    Live programs are here from a successful start until :meth:`Program.stop` has released
    everything. Replayed recordings are not: nothing of theirs runs in a kernel, and
    nothing needs releasing at exit; a notebook lists them by name (``%bpf list``).
    """
    with _running_lock:
        return list(_running.values())


class Program(ProgramBase):
    """Compile ``source``, attach it, and start reading its event buffers.

    Each argument is also a ``%%bpf`` option of the same name (``attach`` is
    ``--attach``/``-a``, ``defines`` ``--define``/``-D``, ``globals`` ``--global``,
    ``maps`` ``--map``, ``stream_options["max_rows"]`` ``--max-rows``).

    Args:
        source: the BPF C text, in either dialect: BCC's (its macros, ``kprobe__*``
            names) or libbpf's CO-RE C (``SEC("...")``, ``vmlinux.h``).
        name: a label for listings and recordings.
        attach: probes in bpftrace's syntax, ``KIND:TARGET[=FUNCTION]``, or
            :class:`~ebpf_magic.probes.Probe` objects; added to the probes the source
            implies (BCC's function names such as ``kprobe__*`` and
            ``TRACEPOINT_PROBE``, libbpf's ``SEC()`` names).
        cflags: extra compiler flags.
        defines: C macros, ``{"NAME": value}`` or ``["NAME=VALUE"]``.
        pid: process to restrict uprobes and USDT probes to.
        stream_options: passed to each event stream (``max_rows``, ``page_cnt``...).
        backend: ``"bcc"`` or ``"libbpf"``; by default chosen from the source's dialect
            (:func:`~ebpf_magic.backend.choose_backend`).
        line_offset: added to line numbers in compile errors (1 for a notebook cell,
            whose first line is ``%%bpf``).
        globals: initial values of global variables, ``{"target_pid": 123}``, written
            before load (so ``const volatile`` ones reach the verifier as constants);
            libbpf programs only. Read and write them later through :attr:`globals`.
        programs: the functions to load (libbpf programs only; libbpf's autoload). By
            default, where the source holds variants of one probe (``tp_btf``/``raw_tp``/
            ``tracepoint``, ``fentry``/``kprobe``), the best this kernel offers is loaded
            and the notes say which.
        maps: map attributes set before load (libbpf programs only),
            ``{"stacks": {"max_entries": 4096, "value_size": 1016}}``; also
            ``key_size`` and ``map_flags``.
    """

    def __init__(self, source: str, *, name: str = "bpf",
                 attach: Sequence[str | Probe] = (), cflags: Iterable[str] = (),
                 defines: Mapping[str, Any] | Iterable[str] = (), pid: int | None = None,
                 stream_options: Mapping[str, Any] | None = None,
                 line_offset: int = 0, backend: str | None = None,
                 globals: Mapping[str, Any] | None = None,
                 programs: Sequence[str] | None = None,
                 maps: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.name = name
        self.backend = choose_backend(source, backend)
        self.source = source
        self.cflags = list(cflags) + src.define_flags(defines)
        self.pid = pid
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.probes: list[Probe] = []
        self.attached: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._compiled: CompiledProgram | None = None
        self._streams: Streams | None = None
        self._globals = Globals([], name)
        self._iters = Iterators({}, name)
        self.maps = Maps({})
        self._lock = threading.Lock()
        self._attached_at: float | None = None  # time.monotonic() as the first probe attaches
        self._final: tuple[list[dict[str, Any]], runstats.Status] | None = None  # at stop()

        requested = [Probe.parse(a, pid) if isinstance(a, str) else a for a in attach]
        usdt = self._bound_usdt([p for p in requested if p.kind == "usdt"])
        check_options(stream_options or {})
        runstats.acquire()  # the kernel counts its runs from the start, where it may
        try:
            compiled = self._compile(line_offset, usdt, globals, programs, maps)
            handles = self._load(compiled, usdt, [p for p in requested if p.kind != "usdt"])
            # Buffers are read before any probe fires, so no event goes unseen or uncounted.
            # Ctrl-C waits for each step to finish, so what it opened is owned and rolled back
            # (a descriptor between its creation and its owner would be lost)
            with interrupts_deferred():
                self._streams = Streams.open(compiled, handles, **dict(stream_options or {}))
            self._attached_at = time.monotonic()
            self._attach(compiled)
            self._iters = Iterators(compiled.iterators(), name, self._lock)
        except BaseException:
            with interrupts_deferred():
                self._release()
            raise
        self.started_at = time.time()
        register(self)

    # -- starting --------------------------------------------------------------

    def _bound_usdt(self, usdt: list[Probe]) -> list[Probe]:
        """USDT probes with their functions: a spec without =FUNCTION takes the one left."""
        if all(p.function for p in usdt):
            return usdt
        functions = src.function_names(self.source)
        named = named_probes(self.backend, functions)
        return bind_explicit(named + usdt, functions)[len(named):]

    def _compile(self, line_offset: int, usdt: list[Probe], globals: Mapping[str, Any] | None,
                 programs: Sequence[str] | None,
                 maps: Mapping[str, Mapping[str, int]] | None) -> CompiledProgram:
        # A compiler interrupted half-way in this process could leak what it loaded:
        # Ctrl-C waits, unless the backend compiles in a process Ctrl-C stops at once.
        with (contextlib.nullcontext() if compiles_out_of_process(self.backend) else
              interrupts_deferred()):
            self._compiled = compiled = compile_program(
                self.source, cflags=self.cflags, usdt=usdt, line_offset=line_offset,
                backend=self.backend, globals=globals, programs=programs, maps=maps)
        self._globals = Globals(compiled.globals(), self.name, self._lock)
        self.warnings = list(compiled.warnings)
        self.notes = list(compiled.notes)
        return compiled

    def _load(self, compiled: CompiledProgram, usdt: list[Probe],
              explicit: list[Probe]) -> dict[str, MapHandle]:
        """Bind the probes to functions, load, and wrap the maps; returns every map handle."""
        auto = compiled.implied_probes()
        # functions with implied probes are taken: a spec without =FUNCTION means another
        others = bind_explicit(auto + explicit, compiled.functions)[len(auto):]
        self.probes = auto + usdt + others
        compiled.load(self.probes)
        handles = compiled.maps()
        hidden = compiled.hidden_maps()
        self.maps = Maps({n: h for n, h in handles.items() if n not in hidden})
        return handles

    def _attach(self, compiled: CompiledProgram) -> None:
        for probe in self.probes:
            try:
                with interrupts_deferred():
                    self.attached += compiled.attach(probe)
            except AttachError as e:
                e.hint = e.hint or attach_hint(probe, e.message)
                raise

    # -- reading ---------------------------------------------------------------

    @property
    def events(self) -> Streams:
        """The program's perf and ring buffers as live event streams, by name."""
        assert self._streams is not None
        return self._streams

    @property
    def globals(self) -> Globals:
        """The program's global variables, ``{name: value}`` read live; ``.df`` lists them.

        ``.data`` and ``.bss`` variables can be assigned; ``.rodata`` is set before load
        (the ``globals=`` argument). Each read and write holds the lock :meth:`stop` takes,
        as :meth:`read_maps` does; once stopped they raise
        :class:`~ebpf_magic.errors.BPFError`. A BCC program has none.
        """
        return self._globals

    @property
    def iter(self) -> Iterators:
        """The program's BPF iterators (``SEC("iter/...")``), by function name.

        ``prog.iter["dump"].df`` runs one and returns what it wrote: its records, or its
        lines of text. Each read walks the kernel's objects afresh.
        """
        return self._iters

    @property
    def functions(self) -> list[str]:
        return list(self._compiled.functions) if self._compiled else []

    @property
    def unattached(self) -> list[str]:
        """C functions no probe uses (helpers, or functions you meant to attach)."""
        used = {p.function for p in self.probes}
        return [f for f in self.functions if f not in used]

    @property
    def running(self) -> bool:
        """True until :meth:`stop` has released everything (a probe may still fire)."""
        return self._compiled is not None

    @property
    def readable(self) -> bool:
        """True while the maps can be read: until :meth:`stop`."""
        return self.running

    @property
    def tables(self) -> Mapping[str, pd.DataFrame]:
        """Frames saved with the program: none for a live one (see :meth:`save`)."""
        return {}

    @property
    def uptime(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or time.time()) - self.started_at

    @property
    def events_seen(self) -> int:
        return self._streams.received if self._streams is not None else 0

    def prog_ids(self) -> list[int]:
        """Kernel ids of the loaded functions (as bpftool lists them)."""
        if self._compiled is None:
            return []
        return [sysbpf.prog_info(fd).id for fd in self._compiled.program_fds().values()]

    def function_ids(self) -> dict[str, int]:
        """``{function: kernel id}`` of the loaded functions (none once stopped)."""
        with self._lock:
            if self._compiled is None:
                return {}
            return {fn: sysbpf.prog_info(fd).id
                    for fn, fd in self._compiled.program_fds().items()}

    def map_ids(self) -> list[int]:
        return [m.handle.id for m in self.maps.values()] if self.running else []

    @property
    def overhead(self) -> pd.DataFrame:
        """What each loaded function has cost since it was attached, as the kernel counted it.

        One row per function: ``function``, ``probes`` (the attach specs that run it: the
        kernel counts per function, not per probe), ``prog_id``, ``runs``, ``run_time_ns``,
        ``seconds`` (the window: since the probes were attached, or since run statistics
        were enabled if later), ``runs_per_s``, ``ns_per_run`` (NaN for a function that
        never ran) and ``cpu_pct`` (percent of one CPU). A stopped program's are those it
        had when it stopped. Where the kernel was not counting, the numbers are missing
        (never zeros) and ``.unmeasured`` says how to enable them.
        """
        with self._lock:
            if self._compiled is not None:
                status = runstats.status()
                rows = self._counters(status)
            elif self._final is not None:
                rows, status = self._final
            else:
                return overhead.unmeasured([], f"{self.name}: its run counts could not be "
                                               "read as it stopped")
        if not status.counting:
            return overhead.unmeasured(rows, overhead.not_counted(self.name, status))
        return overhead.frame(rows)

    def _counters(self, status: runstats.Status) -> list[dict[str, Any]]:
        """Each loaded function's counters now (the caller holds the lock, while running)."""
        assert self._compiled is not None and self._attached_at is not None
        fds = self._compiled.program_fds()
        stats = {fn: runstats.of_fd(fd) for fn, fd in fds.items()}
        probes = {fn: ", ".join(p.spec for p in self.probes if p.function == fn) for fn in fds}
        since = max(self._attached_at, status.since or 0.0)
        return overhead.counters(stats, probes, time.monotonic() - since)

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """The frames of maps ``names`` (default all), read while :meth:`stop` waits.

        A map read never meets a descriptor that stop() closed (or that the process
        reused meanwhile); raises :class:`~ebpf_magic.errors.BPFError` once stopped.
        """
        with self._lock:
            if not self.running:
                raise stopped_error(self.name, self.stopped_at)
            return {name: self.maps[name].df for name in (self.maps if names is None else names)}

    @property
    def state(self) -> str:
        """"running" until :meth:`stop`, then "stopped"."""
        return "running" if self.running else "stopped"

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        """This machine: kernel, the backend's versions, CPUs, and its name unless left out."""
        from ebpf_magic.sessions import writer

        return writer.host_facts(hostname, self.backend)

    # -- lifecycle -------------------------------------------------------------

    def stop(self) -> None:
        """Detach every probe, drain and close the streams, close every descriptor.

        Idempotent. Probes are detached before the buffers are drained, so every
        event submitted until then is in a stream or counted as lost. Ctrl-C
        during the release is held back until it is complete, then raised; if
        the release fails part-way, the program stays ``running`` and calling
        ``stop()`` again finishes it.
        """
        with interrupts_deferred(), self._lock:
            if self._compiled is None and self.stopped_at is not None:
                return
            self._keep_final_counters()
            self._release()
            if self.stopped_at is None:
                self.stopped_at = time.time()
            self.maps.release(self.name, self.stopped_at)
            self._globals.release(self.stopped_at)
            self._iters.release(self.stopped_at)
            unregister(self)

    def _keep_final_counters(self) -> None:
        """Read the functions' counters once more before their descriptors close, so
        :attr:`overhead` still answers once stopped."""
        if self._compiled is None or self._final is not None or self._attached_at is None:
            return
        status = runstats.status()
        with contextlib.suppress(OSError):
            self._final = (self._counters(status), status)

    def _release(self) -> None:
        """Detach, then drain and close the streams, then close the program.

        Each step can run again after an error: a step that completed is a no-op.
        """
        if self._compiled is not None:
            self._compiled.detach()
        if self._streams is not None:
            self._streams.close()
        if self._compiled is not None:
            self._globals.release()
            self._compiled.close()
            self._compiled = None

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        probes = f"{len(self.attached)} probe{'' if len(self.attached) == 1 else 's'}"
        if self.running:
            maps = ", ".join(self.maps) or "none"
            return f"<Program {self.name} (running): {probes}, maps: {maps}>"
        kept = ", its events kept" if self._streams else ""
        return f"<Program {self.name} (stopped): {probes} detached, maps released{kept}>"

    def _repr_html_(self) -> str:
        return Listing([self.summary()])._repr_html_()


def labels() -> dict[int, tuple[str, str]]:
    """``{kernel id: (program, function)}`` of every function the programs running in this
    process loaded."""
    out = {}
    for prog in running():
        if isinstance(prog, Program):
            with contextlib.suppress(OSError):
                out.update({i: (prog.name, fn) for fn, i in prog.function_ids().items()})
    return out


def check_settable(source: str, backend: str | None, names: Iterable[str],
                   programs: Sequence[str] | None = None,
                   maps: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Raise :class:`~ebpf_magic.errors.BPFError` if ``source``'s backend cannot set ``names``,
    choose ``programs`` or set ``maps``' attributes.

    Lets a caller refuse ``globals=`` for a BCC program before anything is stopped or started.
    """
    chosen = choose_backend(source, backend)
    check_globals(chosen, list(names))
    check_load_options(chosen, programs, maps)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C, a notebook's interrupt) until the block ends, then deliver it.

    Only the main thread receives signals; elsewhere the block runs unchanged.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # None: a handler not installed from Python, which cannot be put back
        return
    pending: list[Any] = []
    signal.signal(signal.SIGINT, lambda _signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, pending[0])


def stop_all() -> list[ProgramView]:
    """Stop every program still running in this process; returns them, oldest first."""
    programs = running()
    failed: list[Exception] = []
    for prog in programs:
        try:
            prog.stop()
        except Exception as e:  # noqa: BLE001 - the others still stop; the first failure is raised
            failed.append(e)
    if failed:
        raise failed[0]
    return programs


atexit.register(stop_all)
