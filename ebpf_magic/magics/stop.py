"""``%bpf stop NAME...`` / ``%bpf stop --all``: detach and unload programs."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError

USAGE = "%bpf stop NAME [NAME ...] | --all"
HELP = "Detach and unload the named programs (or all); their maps and streams are released."


def run(magics, args: str) -> None:
    names = shlex.split(args)
    if names == ["--all"]:
        stopped = magics.session.stop_all()
    elif names and "--all" not in names:
        unknown = [n for n in names if n not in magics.session.programs]
        if unknown:
            raise UsageError(f"no program named {', '.join(unknown)}; running: "
                             f"{', '.join(magics.session.programs) or 'none'}")
        stopped = [n for n in names if magics.session.stop(n)]
    else:
        raise UsageError(f"usage: {USAGE}")
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
