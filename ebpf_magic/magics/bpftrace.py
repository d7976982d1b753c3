"""``%%bpftrace NAME [options] [PARAM ...]``: run the cell with bpftrace, bind it to NAME.

``%bpftrace NAME --file PATH`` (line mode) runs a program file, such as a shipped ``.bt`` tool.
"""

from __future__ import annotations

import argparse
import keyword
from pathlib import Path
from typing import NoReturn

from IPython.core.error import UsageError

from ebpf_magic import sessions
from ebpf_magic.bpftrace import BpftraceProgram
from ebpf_magic.bpftrace.diagnose import can_run
from ebpf_magic.bpftrace.process import check_env
from ebpf_magic.errors import OptionError
from ebpf_magic.magics.cell import (
    MAX_ROWS,
    PID_MAX,
    Interrupted,
    MagicsState,
    clip,
    renamed_options,
    report_warnings,
    seconds,
    split_line,
    whole_number,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%%bpftrace: {clip(message, 300)}\n{self.format_usage()}")


def _setting(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    try:
        check_env({name: value} if eq else {"": ""})
    except OptionError as e:
        raise argparse.ArgumentTypeError(f"{e.message} (got {clip(text)!r})") from None
    return name, value


PARSER = _Parser(prog="%%bpftrace", add_help=False,
                 description="Run the cell's bpftrace program in the background and bind it to "
                             "NAME: its maps read as DataFrames while it runs, its printf "
                             "lines and printed maps stream into event frames.")
PARSER.add_argument("name", metavar="NAME", help="Python name the program is bound to")
PARSER.add_argument("params", nargs="*", metavar="PARAM",
                    help="positional parameters: $1, $2... in the program")
PARSER.add_argument("-p", "--pid", type=whole_number(1, PID_MAX),
                    help="bpftrace -p: limit uprobes and USDT probes to PID; the program ends "
                         "when PID exits")
PARSER.add_argument("-c", "--command", metavar="CMD",
                    help="run CMD (quoted) with the program, as this kernel's user: held until "
                         "every probe is attached, probes limited to it as with -p, `cpid` is "
                         "its pid, the program ends when it exits, its output is "
                         "NAME.events['command']")
PARSER.add_argument("-f", "--file", metavar="PATH",
                    help="run the program in PATH (a .bt tool, e.g. /usr/sbin/opensnoop.bt) "
                         "instead of the cell's text")
PARSER.add_argument("--unsafe", action="store_true",
                    help="allow bpftrace's unsafe builtins (system(), signal()...); they run "
                         "with this kernel's rights")
PARSER.add_argument("--env", dest="settings", action="append", default=[], type=_setting,
                    metavar="BPFTRACE_X=VALUE",
                    help="one of bpftrace's settings, e.g. --env BPFTRACE_MAP_KEYS_MAX=100000; "
                         "repeatable")
PARSER.add_argument("--max-rows", type=whole_number(1, MAX_ROWS), metavar="N",
                    help="rows each output stream keeps (oldest are dropped and counted); by "
                         "default %%config BPFMagics.max_rows")
PARSER.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
PARSER.add_argument("--record", nargs="?", const=1.0, type=seconds, metavar="EVERY",
                    help="record this program: snapshot its maps every EVERY seconds "
                         "(default 1) and let `%%bpf save NAME` refresh recordings/NAME.bpfrec")
PARSER.add_argument("--targets", metavar="TARGETS",
                    help="run the program on engines of an ipyparallel cluster instead: 'all', "
                         "engine ids (0,2) or host names; NAME's frames join every host's rows")
PARSER.add_argument("--profile", metavar="PROFILE",
                    help="the cluster's ipyparallel profile, with --targets")

# options' names before they were named as the Python functions' arguments (one release)
RENAMED = {"--on": "--targets", "--cluster": "--profile"}

DOC = f"""Run a bpftrace program in the background from a cell.

    %%bpftrace NAME [options] [PARAM ...]
    <bpftrace program>

    %bpftrace NAME --file PATH [options] [PARAM ...]      (a program file: a .bt tool)

{PARSER.format_help()}
Examples:

    %%bpftrace opens
    tracepoint:syscalls:sys_enter_openat {{ @[comm, pid] = count(); }}

    opens.maps["@"].df              comm (str), pid (int), count, one row per key
    opens.maps["@"].df.nlargest(5, "count")

    %%bpftrace lat
    tracepoint:syscalls:sys_enter_read {{ @s[tid] = nsecs; }}
    tracepoint:syscalls:sys_exit_read /@s[tid]/ {{ @ns = hist(nsecs - @s[tid]); delete(@s[tid]); }}

    print(lat.maps["@ns"].hist())   bpftrace's bars; .hist().plot() draws them

    %%bpftrace tick 100
    tracepoint:syscalls:sys_enter_write /args->count > $1/ {{ @w = count(); }}
    interval:s:1 {{ print(@w); clear(@w); }}

    tick.events["@w"].df            one row per second: time, count

The program object gives:
    NAME.maps["@m"].df       a map now: one typed column per key part (named after the key
                             expression), then count/sum/min/max/avg, or count, average,
                             total for stats(), or buckets for hist()/lhist(); stacks as lists
    NAME.maps["@m"].hist()   a hist()/lhist() map as a Histogram (print it, .plot() it)
    NAME.events["printf"]    printf lines: time, text, one typed column per argument
    NAME.events["@m"]        each print(@m) of the program, with its time
    NAME.stop()              stop bpftrace as Ctrl-C would

bpftrace runs as this kernel's user with this kernel's capabilities and no more (see
docs/privileges.md); the cell's text is not interpolated ($x is bpftrace's own variable):
pass values as PARAMs ($1, $2). Re-running a cell with the same NAME stops the old
program first; %bpf list, %bpf stop NAME and %bpf save NAME treat it like a %%bpf program.
Where bpftrace cannot run (no rights, not installed, EBPF_MAGIC_REPLAY=1), the cell replays
recordings/NAME.bpfrec.
"""


def parse(line: str) -> argparse.Namespace:
    """The options of a ``%%bpftrace`` line, every value checked; UsageError for a bad one."""
    words = split_line(line, "%%bpftrace", "pass long lists in a program file (--file)")
    args = PARSER.parse_intermixed_args(renamed_options(words, "%%bpftrace", RENAMED))
    if not args.name.isidentifier() or keyword.iskeyword(args.name):
        raise UsageError(f"%%bpftrace: NAME must be a Python identifier and not a keyword, "
                         f"got {clip(args.name)!r}")
    if args.pid is not None and args.command is not None:
        raise UsageError("%%bpftrace: give -p PID or -c CMD, not both")
    return args


def _program_text(args: argparse.Namespace, cell: str | None) -> tuple[str, int]:
    """The program and the line offset of its errors: the file's, or the cell's."""
    if args.file is None:
        if cell is None:
            raise UsageError("%bpftrace runs a program file: %bpftrace NAME --file PATH; "
                             "for a program in the cell, use %%bpftrace NAME")
        return cell, 1
    if cell is not None and any(ln.strip() and not ln.strip().startswith("//")
                                for ln in cell.splitlines()):
        raise UsageError("%%bpftrace: --file runs the file's program; the cell may hold "
                         "// comments only")
    try:
        return Path(args.file).read_text(), 0
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"%%bpftrace: cannot read {clip(args.file)}: {e}") from None


def run(magics: MagicsState, line: str, cell: str | None) -> None:
    """Start the cell's program; bind it to NAME in the user namespace."""
    args = parse(line)
    shell = magics.shell
    text, offset = _program_text(args, cell)
    options = {"pid": args.pid, "command": args.command, "params": args.params,
               "unsafe": args.unsafe, "env": dict(args.settings),
               "stream_options": {"max_rows": args.max_rows or magics.max_rows},
               "line_offset": offset}
    if args.targets is not None or args.profile is not None:
        _run_on_cluster(magics, args, text, options)
        return
    live, why = can_run()
    if not live and (sessions.find_recording(args.name) or why.startswith("replay was")):
        prog = magics.session.start(args.name, lambda: sessions.replay_cell(args.name, why))
        shell.user_ns[args.name] = prog
        report_warnings(magics.warned, prog.warnings, prog.notes)  # as the live run showed
        print(sessions.announce(prog, why))
        return
    try:
        prog = magics.session.start(args.name, lambda: BpftraceProgram(text, name=args.name,
                                                                        **options))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: bpftrace was stopped, nothing is attached") from None
    shell.user_ns[args.name] = prog
    if args.record is not None:
        sessions.mark(prog, args.record)
    report_warnings(magics.warned, prog.warnings)
    if not args.quiet:
        print(prog.report())


def _run_on_cluster(magics: MagicsState, args: argparse.Namespace, text: str,
                    options: dict) -> None:
    """Start the program on the cluster's engines (this process needs no BPF rights)."""
    from ebpf_magic.cluster import run as run_on_cluster

    if args.record is not None:
        raise UsageError("%%bpftrace: --record is for programs on this host; save a cluster "
                         f"program with {args.name}.save(PATH)")
    try:
        prog = magics.session.start(args.name, lambda: run_on_cluster(
            text, name=args.name, profile=args.profile, targets=args.targets, frontend="bpftrace",
            **options))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: each engine stops what it started") from None
    magics.shell.user_ns[args.name] = prog
    if not args.quiet:
        print(prog.report())
