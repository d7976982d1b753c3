"""ebpf_magic: explore a live Linux kernel with eBPF from Jupyter and Python."""

from __future__ import annotations

from .errors import (
    AttachError,
    BCCNotFoundError,
    BPFError,
    CompileError,
    HeadersMissingError,
    NotPrivilegedError,
    ProbeSpecError,
    VerifierError,
)
from .probes import Probe
from .program import Program, stop_all
from .replay import live as live
from .replay import load as load

__all__ = [
    "AttachError", "BCCNotFoundError", "BPFError", "CompileError", "HeadersMissingError",
    "NotPrivilegedError", "Probe", "ProbeSpecError", "Program", "VerifierError",
    "load_ipython_extension", "stop_all", "unload_ipython_extension",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext ebpf_magic``: register ``%%bpf`` and ``%bpf``."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext ebpf_magic``: stop every program the magics started."""
    from .magics import unregister

    unregister(ipython)
