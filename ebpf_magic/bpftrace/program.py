"""A bpftrace program running in the background, read like any other program.

:class:`BpftraceProgram` starts ``bpftrace`` (:mod:`.process`) on a program and, at the
same time, bpftrace's dry run of it (``-d``), whose typed syntax tree tells the types of
every map's key parts and every ``printf`` argument (:mod:`.semantics`). When bpftrace says
every probe is attached, this process takes copies of its map descriptors and reads the
maps itself whenever asked (:mod:`.maps`); bpftrace's output lines feed event streams
(:mod:`.output`). It is a :class:`~ebpf_magic.api.ProgramView`, registered like a
:class:`~ebpf_magic.program.Program`: ``stop_all()``, ``%bpf stop`` and the interpreter's
exit stop it, and a recording of it replays without bpftrace.

Nothing is left behind: a program that fails to start has its processes stopped before
the error is raised; stop() interrupts bpftrace as Ctrl-C would (it detaches its probes
and exits), kills it if it does not exit in time and then removes the tracefs entries it
left, and closes every descriptor this process took.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

from ebpf_magic.api import ITERATOR, MAP, Named, ProgramBase
from ebpf_magic.bpftrace import maps as bt_maps
from ebpf_magic.bpftrace import output, process, semantics, source
from ebpf_magic.data import overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.data.maps import stopped_error
from ebpf_magic.data.streams import Stream, Streams, check_options
from ebpf_magic.errors import AttachError, BPFError, CompileError, OptionError
from ebpf_magic.kernel import procfd, runstats, sysbpf
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.probes import KINDS, Probe
from ebpf_magic.program import interrupts_deferred, register, unregister

BACKEND = "bpftrace"
START_TIMEOUT = 120.0  # seconds bpftrace may take to attach (a wildcard over many probes)
# messages bpftrace 0.17 prints that say nothing about the program
_NOISE = ("couldn't set RLIMIT_MEMLOCK", "Error while reading traceable functions",
          process.ATTACHED)


class BpftraceWarning(UserWarning):
    """bpftrace reported something about a running program (lost events, helper errors)."""


class BpftraceProgram(ProgramBase):
    """``source`` run by bpftrace in the background, its maps and output read from here.

    Args:
        source: the bpftrace program (what ``bpftrace -e`` takes, or a ``.bt`` file's text).
        name: a label for listings and recordings.
        pid: ``-p PID``: probes limited to that process, and the program ends with it.
        command: a command (``-c CMD``) run with the program: started as this process's
            user, held until every probe is attached, probes limited to it as with ``pid``
            (``cpid`` in the program is its pid), and the program ends with it; its output
            is ``events["command"]``.
        params: positional parameters, ``$1``, ``$2``... in the program.
        unsafe: allow bpftrace's unsafe builtins (``system()``...), run with this
            process's rights.
        env: bpftrace's own settings, ``{"BPFTRACE_MAP_KEYS_MAX": 100000}``.
        stream_options: ``max_rows``, ``poll_ms``, ``batch_ms`` and ``spill`` (a directory:
            ``<dir>/<stream>.parquet``) as :mod:`ebpf_magic.data.streams` takes them, for
            every output stream.
        line_offset: added to line numbers in errors (1 for a notebook cell, whose first
            line is ``%%bpftrace``).
    """

    backend = BACKEND

    def __init__(self, source_text: str, *, name: str = "bpftrace", pid: int | None = None,
                 command: str | None = None, params: Sequence[Any] = (),
                 unsafe: bool = False, env: Mapping[str, Any] | None = None,
                 stream_options: Mapping[str, Any] | None = None,
                 line_offset: int = 0) -> None:
        if pid is not None and command is not None:
            raise OptionError("give a process (pid) or a command to run, not both")
        self.name = name
        self.source = source_text
        self.pid = pid
        self.command = command
        self.params = [str(p) for p in params]
        self.unsafe = unsafe
        self.cflags: list[str] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.exited_at: float | None = None
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._warned: set[str] = set()
        self._lock = threading.RLock()  # held by stop() and by reads of the maps
        self._handoff = threading.Lock()  # the output's lines, before and after streams exist
        self._line_offset = line_offset
        self._proc: subprocess.Popen | None = None
        self._dry: subprocess.Popen | None = None
        self._held: subprocess.Popen | None = None
        self._pidfd = -1
        self._fds: list[int] = []
        self._prog_ids: list[int] = []
        self._attached_at: float | None = None  # time.monotonic() once attached
        self._final: tuple[list[dict[str, Any]], runstats.Status] | None = None  # at stop
        self._map_ids: list[int] = []
        self._stderr: list[str] = []
        self._attached = threading.Event()
        self._notice = False
        self._threads: list[threading.Thread] = []
        self._pending: list[tuple[bool, bytes]] | None = []  # lines before the streams exist
        self._output: output.Output | None = None
        self._streams = Streams({}, 1.0, 0.0)
        self._maps: Named[bt_maps.BpftraceMap] = Named({}, MAP)
        self._released = False
        options = dict(stream_options or {})
        check_options(options)
        settings = process.check_env({k: str(v) for k, v in (env or {}).items()})
        try:
            with interrupts_deferred():  # a child between fork and its owner would be lost
                text, target = source_text, pid
                if command is not None:
                    self._held = process.spawn_held(command)
                    target = self._held.pid
                    text = source.replace_word(text, "cpid", str(target))
                marked, self._formats = self._marked(text)
                env_ = process.environment(settings, includes=source.includes(text))
                self._dry = process.spawn(process.argv(text, dry_run=True, pid=target,
                                                       params=self.params, unsafe=unsafe), env_)
                self._proc = process.spawn(process.argv(marked, pid=target, params=self.params,
                                                        unsafe=unsafe), env_)
                self._follow()
            self.semantics = self._dry_run()
            self._wait_attached()
            with interrupts_deferred():
                self._take_maps()
                self._open_streams(options)
                if self._held is not None:
                    process.release(self._held)
        except BaseException:
            with interrupts_deferred():
                self._release()
            raise
        self.started_at = time.time()
        self._attached_at = time.monotonic()
        register(self)

    # -- starting ----------------------------------------------------------------

    @staticmethod
    def _marked(text: str) -> tuple[str, list[str]]:
        try:
            return source.mark_printfs(text)
        except ValueError:  # an unterminated string: bpftrace's own error says where
            return text, []

    def _follow(self) -> None:
        """Read bpftrace's output and errors, and a command's output, in threads."""
        assert self._proc is not None
        readers = [(self._read_stdout, self._proc.stdout, False),
                   (self._read_stderr, self._proc.stderr, False)]
        if self._held is not None:
            readers.append((self._read_stdout, self._held.stdout, True))
        for target, pipe, from_command in readers:
            t = threading.Thread(target=target, args=(pipe, from_command), daemon=True,
                                 name=f"ebpf_magic-bpftrace-{self.name}")
            t.start()
            self._threads.append(t)

    def _read_stdout(self, pipe: IO[bytes], from_command: bool) -> None:
        for line in pipe:
            with self._handoff:
                if self._pending is not None:
                    self._pending.append((from_command, line))
                    continue
                out = self._output
            if out is not None:
                (out.take_command if from_command else out.take)(line)
        if from_command:
            self._held.wait()
        else:
            self.exited_at = self.exited_at or time.time()

    def _read_stderr(self, pipe: IO[bytes], _: bool) -> None:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(process.ATTACHED):
                self._notice = True
                self._attached.set()
            elif line.strip() and not any(n in line for n in _NOISE):
                self._stderr.append(line)
        self._attached.set()  # bpftrace exited: whoever waits finds out why

    def _dry_run(self) -> semantics.Semantics:
        """The typed tree from ``bpftrace -d``; its errors are the program's errors."""
        assert self._dry is not None
        try:
            out, err = self._dry.communicate(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BPFError("bpftrace took too long to check the program",
                           f"It did not finish in {START_TIMEOUT:.0f} s.") from None
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines()
                 if ln.strip() and not any(n in ln for n in _NOISE)]
        if self._dry.returncode != 0:
            raise self._error(lines, compile_stage=True)
        try:
            return semantics.parse(out.decode("utf-8", "replace"))
        except ValueError as e:
            raise BPFError(f"cannot read bpftrace's description of the program: {e}",
                           f"bpftrace {process.version() or '?'} prints it differently from "
                           "0.17; this version of ebpf_magic reads 0.17's.") from None

    def _wait_attached(self) -> None:
        """Return once bpftrace said every probe is attached; raise its error if it exited."""
        assert self._proc is not None
        if not self._attached.wait(START_TIMEOUT):
            raise AttachError(f"bpftrace did not attach {self.name} in {START_TIMEOUT:.0f} s")
        if self._notice:
            return
        self._proc.wait()
        for t in self._threads[:2]:
            t.join()
        raise self._error(self._stderr, compile_stage=False)

    def _error(self, lines: list[str], compile_stage: bool) -> BPFError:
        """bpftrace's complaint as a short error at the cell's line and column."""
        found = source.diagnostics("\n".join(lines), self._line_offset)
        errors = [d for d in found if d.level == "ERROR"] or found
        if errors:
            d = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return CompileError(f"bpftrace: line {d.line}, column {d.column}: {d.message}{more}",
                                "\n".join(d.excerpt), diagnostics=lines)
        text = [ln.removeprefix("ERROR: ") for ln in source.unlocated(lines)] or \
            [f"bpftrace exited ({self._proc.returncode if self._proc else '?'}) without "
             "saying why"]
        kind = CompileError if compile_stage else AttachError
        told = [t.removeprefix("WARNING: ") for t in text[1:] if t.startswith("WARNING: ")]
        return kind(f"bpftrace: {text[0]}", told[0] if told else
                    "\n".join(text[1:4]) if len(text) > 1 else _hint(text[0]))

    def _take_maps(self) -> None:
        """Copies of bpftrace's map descriptors, matched to the program's maps by name.

        A program that has already ended (``exit()`` in BEGIN, say) leaves none to take:
        its maps then say so when read.
        """
        assert self._proc is not None
        kernel: dict[str, tuple[int, sysbpf.MapInfo]] = {}
        stacks: dict[int, int] = {}
        gone = ""
        try:
            self._pidfd = procfd.open_pidfd(self._proc.pid)
            objects = procfd.bpf_objects(self._proc.pid)
        except OSError:
            objects, gone = [], "bpftrace ended before its maps could be read"
        for obj in objects:
            if obj.kind == "prog":
                self._prog_ids.append(obj.id)
                continue
            try:
                fd = procfd.take(self._pidfd, obj.fd)
            except OSError:
                gone = "bpftrace ended before its maps could be read"
                break
            self._fds.append(fd)
            self._map_ids.append(obj.id)
            info = sysbpf.map_info(fd)
            name = info.name.decode("ascii", "replace")
            if info.kind == "stack_trace":
                stacks[info.value_size // 8] = fd
            elif name.startswith("AT_"):
                kernel[name] = (fd, info) if name not in kernel else (-1, info)
        context = bt_maps.Context(stacks, self.semantics.probe_ids,
                                  bt_maps.log2_top(process.version()))
        found = {}
        for map_name, info in self.semantics.maps.items():
            fd, kinfo = kernel.get(bt_maps.kernel_name(map_name), (-1, None))
            if kinfo is None or fd < 0:
                handle, why = None, gone or ("bpftrace made no kernel map of it" if kinfo is None
                                             else "another map's name begins with the same "
                                                  "12 characters")
            else:
                handle, why = bt_maps.ready_handle(info, fd, kinfo)
            found[map_name] = bt_maps.BpftraceMap(info, handle, why, context, self._reading,
                                                  lambda n=map_name: self._last_printed(n))
        self._maps = Named(found, MAP)

    def _open_streams(self, options: dict[str, Any]) -> None:
        out = output.Output(self.semantics, self._formats, command=self._held is not None,
                            hist_top=bt_maps.log2_top(process.version()))
        max_rows = int(options.get("max_rows", 1_000_000))
        streams = {}
        try:
            for name, schema in out.schemas.items():
                stream = Stream(name, output.KIND, schema.dtype, max_rows,
                                out.channels[name], finish=schema.finish)
                stream.set_time("time", "realtime")
                streams[name] = stream
                if options.get("spill"):
                    stream.spill(Path(options["spill"]) / f"{name}.parquet")
        except BaseException:
            for channel in out.channels.values():
                channel.close()
            raise
        self._streams = Streams.start(streams, **{k: options[k] for k in ("poll_ms", "batch_ms")
                                                  if k in options})
        with self._handoff:
            pending, self._pending = self._pending or [], None
            self._output = out
        for from_command, line in pending:
            (out.take_command if from_command else out.take)(line)

    # -- reading -----------------------------------------------------------------

    def _last_printed(self, name: str) -> pd.DataFrame | None:
        return self._output.printed(name) if self._output is not None else None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the maps while they are read (stop() waits); the stopped error once released."""
        with self._lock:
            if self._released:
                raise stopped_error(self.name, self.stopped_at)
            yield

    @property
    def maps(self) -> Named[bt_maps.BpftraceMap]:
        """The program's maps by name (``"@"`` for the anonymous one), read live."""
        return self._maps

    @property
    def events(self) -> Streams:
        """Its output by kind (``"printf"``, ``"time"``...) and printed maps by name."""
        self._report()
        return self._streams

    @property
    def globals(self) -> SavedGlobals:
        """None: bpftrace programs have no global variables to read."""
        return SavedGlobals((), self.name)

    @property
    def overhead(self) -> overhead.Overhead:
        """What bpftrace's programs have cost since they attached, as the kernel counted them:
        one row per program (``function`` is ``prog ID``: bpftrace names none), with the
        columns of :attr:`~ebpf_magic.api.ProgramView.overhead`. Once bpftrace stopped,
        what they had cost then; where the kernel did not count, ``.unmeasured`` says why."""
        with self._lock:
            if self._attached_at is not None and not self.exited:
                status = runstats.status()
                rows = self._counters(status)
            elif self._final is not None:
                rows, status = self._final
            else:
                return overhead.unmeasured([], f"{self.name}: bpftrace had ended before its "
                                               "programs' run counts were read")
        if not status.counting:
            return overhead.unmeasured(rows, overhead.not_counted(self.name, status))
        return overhead.frame(rows)

    def _counters(self, status: runstats.Status) -> list[dict[str, Any]]:
        """Each of bpftrace's programs' counters now, read from its descriptors' fdinfo."""
        assert self._proc is not None and self._attached_at is not None
        stats = {f"prog {s.prog_id}": s for s in runstats.of_process(self._proc.pid)}
        probes = dict.fromkeys(stats, ", ".join(self.attached) if len(stats) == 1 else "")
        since = max(self._attached_at, status.since or 0.0)
        return overhead.counters(stats, probes, time.monotonic() - since)

    @property
    def iter(self) -> Named[Any]:
        """None: bpftrace programs have no BPF iterators to run."""
        return Named({}, ITERATOR)

    @property
    def attached(self) -> list[str]:
        """The probes as the program names them (wildcards as written)."""
        sem = getattr(self, "semantics", None)
        return [ap for probe in sem.probes for ap in probe] if sem else []

    @property
    def probes(self) -> list[Probe]:
        out = []
        for spec in self.attached:
            kind, _, target = spec.partition(":")
            out.append(Probe(KINDS.get(kind, kind), target, "", self.pid))
        return out

    @property
    def attached_probes(self) -> int | None:
        """How many probes bpftrace attached (a wildcard counts each match)."""
        return self._output.attached_probes if self._output else None

    @property
    def functions(self) -> list[str]:
        return []

    @property
    def unattached(self) -> list[str]:
        return []

    @property
    def running(self) -> bool:
        """True until :meth:`stop`: bpftrace runs, or ended by itself (``exit()``, the end
        of ``-c``'s command or ``-p``'s process) and its maps are still held here."""
        return not self._released

    @property
    def process_id(self) -> int | None:
        """The bpftrace process's id (while it runs, or None)."""
        return self._proc.pid if self._proc is not None and not self.exited else None

    @property
    def command_id(self) -> int | None:
        """The id of the command run with the program (``command=``), or None."""
        return self._held.pid if self._held is not None else None

    @property
    def exited(self) -> bool:
        """True once the bpftrace process has ended (by itself or by :meth:`stop`)."""
        return self._proc is None or self._proc.poll() is not None

    @property
    def readable(self) -> bool:
        return not self._released

    @property
    def tables(self) -> Mapping[str, pd.DataFrame]:
        return {}

    @property
    def uptime(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or self.exited_at or time.time()) - self.started_at

    @property
    def events_seen(self) -> int:
        return self._streams.received

    @property
    def lost_events(self) -> int:
        """Output records bpftrace reported lost (its buffer was full)."""
        return self._output.lost if self._output else 0

    @property
    def helper_errors(self) -> pd.DataFrame:
        """BPF helper failures bpftrace reported: helper, return code, line, column, count."""
        rows = [{"helper": h, "retcode": r, "line": ln + self._line_offset, "column": c,
                 "count": n} for (h, r, ln, c), n in
                (self._output.helper_errors.items() if self._output else [])]
        return pd.DataFrame(rows, columns=["helper", "retcode", "line", "column", "count"])

    def _report(self) -> None:
        """Warn (once per kind) about what bpftrace reported that the frames do not show."""
        out = self._output
        if out is None:
            return
        for key, count, text in (
                ("ambiguous", out.ambiguous, "printed map keys whose text parts hold commas "
                 "could split more than one way (split with the first parts longest)"),
                ("unsplit", out.unsplit, "printed map keys did not split as their types "
                 "say (kept whole in the first key column)"),
                ("unknown", out.unknown, "lines of bpftrace's output were not understood"),
                ("helper", sum(out.helper_errors.values()),
                 "BPF helper calls failed (see .helper_errors)")):
            if count and key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"{self.name}: {count} {text}", BpftraceWarning, stacklevel=3)

    def prog_ids(self) -> list[int]:
        """Kernel ids of the programs bpftrace loaded (as bpftool lists them)."""
        return list(self._prog_ids) if not self.exited else []

    def map_ids(self) -> list[int]:
        return list(self._map_ids) if not self._released else []

    def read_maps(self, names: Iterable[str] | None = None) -> dict[str, pd.DataFrame]:
        """The frames of maps ``names`` (default every one readable live), while stop() waits."""
        with self._reading():
            chosen = list(self._maps if names is None else names)
            return {n: self._maps[n].df for n in chosen
                    if names is not None or self._maps[n].why == ""}

    @property
    def state(self) -> str:
        """"running", "exited (CODE)" once bpftrace ended by itself, "stopped" after stop()."""
        if self._released:
            return "stopped"
        if self.exited and self._proc:
            return f"exited ({self._proc.returncode})"
        return "running"

    def report(self) -> str:
        """What a cell shows when the program starts."""
        n = self.attached_probes
        probes = f"{n} probe{'s' if n != 1 else ''}" if n is not None else "probes"
        parts = [f"{self.name}: attached {probes} ({', '.join(self.attached) or '-'})"]
        if self._maps:
            parts.append(f"maps: {', '.join(self._maps)}")
        if len(self._streams):
            parts.append(f"events: {', '.join(self._streams)}")
        parts.append(f"bpftrace {process.version() or ''}".strip())
        return "; ".join(parts)

    def host_facts(self, hostname: bool = True) -> dict[str, Any]:
        """This machine: kernel, bpftrace's version, CPUs, and its name unless left out."""
        return {"system": platform.system(), "kernel": platform.release(),
                "machine": platform.machine(), "bpftrace": process.version(),
                "cpus": os.cpu_count(), "hostname": socket.gethostname() if hostname else None}

    # -- lifecycle ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop bpftrace as Ctrl-C would, take its last output, release every descriptor.

        Idempotent; Ctrl-C during it is held back until it is complete.
        """
        with interrupts_deferred(), self._lock:
            if self._released:
                return
            self._release()
            self.stopped_at = self.stopped_at or time.time()
            unregister(self)

    def _release(self) -> None:
        """Stop the processes, drain the output, close streams and descriptors."""
        if self._final is None and self._attached_at is not None and not self.exited:
            status = runstats.status()
            with contextlib.suppress(OSError):
                self._final = (self._counters(status), status)
        killed = False
        for proc in (self._dry, self._proc):
            if proc is not None and proc.poll() is None:
                process.stop(proc)
                killed = killed or proc.returncode == -9
        if self._held is not None:
            process.release(self._held, go=False)
            process.end(self._held)
        for t in self._threads:
            t.join()
        self._threads = []
        for proc in (self._dry, self._proc, self._held):
            if proc is not None:
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        if killed:  # it could not remove the uprobes it defined in tracefs
            probe_events.remove_stale_probe_events(busy_timeout=2.0)
        self._streams.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self._released = True

    def __enter__(self) -> BpftraceProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BpftraceProgram {self.name} ({self.state})>"

    def _repr_html_(self) -> str:
        return pd.DataFrame([self.summary()]).to_html(index=False)


def _hint(message: str) -> str:
    if "not found" in message or "No probes" in message:
        return "Check the probe's name: %bpf probes 'tracepoint:syscalls:*open*' lists them."
    if "permission" in message.lower() or "not permitted" in message.lower():
        return "bpftrace runs with this kernel's rights; %bpf doctor shows them."
    return ""


def run(source_text: str, *, name: str = "bpftrace", **options: Any) -> BpftraceProgram:
    """Start ``source_text`` with bpftrace in the background (see :class:`BpftraceProgram`)."""
    return BpftraceProgram(source_text, name=name, **options)
