"""``%bpf tool NAME [options]``: run a ready-made tool, bound to a name; ``%bpf tool list``."""

from __future__ import annotations

import shlex

import pandas as pd
from IPython.core.error import UsageError

from ebpf_magic import sessions, tools
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import Interrupted, MagicsState, clip, report_warnings, seconds

USAGE = "%bpf tool list | %bpf tool NAME [--name VAR] [--record [EVERY]] [-q] [OPTIONS]"
HELP = ("Run a ready-made tool (execsnoop, opensnoop, syscount, runqlat, offcputime, profile, "
        "biolatency, tcplife...) and bind it to VAR (default: NAME), with the life cycle of a "
        "%%bpf cell: VAR.df is its table, VAR.plot() its picture, VAR.stop() ends it. "
        "`%bpf tool list`: what each answers, the probes it needs, whether this kernel has "
        "them; `%bpf tool NAME --help`: its options.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("tool", metavar="NAME")
PARSER.add_argument("options", nargs="*", metavar="OPTIONS")


def run(magics: MagicsState, args: str) -> pd.DataFrame | None:
    words = shlex.split(args)
    if not words:
        raise UsageError(f"usage: {USAGE}")
    if words[0] == "list":
        if len(words) > 1:
            extra = clip(" ".join(words[1:]))
            raise UsageError(f"%bpf tool list takes no arguments, got {extra!r}")
        return tools.listing()
    try:
        tool = tools.get(words[0])
    except KeyError as e:
        raise UsageError(f"%bpf tool: {e.args[0]}") from None
    if {"-h", "--help"} & set(words[1:]):
        print(tool.help())
        return None
    p = tool.parser()
    p.add_argument("--record", nargs="?", const=1.0, type=seconds, metavar="EVERY",
                   help="record it: snapshot its maps every EVERY seconds (default 1), so "
                        "`%bpf save VAR` refreshes recordings/VAR.bpfrec")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    opts = vars(p.parse_args(words[1:]))
    name = opts.pop("name") or tool.name
    record, quiet = opts.pop("record"), opts.pop("quiet")
    if not name.isidentifier():
        raise UsageError(f"%bpf tool: --name wants a Python identifier, got {clip(name)!r}")
    values = tool.check_options(opts)  # before anything running under that name is stopped
    shell = magics.shell
    live, why = sessions.can_run_live("", "libbpf")
    if not live and (sessions.find_recording(name) or why.startswith("replay was")):
        prog = magics.session.start(name, lambda: tools.replayed(
            sessions.replay_cell(name, why)))
        shell.user_ns[name] = prog
        report_warnings(magics.warned, prog.warnings, prog.notes)  # as the live run showed
        print(sessions.announce(prog.program if isinstance(prog, tools.ToolRun) else prog,
                                why))
        return None
    try:
        started = magics.session.start(name, lambda: tool.start(name, **values))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was attached") from None
    shell.user_ns[name] = started
    if record is not None:
        sessions.mark(started, record)
    report_warnings(magics.warned, started.warnings, started.notes)
    if not quiet:
        shown = ", ".join(f"{k}={v}" for k, v in values.items() if v not in (None, False))
        print(f"{name}: {tool.name}({shown}) attached {len(started.attached)} probe(s); "
              f"{name}.df is its table, {name}.plot() its picture, {name}.stop() ends it")
    return None


def completions(word: str, before: list[str]) -> list[str]:
    """What ``%bpf tool`` offers next: tool names (and ``list``), then the tool's options."""
    if len(before) == 1:
        return ["list", *tools.names()]
    try:
        tool = tools.get(before[1])
    except KeyError:
        return []
    if word.startswith("-"):
        return [f for o in tool.parser()._actions for f in o.option_strings] + [
            "--record", "--quiet", "--help"]
    return []
