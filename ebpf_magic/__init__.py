"""ebpf_magic: explore a live Linux kernel with eBPF from Jupyter and Python."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ebpf_magic.errors import (
    AttachError,
    BCCNotFoundError,
    BPFError,
    CompileError,
    HeadersMissingError,
    NotPrivilegedError,
    ProbeSpecError,
    VerifierError,
)
from ebpf_magic.internal import deprecation

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

# Imported on first use, so that light entry points (the kernel launcher, the
# command line) start without numpy and pandas.
_LAZY = {"Program": "program", "stop_all": "program", "Probe": "probes",
         "is_live": "sessions", "load": "sessions", "save": "sessions"}
_SUBPACKAGES = {"bpftrace"}  # ebpf_magic.bpftrace.run(...) without importing it first

__all__ = [
    "AttachError", "BCCNotFoundError", "BPFError", "CompileError", "HeadersMissingError",
    "NotPrivilegedError", "Probe", "ProbeSpecError", "Program", "VerifierError",
    "is_live", "load", "load_ipython_extension", "save", "stop_all",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    if name == "live":  # the name is_live had before, kept for one release
        deprecation.renamed("ebpf_magic.live()", "ebpf_magic.is_live()")
        return __getattr__("is_live")
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBPACKAGES)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext ebpf_magic``: register ``%%bpf`` and ``%bpf``."""
    from ebpf_magic.backend import prestart
    from ebpf_magic.kernel import runstats
    from ebpf_magic.kernel.host import has_bpf_rights
    from ebpf_magic.magics import register

    runstats.acquire(take=False)  # hold the descriptor a launcher passed on, not inherited on
    register(ipython)
    if has_bpf_rights():
        prestart()  # the compiler imports while the user types the first cell


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext ebpf_magic``: stop every program the magics started."""
    from ebpf_magic.magics import unregister

    unregister(ipython)
