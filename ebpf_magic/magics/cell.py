"""``%%bpf NAME [options]``: compile the cell, attach it, bind the program to NAME."""

from __future__ import annotations

import argparse
import ast
import keyword
import math
import os
import shlex
import threading
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Protocol

from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.display import display

from ebpf_magic import sessions
from ebpf_magic.backend import BACKENDS, as_note
from ebpf_magic.data import overhead
from ebpf_magic.errors import BPFError, OptionError
from ebpf_magic.internal import deprecation
from ebpf_magic.kernel import runstats
from ebpf_magic.probes import USAGE as PROBE_USAGE
from ebpf_magic.probes import Probe
from ebpf_magic.program import Program, check_settable
from ebpf_magic.source import MACRO_NAME_RULE, interpolate, parse_define

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ebpf_magic.present.top import Top
    from ebpf_magic.session import Session

README = Path(__file__).resolve().parents[2] / "README.md"

# argparse's time grows with the square of the number of options; no real line comes near
MAX_WORDS = 1000
MAX_ROWS = 1_000_000_000
PID_MAX = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit machines
MAX_SECONDS = 86_400.0


class MagicsState(Protocol):
    """What cells and subcommands use of the magics object, :class:`ebpf_magic.magics.
    BPFMagics` (which imports this module)."""

    shell: InteractiveShell
    session: Session
    warned: set[str]  # notes shown once per session
    cost_notes: dict[str, CostNote]  # by program name
    tops: list[tuple[str | None, Top]]  # the %bpf top widgets shown, by the cell showing each
    max_rows: int
    cost_after: float
    costly_cpu_pct: float


def clip(text: str, limit: int = 60) -> str:
    """``text`` shortened to ``limit`` characters for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def whole_number(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``lo`` to ``hi``."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"wants a whole number from {lo:,} to {hi:,}, got {clip(text)!r}")
        return value

    return check


def seconds(text: str, lo: float = 0.0, hi: float = MAX_SECONDS) -> float:
    """A number of seconds above ``lo`` and at most ``hi``; argparse.ArgumentTypeError if not."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and lo < value <= hi):
        raise argparse.ArgumentTypeError(
            f"wants a number of seconds above {lo:g} and at most {hi:g}, got {clip(text)!r}")
    return value


