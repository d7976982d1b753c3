"""Ready-made investigations: the classic BPF performance tools as one-line calls.

    from ebpf_magic import tools
    run = tools.runqlat(per_process=True)   # running: a ProgramView (.maps, .events, .save())
    run.df                                  # its table: tidy, typed, units in column names
    run.plot()                              # its picture
    run.stop()

Every tool is a :class:`Tool` declaration made with the public API (C source, options,
tables, plot: see :mod:`.tool`); :func:`register` adds one of your own, which
``%bpf tool NAME`` then runs like the others. :func:`listing` says what each answers,
the probes it needs, and whether this kernel has them.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

import pandas as pd

from ebpf_magic.api import ProgramView
from ebpf_magic.errors import BPFError
from ebpf_magic.tools.tool import (
    META_TABLE,
    Option,
    Reading,
    Tool,
    ToolRun,
    Variant,
    from_recording,
    probe_available,
)

# the tools that come with ebpf_magic: a module of ebpf_magic.tools.builtin each
BUILTIN = (
    "execsnoop", "exitsnoop", "opensnoop", "statsnoop", "syscount", "killsnoop", "runqlat",
    "runqlen", "cpudist", "offcputime", "profile", "wakeuptime", "biolatency", "biosnoop",
    "bitesize", "tcplife", "tcpconnect", "tcpaccept", "tcpstates", "tcpretrans", "oomkill",
    "hardirqs", "softirqs", "mountsnoop", "bindsnoop",
)

__all__ = ["BUILTIN", "Option", "Reading", "Tool", "ToolRun", "Variant", "get", "listing",
           "load", "names", "probe_available", "register", "replayed", "unregister",
           *BUILTIN]

_registered: dict[str, Tool] = {}
_lock = threading.Lock()


def register(tool: Tool, replace: bool = False) -> Tool:
    """Make ``tool`` known by its name (``%bpf tool NAME``, :func:`get`, :func:`load`).

    A name already known is refused unless ``replace``; returns ``tool``.
    """
    with _lock:
        if not replace and (tool.name in _registered or tool.name in BUILTIN):
            raise BPFError(f"a tool named {tool.name!r} is already known",
                           "Give yours another name, or register(tool, replace=True).")
        _registered[tool.name] = tool
    return tool


def unregister(name: str) -> None:
    """Forget a registered tool (built-in ones stay); KeyError if none has that name."""
    with _lock:
        if name not in _registered:
            raise KeyError(f"no registered tool named {name!r}")
        del _registered[name]


def get(name: str) -> Tool:
    """The tool called ``name``; KeyError naming the known ones for any other name."""
    with _lock:
        found = _registered.get(name)
    if found is not None:
        return found
    if name in BUILTIN:
        return importlib.import_module(f"{__name__}.builtin.{name}").TOOL
    raise KeyError(f"no tool named {name!r}; tools: {', '.join(names())}")


def names() -> list[str]:
    """Every known tool: the built-in ones, then those registered."""
    with _lock:
        return list(BUILTIN) + [n for n in _registered if n not in BUILTIN]


def listing() -> pd.DataFrame:
    """One row per tool: what it answers, the probes it needs, and whether this kernel
    has them (``available``; ``variant``: the one chosen, or what is missing)."""
    return pd.DataFrame([get(n).summary() for n in names()],
                        columns=["tool", "answers", "probes", "available", "variant"])


def load(path: str | os.PathLike, name: str | None = None) -> ToolRun:
    """A recording of a tool's run, replayed: its tables and picture as they were.

    BPFError when the recording is not a tool's (load it with :func:`ebpf_magic.load`).
    """
    from ebpf_magic import sessions

    run = replayed(sessions.load(path, name))
    if not isinstance(run, ToolRun):
        raise BPFError(f"{path} is the recording of a program, not of a tool",
                       "Load it with ebpf_magic.load(PATH).")
    return run


def replayed(program: ProgramView) -> ProgramView:
    """A replayed program as the :class:`ToolRun` it was recorded from, if a tool's; else
    the program itself."""
    meta = program.tables.get(META_TABLE)
    wanted = [str(t) for t in meta["tool"]] if meta is not None and "tool" in meta else []
    run = from_recording(program, {n: get(n) for n in wanted if n in names()})
    return program if run is None else run


def __getattr__(name: str) -> Any:
    """``tools.runqlat``...: each tool's start function, with its options as arguments."""
    if name in BUILTIN:
        function = get(name).function()
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(BUILTIN))
