"""The BCC backend: the only package that touches BCC.

BCC compiles and loads in a worker process (:mod:`.worker`, driven by
:mod:`.client`), so nothing typed into a cell can end the notebook's process.
This process receives program and map descriptors and attaches them itself
(:mod:`.program`). Symbolization of user-space addresses stays in-process: it
compiles nothing.
"""

from __future__ import annotations

from pathlib import Path

from .client import prestart
from .diagnostics import format_diagnostics
from .locate import import_bcc
from .program import BccProgram, named_probes

__all__ = ["BccProgram", "format_diagnostics", "location", "named_probes", "prestart",
           "symbolize_user", "version"]


def version() -> str:
    """The version of the BCC Python package in use; raises BCCNotFoundError without one."""
    return str(getattr(import_bcc(), "__version__", "unknown"))


def location() -> str:
    """The directory BCC's Python package was imported from."""
    return str(Path(import_bcc().__file__).parent)


def symbolize_user(pid: int, addrs: list[int]) -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown)."""
    bcc = import_bcc()
    names = []
    for addr in addrs:
        name = bcc.BPF.sym(addr, pid).decode("utf-8", "replace")
        names.append(None if name == "[unknown]" else name)
    return names