def _define(text: str) -> str:
    try:
        parse_define(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(f"{clip(e.message)} ({MACRO_NAME_RULE})") from None
    return text


def _assignment(text: str) -> tuple[str, object]:
    """``VAR=VALUE``: VALUE as a Python literal (123, 0x10, [1, 2], {'x': 1}), else a string."""
    name, eq, value = text.partition("=")
    if not eq or not name.isidentifier() or not name.isascii():
        raise argparse.ArgumentTypeError(
            f"wants VAR=VALUE with VAR a C variable name, got {clip(text)!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return name, value


def _names(text: str) -> list[str]:
    """``NAME,NAME...``: C function names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier() or not n.isascii()]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"wants C function names separated by commas, got {clip(text)!r}")
    return names


def _map_setting(text: str) -> tuple[str, str, int]:
    """``MAP.ATTRIBUTE=N``: a map attribute set before load."""
    target, eq, value = text.partition("=")
    name, dot, attr = target.partition(".")
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not eq or not dot or not name.isidentifier() or not attr.isidentifier() or number < 0:
        raise argparse.ArgumentTypeError(
            f"wants MAP.ATTRIBUTE=N (e.g. stacks.max_entries=4096), got {clip(text)!r}")
    return name, attr, number


def map_settings(settings: Sequence[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """``--map`` values as ``{map: {attribute: value}}`` (a later value wins)."""
    out: dict[str, dict[str, int]] = {}
    for name, attr, value in settings:
        out.setdefault(name, {})[attr] = value
    return out


def _flags(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} in {clip(text)!r}") from None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a cell's program was starting; IPython shows the one-line message."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%%bpf: {clip(message, 300)}\n{self.format_usage()}")


PARSER = _Parser(prog="%%bpf", add_help=False,
                 description="Compile the cell's BPF C (BCC's dialect, or libbpf's with CO-RE), "
                             "attach it, and bind the running program to NAME in the notebook.")
PARSER.add_argument("name", metavar="NAME", help="Python name the program is bound to")
PARSER.add_argument("-a", "--attach", action="append", default=[], metavar="SPEC[=FUNCTION]",
                    help="attach FUNCTION (or the one unattached C function) to a probe in "
                         "bpftrace syntax; repeatable")
PARSER.add_argument("-p", "--pid", type=whole_number(1, PID_MAX),
                    help="restrict uprobes and USDT probes to PID")
PARSER.add_argument("-D", "--define", dest="defines", action="append", default=[],
                    type=_define, metavar="NAME[=VALUE]", help="define a C macro; repeatable")
PARSER.add_argument("--global", dest="globals", action="append", default=[], type=_assignment,
                    metavar="VAR=VALUE",
                    help="set a global variable before load (libbpf programs: const volatile "
                         "ones become constants for the verifier); VALUE is a Python literal "
                         "(123, 0x10, 'text', [1, 2], {'low': 1}) or else a word taken as a "
                         "string (an enum name, a char[] value); repeatable")
PARSER.add_argument("--programs", type=_names, metavar="NAME,...",
                    help="load only these C functions (libbpf programs); by default, of "
                         "variants of one probe (tp_btf/raw_tp/tracepoint, fentry/kprobe) the "
                         "best this kernel offers is loaded")
PARSER.add_argument("--map", dest="maps", action="append", default=[], type=_map_setting,
                    metavar="MAP.ATTR=N",
                    help="set a map's max_entries, value_size, key_size or map_flags before "
                         "load (libbpf programs); repeatable")
PARSER.add_argument("--cflags", default=[], type=_flags, metavar="FLAGS",
                    help="extra compiler flags, quoted: --cflags '-Wno-unused -DX=1'")
PARSER.add_argument("--raw", action="store_true",
                    help="no {var}/$var interpolation of Python variables in the cell")
PARSER.add_argument("--max-rows", type=whole_number(1, MAX_ROWS), metavar="N",
                    help="events each stream keeps (oldest are dropped and counted); by "
                         "default %%config BPFMagics.max_rows")
PARSER.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
PARSER.add_argument("--backend", choices=BACKENDS,
                    help="compile with BCC or with clang and libbpf (CO-RE); by default chosen "
                         "from the cell: SEC() or libbpf's headers mean libbpf")
PARSER.add_argument("--record", nargs="?", const=1.0, type=seconds, metavar="EVERY",
                    help="record this program: snapshot its maps every EVERY seconds "
                         "(default 1) and let `%%bpf save NAME` refresh recordings/NAME.bpfrec")
PARSER.add_argument("--targets", metavar="TARGETS",
                    help="run the cell on engines of an ipyparallel cluster instead: 'all', "
                         "engine ids (0,2) or host names; each host compiles and attaches it, "
                         "NAME's frames join every host's rows (README, Many hosts)")
PARSER.add_argument("--profile", metavar="PROFILE",
                    help="the cluster's ipyparallel profile, with --targets (default: the one "
                         "ebpf_magic.cluster.connect() reached, else 'default')")

# Options' names before they were named as Program's arguments: they work, with a warning,
# until deprecation.REMOVED_IN.
RENAMED = {"--set": "--global", "--on": "--targets", "--cluster": "--profile"}


def renamed_options(words: list[str], magic: str,
                    renamed: dict[str, str] = RENAMED) -> list[str]:
    """``words`` with each option's old spelling (``--set X``, ``--set=X``) replaced by its
    new one, warning (a FutureWarning, shown in the notebook) once for each."""
    out = []
    for word in words:
        option, eq, value = word.partition("=")
        if option in renamed:
            deprecation.renamed(f"{magic} {option}", f"{magic} {renamed[option]}",
                                stacklevel=4)
            word = renamed[option] + eq + value
        out.append(word)
    return out

DOC = f"""Compile and attach BPF C from a cell, or manage programs.

Cell mode::

    %%bpf NAME [options]
    <BPF C, in BCC's dialect or libbpf's CO-RE C>

{PARSER.format_help()}
Probes attach automatically by BCC's naming conventions: kprobe__FUNC,
kretprobe__FUNC, TRACEPOINT_PROBE(category, event), RAW_TRACEPOINT_PROBE(event),
KFUNC_PROBE/KRETFUNC_PROBE(func), LSM_PROBE(hook). Explicit --attach specs use
bpftrace's probe syntax:
{PROBE_USAGE}
Wildcards (*) work for tracepoints and kprobes. Examples:
    -a tracepoint:syscalls:sys_enter_write=on_write
    -a uprobe:c:malloc            (the one unattached C function)
    -a profile:hz:99=on_sample
    -a xdp:veth0=count_packets    (xdp:DEV@drv for native mode)

A cell with SEC("...") names (libbpf's style) compiles with clang against the running
kernel's BTF and attaches from those names: SEC("tracepoint/syscalls/sys_enter_write").
Of programs that hook one event several ways (tp_btf/raw_tp/tracepoint, fentry/kprobe)
the best this kernel offers is loaded, and a note says which; --programs chooses.
SEC("tc") attaches with -a tc:DEV:ingress, SEC("socket") with -a socket:FD,
SEC("perf_event") with -a profile:hz:N; SEC("iter/task") is read as NAME.iter[...].df.

Python variables: {{var}} and $var in the cell are replaced by the value of the
notebook variable var (also {{obj.attr}}), only when that variable exists, so
C braces are left alone. To keep a literal {{name}} or $name although a
variable of that name exists, double it: {{{{name}}}} or $$name. --raw turns
interpolation off in the cell. The %%bpf and %bpf lines follow the same rules
(-D PID=$pid), always; other Python expressions are not evaluated there.

Where BPF cannot be loaded (no rights, no BCC, not Linux, or EBPF_MAGIC_REPLAY=1),
the cell replays recordings/NAME.bpfrec (folder: $EBPF_MAGIC_RECORDINGS) and
says which recording it replays; `%bpf save NAME` refreshes that file after a
live run with --record (or EBPF_MAGIC_RECORD=1).

The options are named as Program's arguments (--global VAR=VALUE is
Program(..., globals={...}), --targets/--profile are ebpf_magic.cluster.run's);
--set, --on and --cluster, their names before, work with a warning for one release.
Settings (compile timeout, default --max-rows, compile cache, cost notes):
%config BPFMagics lists them, %config BPFMagics.compile_timeout = 120 sets one.

Re-running a cell with the same NAME stops the old program first. A cell
that fails leaves nothing attached. The program object gives:
    NAME.maps["m"].df        a map as a DataFrame (also NAME.maps["m"][key])
    NAME.events["e"].df      events submitted to a perf or ring buffer
    NAME.globals["v"]        a global variable (libbpf programs), live; NAME.globals.df
    NAME.iter["f"].df        run BPF iterator f (SEC("iter/task")...) and read its records
    NAME.overhead            what each function costs: runs/s, ns per run, % of a CPU
    NAME.stop()              detach and unload
"""


def parse(line: str) -> argparse.Namespace:
    """The options of a ``%%bpf`` line, every value checked; UsageError for a bad one.

    Attach specs are parsed too (:class:`~ebpf_magic.errors.ProbeSpecError`),
    so nothing starts, and no running program is stopped, for a line with a mistake.
    """
    words = split_line(line, "%%bpf", "put long lists of macros in the cell as #define lines")
    args = PARSER.parse_args(renamed_options(_joined_values(words), "%%bpf"))
    if not args.name.isidentifier() or keyword.iskeyword(args.name):
        raise UsageError(f"%%bpf: NAME must be a Python identifier and not a keyword, "
                         f"got {clip(args.name)!r}")
    for spec in args.attach:
        Probe.parse(spec, args.pid)
    return args


def split_line(line: str, magic: str, hint: str) -> list[str]:
    """A magic's line split as a shell splits it; UsageError if it does not split or holds
    more than :data:`MAX_WORDS` words (``hint`` says what to do instead)."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"{magic}: {e}") from None
    if len(words) > MAX_WORDS:
        raise UsageError(f"{magic}: the line has {len(words):,} words, more than "
                         f"{MAX_WORDS:,}; {hint}")
    return words


def _joined_values(words: list[str]) -> list[str]:
    """``--cflags VALUE`` as ``--cflags=VALUE``: argparse takes a lone ``-DX=1`` for an option."""
    out: list[str] = []
    it = iter(words)
    for word in it:
        value = next(it, None) if word == "--cflags" else None
        out.append(word if value is None else f"--cflags={value}")
    return out


def run(magics: MagicsState, line: str, cell: str) -> None:
    """Start the cell's program; bind it to NAME in the user namespace."""
    args = parse(line)
    shell = magics.shell
    if args.targets is not None or args.profile is not None:
        _run_on_cluster(magics, args, cell)
        return
    live, why = sessions.can_run_live(cell, args.backend)
    # Replay recordings/NAME.bpfrec instead, and say so. Without a recording, running
    # live gives the precise error (missing rights or BCC) with its fix, unless replay
    # was asked for.
    if not live and (sessions.find_recording(args.name) or why.startswith("replay was")):
        prog = magics.session.start(args.name, lambda: sessions.replay_cell(args.name, why))
        shell.user_ns[args.name] = prog
        report_warnings(magics.warned, prog.warnings, prog.notes)  # as the live run showed
        print(sessions.announce(prog, why))
        return
    text = cell if args.raw else interpolate(cell, shell.user_ns)
    maps = map_settings(args.maps)
    check_settable(text, args.backend, [name for name, _ in args.globals], args.programs, maps)
    stream_options = {"max_rows": args.max_rows or magics.max_rows}

    def factory() -> Program:
        return Program(text, name=args.name, attach=args.attach, cflags=args.cflags,
                       defines=args.defines, pid=args.pid, stream_options=stream_options,
                       line_offset=1, backend=args.backend, globals=dict(args.globals),
                       programs=args.programs, maps=maps)

    try:
        prog = magics.session.start(args.name, factory)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was attached") from None
    shell.user_ns[args.name] = prog
    if args.record is not None:
        sessions.mark(prog, args.record)
    report_warnings(magics.warned, prog.warnings, prog.notes)
    if not args.quiet:
        _report(prog)
    watch_cost(magics, prog)


def _run_on_cluster(magics: MagicsState, args: argparse.Namespace, cell: str) -> None:
    """Start the cell on the cluster's engines (this process needs no BPF rights)."""
    from ebpf_magic.cluster import run as run_on_cluster

    if args.record is not None:
        raise UsageError("%%bpf: --record is for programs on this host; save a cluster "
                         f"program with {args.name}.save(PATH)")
    text = cell if args.raw else interpolate(cell, magics.shell.user_ns)
    stream_options = {"max_rows": args.max_rows or magics.max_rows}
    try:
        prog = magics.session.start(args.name, lambda: run_on_cluster(
            text, name=args.name, profile=args.profile, targets=args.targets,
            attach=args.attach, cflags=args.cflags, defines=args.defines, pid=args.pid,
            stream_options=stream_options, line_offset=1, backend=args.backend,
            globals=dict(args.globals), programs=args.programs, maps=map_settings(args.maps)))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: each engine stops what it attached") from None
    magics.shell.user_ns[args.name] = prog
    report_warnings(magics.warned, prog.warnings, prog.notes)
    if not args.quiet:
        print(prog.report())


def report_warnings(warned: set[str], warnings: Sequence[str],
                    notes: Sequence[str] = ()) -> None:
    """Show a cell's notes, then its warnings, each as one displayed line (never on stderr).

    A warning with a key (a :class:`~ebpf_magic.backend.Note` about the machine, not the
    cell, such as a compiler's inexact kernel headers) is shown once per session (``warned``
    remembers its key), as its one-line brief pointing to its README section. Everything
    else is shown for every cell that has it.
    """
    for note in notes:
        line("note", note)
    for warning in map(as_note, warnings):
        if not warning.key:
            line("warning", warning)
            continue
        if warning.key in warned:
            continue
        warned.add(warning.key)
        text, html = f"note: {warning.brief}", f"<small>{escape(f'note: {warning.brief}')}"
        if warning.see:
            link = f"README, {warning.see}"
            ref = escape(link)
            if README.is_file():
                ref = f'<a href="{escape(os.path.relpath(README))}" target="_blank">{ref}</a>'
            text, html = f"{text} ({link})", f"{html} ({ref})"
        display({"text/plain": text, "text/html": f"{html}</small>"}, raw=True)


def line(kind: str, text: str) -> None:
    """Display ``kind: text`` as one small line; a warning's label is coloured, not red."""
    label = (f'<b style="color:#b8860b">{kind}:</b>' if kind == "warning"
             else f'<span style="color:#666">{kind}:</span>')
    display({"text/plain": f"{kind}: {text}",
             "text/html": f"<small>{label} {escape(text)}</small>"}, raw=True)


def _report(prog: Program) -> None:
    probes = ", ".join(prog.attached) or "no probes"
    parts = [f"{prog.name}: attached {probes}"]
    if prog.maps:
        parts.append(f"maps: {', '.join(prog.maps)}")
    if len(prog.events):
        parts.append(f"events: {', '.join(prog.events)}")
    if len(prog.iter):
        parts.append(f"iterators: {', '.join(prog.iter)}")
    if prog.unattached:
        parts.append(f"not attached: {', '.join(prog.unattached)}")
    parts.append(f"backend: {prog.backend}")
    print("; ".join(parts))


class CostNote:
    """A line under a cell's report that shows, ``delay`` seconds after the program started,
    what it costs if that is at least ``cpu_pct`` percent of a CPU.

    The line is a display updated in place (by its display id), so it appears in the cell
    that started the program whichever cell runs by then; nothing is printed into other
    cells. Its timer thread ends after that one check, or at :meth:`cancel` (the cell run
    again, the program stopped, the extension unloaded).
    """

    def __init__(self, prog: Program, delay: float, cpu_pct: float) -> None:
        self.prog = prog
        self.cpu_pct = cpu_pct
        self.shown = ""
        self.handle = display({"text/plain": ""}, raw=True, display_id=True)
        self._timer = threading.Timer(delay, self.check)
        self._timer.daemon = True
        self._timer.name = f"ebpf_magic-cost-{prog.name}"
        self._timer.start()

    def check(self) -> str:
        """Show the program's cost now if it is costly; returns the line shown ("" if none)."""
        if not self.prog.running:
            return ""
        try:
            df = self.prog.overhead
        except (BPFError, OSError):  # stopped meanwhile
            return ""
        if not overhead.costly(df, self.cpu_pct):
            return ""
        text = f"{overhead.describe(self.prog.name, df)} (see {self.prog.name}.overhead)"
        self.shown = text
        if self.handle is not None:
            self.handle.update({"text/plain": f"cost: {text}",
                                "text/html": f'<small><b style="color:#b8860b">cost:</b> '
                                             f"{escape(text)}</small>"}, raw=True)
        return text

    def cancel(self) -> None:
        """Stop the timer (the check, if running, finishes first)."""
        self._timer.cancel()
        if self._timer is not threading.current_thread():
            self._timer.join(timeout=5)


def watch_cost(magics: MagicsState, prog: Program) -> CostNote | None:
    """Start ``prog``'s :class:`CostNote` (after ``magics.cost_after`` seconds; none when
    that is 0, or in a terminal), replacing any earlier one of that name; where the kernel
    does not count runs, say once per session how to make it."""
    cancel_cost(magics, prog.name)
    # a terminal prints an update where the cursor is: only front ends that update a
    # display in place (notebooks) get the note
    if magics.cost_after <= 0 or type(magics.shell.display_pub) is DisplayPublisher:
        return None
    status = runstats.status()
    if not status.counting:
        if "run statistics" not in magics.warned:
            magics.warned.add("run statistics")
            line("note", "what cells cost is not shown: BPF run statistics are "
                 f"{status.detail}. {status.hint}")
        return None
    note = CostNote(prog, magics.cost_after, magics.costly_cpu_pct)
    magics.cost_notes[prog.name] = note
    return note


def cancel_cost(magics: MagicsState, name: str | None = None) -> None:
    """Cancel the cost note of program ``name`` (every one without a name)."""
    for key in [name] if name is not None else list(magics.cost_notes):
        note = magics.cost_notes.pop(key, None)
        if note is not None:
            note.cancel()
