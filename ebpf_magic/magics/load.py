"""``%bpf load PATH NAME``: replay a recording as program NAME."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError

from .. import replay

USAGE = "%bpf load PATH NAME"
HELP = ("Replay the recording at PATH as program NAME: its events and map snapshots read like "
        "a live program's (.events, .maps, .browse(), plots); needs no BPF rights.")


def run(magics, args: str):
    words = shlex.split(args)
    if len(words) != 2 or not words[1].isidentifier():
        raise UsageError(f"usage: {USAGE} (NAME a Python identifier)")
    path, name = words
    prog = magics.session.start(name, lambda: replay.load(path, name))
    magics.shell.user_ns[name] = prog
    print(replay.announce(prog))
    return None
