"""``%bpf load PATH NAME``: replay a recording as program NAME."""

from __future__ import annotations

from IPython.core.error import UsageError

from ebpf_magic import sessions, tools
from ebpf_magic.magics.args import parser

USAGE = "%bpf load PATH NAME"
HELP = ("Replay the recording at PATH as program NAME: its events and map snapshots read like "
        "a live program's (.events, .maps, .browse(), plots); needs no BPF rights.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("path", metavar="PATH")
PARSER.add_argument("name", metavar="NAME")


def run(magics, args: str):
    opts = PARSER.parse(args)
    if not opts.name.isidentifier():
        raise UsageError(f"usage: {USAGE} (NAME a Python identifier)")
    prog = magics.session.start(opts.name, lambda: tools.replayed(
        sessions.load(opts.path, opts.name)))
    magics.shell.user_ns[opts.name] = prog
    print(sessions.announce(prog.program if isinstance(prog, tools.ToolRun) else prog))
    return None
