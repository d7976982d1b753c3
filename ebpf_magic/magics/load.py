"""``%bpf load NAME [PATH]``: replay a recording as program NAME (the mirror of ``%bpf save``)."""

from __future__ import annotations

from pathlib import Path

from IPython.core.error import UsageError

from ebpf_magic import sessions, tools
from ebpf_magic.internal import deprecation
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState

USAGE = "%bpf load NAME [PATH]"
HELP = ("Replay the recording at PATH (by default recordings/NAME.bpfrec, what %bpf save NAME "
        "writes) as program NAME: its events and map snapshots read like a live program's "
        "(.events, .maps, .browse(), plots); needs no BPF rights.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("name", metavar="NAME")
PARSER.add_argument("path", nargs="?", metavar="PATH")


def name_and_path(first: str, second: str | None) -> tuple[str, str | None]:
    """NAME and PATH from the line's words; the order before (``PATH NAME``) is read, with a
    warning, where it is plain which word is the path."""
    if second is None:
        return first, None
    if first.isidentifier() and not (second.isidentifier() and Path(first).exists()
                                     and not Path(second).exists()):
        return first, second
    if second.isidentifier():
        deprecation.renamed("%bpf load PATH NAME", f"%bpf load {second} PATH (NAME first, "
                            "as in %bpf save)", stacklevel=4)
        return second, first
    raise UsageError(f"usage: {USAGE} (NAME a Python identifier)")


def run(magics: MagicsState, args: str) -> None:
    opts = PARSER.parse(args)
    name, path = name_and_path(opts.name, opts.path)
    if not name.isidentifier():
        raise UsageError(f"usage: {USAGE} (NAME a Python identifier)")
    if path is None:
        path = sessions.find_recording(name)
        if path is None:
            raise UsageError(f"%bpf load {name}: there is no recording "
                             f"{sessions.recordings_dir() / (name + sessions.SUFFIX)}; "
                             f"name the file: {USAGE}")
    prog = magics.session.start(name, lambda: tools.replayed(sessions.load(path, name)))
    magics.shell.user_ns[name] = prog
    print(sessions.announce(prog.program if isinstance(prog, tools.ToolRun) else prog))
    return None
