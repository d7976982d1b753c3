"""``%bpf stop NAME...`` / ``%bpf stop --all``: detach and unload programs."""

from __future__ import annotations

from IPython.core.error import UsageError

from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState, cancel_cost

USAGE = "%bpf stop NAME [NAME ...] | --all"
HELP = ("Detach and unload the named programs (with --all: the session's and every other "
        "program running in this process); their maps and streams are released.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("names", nargs="*", metavar="NAME")
PARSER.add_argument("--all", action="store_true")


def run(magics: MagicsState, args: str) -> None:
    opts = PARSER.parse(args)
    if opts.all and not opts.names:
        cancel_cost(magics)
        stopped = magics.session.stop_everything()
    elif opts.names and not opts.all:
        unknown = [n for n in opts.names if n not in magics.session.programs]
        if unknown:
            raise UsageError(f"no program named {', '.join(unknown)}; running: "
                             f"{', '.join(magics.session.programs) or 'none'}")
        for name in opts.names:
            cancel_cost(magics, name)
        stopped = [n for n in opts.names if magics.session.stop(n)]
    else:
        raise UsageError(f"usage: {USAGE}")
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
