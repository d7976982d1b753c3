"""``%%bpf NAME [options]``: compile the cell, attach it, bind the program to NAME."""

from __future__ import annotations

import argparse
import shlex
import sys

from IPython.core.error import UsageError

from .. import recording, replay
from ..probes import USAGE as PROBE_USAGE
from ..program import Program
from ..source import interpolate


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"%%bpf: {message}\n{self.format_usage()}")


PARSER = _Parser(prog="%%bpf", add_help=False,
                 description="Compile the cell's BPF C with BCC, attach it, and bind the "
                             "running program to NAME in the notebook.")
PARSER.add_argument("name", metavar="NAME", help="Python name the program is bound to")
PARSER.add_argument("-a", "--attach", action="append", default=[], metavar="SPEC[=FUNCTION]",
                    help="attach FUNCTION (or the one unattached C function) to a probe in "
                         "bpftrace syntax; repeatable")
PARSER.add_argument("-p", "--pid", type=int, help="restrict uprobes and USDT probes to PID")
PARSER.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME[=VALUE]",
                    help="define a C macro; repeatable")
PARSER.add_argument("--cflags", default="", metavar="FLAGS",
                    help="extra compiler flags, quoted: --cflags '-Wno-unused -DX=1'")
PARSER.add_argument("--raw", action="store_true",
                    help="no {var}/$var interpolation of Python variables")
PARSER.add_argument("--max-rows", type=int, metavar="N",
                    help="events each stream keeps (oldest are dropped and counted)")
PARSER.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
PARSER.add_argument("--backend", choices=("bcc", "libbpf"),
                    help="compile with BCC or with clang and libbpf (CO-RE); by default chosen "
                         "from the cell: SEC() or libbpf's headers mean libbpf")
PARSER.add_argument("--record", nargs="?", const=1.0, type=float, metavar="EVERY",
                    help="record this program: snapshot its maps every EVERY seconds "
                         "(default 1) and let `%%bpf save NAME` refresh recordings/NAME.bpfrec")

DOC = f"""Compile and attach BPF C from a cell, or manage programs.

Cell mode::

    %%bpf NAME [options]
    <BPF C in BCC's dialect>

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

Python variables: {{var}} and $var in the cell are replaced by the value of the
notebook variable var (also {{obj.attr}}), only when that variable exists, so
C braces are left alone. To keep a literal {{name}} or $name although a
variable of that name exists, double it: {{{{name}}}} or $$name. --raw turns
interpolation off.

Where BPF cannot be loaded (no rights, no BCC, not Linux, or EBPF_MAGIC_REPLAY=1),
the cell replays recordings/NAME.bpfrec (folder: $EBPF_MAGIC_RECORDINGS) and
says which recording it replays; `%bpf save NAME` refreshes that file after a
live run with --record (or EBPF_MAGIC_RECORD=1).

Re-running a cell with the same NAME stops the old program first. A cell
that fails leaves nothing attached. The program object gives:
    NAME.maps["m"].df        a map as a DataFrame (also NAME.maps["m"][key])
    NAME.events["e"].df      events submitted to a perf or ring buffer
    NAME.stop()              detach and unload
"""


def parse(line: str):
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"%%bpf: {e}") from None
    args = PARSER.parse_args(words)
    if not args.name.isidentifier():
        raise UsageError(f"%%bpf: NAME must be a Python identifier, got {args.name!r}")
    return args


def run(magics, line: str, cell: str) -> None:
    """Start the cell's program; bind it to NAME in the user namespace."""
    args = parse(line)
    shell = magics.shell
    live, why = replay.can_run_live()
    # Replay recordings/NAME.bpfrec instead, and say so. Without a recording, running
    # live gives the precise error (missing rights or BCC) with its fix, unless replay
    # was asked for.
    if not live and (replay.find_recording(args.name) or why.startswith("replay was")):
        prog = magics.session.start(args.name, lambda: replay.replay_cell(args.name, why))
        shell.user_ns[args.name] = prog
        print(replay.announce(prog, why))
        return
    text = cell if args.raw else interpolate(cell, shell.user_ns)
    stream_options = {"max_rows": args.max_rows} if args.max_rows else {}
    cflags = shlex.split(args.cflags)

    def factory() -> Program:
        return Program(text, name=args.name, attach=args.attach, cflags=cflags,
                       defines=args.defines, pid=args.pid, stream_options=stream_options,
                       line_offset=1, backend=args.backend)

    prog = magics.session.start(args.name, factory)
    shell.user_ns[args.name] = prog
    if args.record is not None:
        recording.mark(prog, args.record)
    for warning in prog.warnings:
        if warning not in magics.warned:
            magics.warned.add(warning)
            print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        _report(prog)


def _report(prog: Program) -> None:
    probes = ", ".join(prog.attached) or "no probes"
    parts = [f"{prog.name}: attached {probes}"]
    if prog.maps:
        parts.append(f"maps: {', '.join(prog.maps)}")
    if len(prog.events):
        parts.append(f"events: {', '.join(prog.events)}")
    if prog.unattached:
        parts.append(f"not attached: {', '.join(prog.unattached)}")
    parts.append(f"backend: {prog.backend}")
    print("; ".join(parts))
