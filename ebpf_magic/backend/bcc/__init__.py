"""The BCC backend: the only package that touches BCC.

BCC compiles and loads in a worker process (:mod:`.worker`, driven by
:mod:`.client`), so nothing typed into a cell can end the notebook's process.
This process receives program and map descriptors and attaches them itself
(:mod:`.program`). Symbolization of user-space addresses stays in-process: it
compiles nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ebpf_magic import backend as registry
from ebpf_magic.backend.base import GLOBALS, STRUCT_READS, Backend, Diagnostic
from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc.client import prestart
from ebpf_magic.backend.bcc.diagnostics import format_diagnostics
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.backend.bcc.program import BccProgram, named_probes
from ebpf_magic.errors import BCCNotFoundError, BPFError
from ebpf_magic.internal import cache
from ebpf_magic.kernel import host as kernel
from ebpf_magic.probes import Probe

__all__ = ["BACKEND", "BccProgram", "diagnostics", "format_diagnostics", "location",
           "named_probes", "prestart", "symbolize_user", "version"]

# BCC's dialect: its table macros, probe macros and method-call helpers
_DIALECT = re.compile(r"\bBPF_(?:HASH|ARRAY|HISTOGRAM|PERF_OUTPUT|RINGBUF_OUTPUT|STACK_TRACE|"
                      r"PERCPU_\w+|PROG_ARRAY|QUEUE|STACK|LPM_TRIE|TABLE|DEVMAP|CPUMAP|"
                      r"XSKMAP|SOCKMAP|SOCKHASH|CGROUP_\w+|SK_STORAGE|TASK_STORAGE)\s*\(|"
                      r"\b(?:TRACEPOINT_PROBE|RAW_TRACEPOINT_PROBE|KFUNC_PROBE|KRETFUNC_PROBE|"
                      r"LSM_PROBE)\s*\(|\.\s*(?:perf_submit|ringbuf_output|ringbuf_reserve|"
                      r"increment|lookup_or_try_init)\s*\(")


def version() -> str:
    """The version of the BCC Python package in use; raises BCCNotFoundError without one."""
    return str(getattr(import_bcc(), "__version__", "unknown"))


def location() -> str:
    """The directory BCC's Python package was imported from."""
    return str(Path(import_bcc().__file__).parent)


def diagnostics() -> dict[str, Callable[[], Diagnostic]]:
    """This backend's checks: BCC's package, kernel headers, its dialect, kernel struct reads."""
    return {"BCC": _check_package, "kernel headers": _check_headers,
            "BCC dialect cells": _check_dialect, "kernel struct reads": _check_kernel_structs}


def _check_package() -> Diagnostic:
    try:
        return Diagnostic("BCC", "ok", f"BCC {version()} from {location()}")
    except BCCNotFoundError as e:
        return Diagnostic("BCC", "fail", e.message, e.hint)


def _check_headers() -> Diagnostic:
    try:
        found = headers.ensure()
    except OSError as e:
        return Diagnostic("kernel headers", "fail", f"could not prepare kernel headers: {e}",
                          f"Make {cache.cache_dir()} writable, or set EBPF_MAGIC_CACHE to a "
                          "writable directory.")
    if found.path is None:
        return Diagnostic("kernel headers", "fail", f"no kernel headers for {kernel.release()}: "
                          "BCC cannot compile programs", headers.install_hint())
    if found.source == headers.BTF_SOURCE:
        return Diagnostic("kernel headers", "warn", found.btf_note, headers.install_hint())
    if not found.exact:
        detail = found.warning + (f" The kernel's own types (BTF) are not used: "
                                  f"{found.why_not_btf}." if found.why_not_btf else "")
        return Diagnostic("kernel headers", "warn", detail, headers.install_hint())
    return Diagnostic("kernel headers", "ok", f"{found.source}: {found.path}")


def _check_dialect() -> Diagnostic:
    try:
        version()
    except BPFError as e:
        return Diagnostic("BCC dialect cells", "fail",
                          f"no backend: BCC is missing ({e.message.splitlines()[0]})",
                          "Install BCC (see the BCC row)" + _or_other_dialect() + ".")
    return Diagnostic("BCC dialect cells", "ok", "served by the BCC backend (BPF_HASH, "
                      "TRACEPOINT_PROBE, .perf_submit(), BCC's tools)")


def _or_other_dialect() -> str:
    others = [name for name in registry.BACKENDS if name != BACKEND.name]
    return f", or write the cell for the {' or '.join(others)} backend" if others else ""


def _check_kernel_structs() -> Diagnostic:
    """Which backend reads kernel structs right, given the headers BCC compiles against."""
    found = headers.ensure()
    other = registry.alternative(STRUCT_READS, BACKEND.name)
    right = other is not None and other.available
    if found.path is not None and found.exact:
        bcc = ("BCC compiles against this kernel's own types, from its BTF" if
               found.source == headers.BTF_SOURCE else
               f"BCC compiles against this kernel's headers ({found.source})")
        detail = f"both backends: {bcc}" + (f", and {other.offer.does}" if right else "")
        return Diagnostic("kernel struct reads", "ok", detail)
    have = (f"compiles against {found.release} headers" if found.path is not None else
            "has no headers at all")
    if right:
        return Diagnostic("kernel struct reads", "warn", f"{other.name} backend: BCC {have}, not "
                          f"this kernel's ({kernel.release()}), so BCC's reads of kernel structs "
                          f"(task_struct, sock, ...) can be wrong; {other.offer.does}",
                          f"{other.offer.how[0].upper()}{other.offer.how[1:]}, or install this "
                          "kernel's headers.")
    cannot = f", and the {other.name} backend cannot run ({other.why_not})" if other else ""
    return Diagnostic("kernel struct reads", "warn", f"no backend reads them right: BCC {have}, "
                      f"not this kernel's ({kernel.release()}), so its reads of kernel structs "
                      f"can be wrong{cannot}",
                      (f"{other.install} " if other else "") + headers.install_hint())


def symbolize_user(pid: int, addrs: list[int]) -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown)."""
    bcc = import_bcc()
    names = []
    for addr in addrs:
        name = bcc.BPF.sym(addr, pid).decode("utf-8", "replace")
        names.append(None if name == "[unknown]" else name)
    return names


class BccBackend(Backend):
    """BCC's dialect, compiled and loaded in a worker process."""

    name = "bcc"
    out_of_process = True

    def claims(self, source: str) -> bool:
        return bool(_DIALECT.search(source))

    def available(self) -> tuple[bool, str]:
        try:
            version()
        except BPFError as e:
            return False, e.message
        return True, ""

    def version(self) -> str:
        return version()

    def host_facts(self) -> dict[str, str | None]:
        return {"bcc": registry.version("bcc")}

    def compile(self, source: str, *, cflags: list[str], usdt: list[Probe], filename: str,
                line_offset: int,
                globals: Mapping[str, Any],  # noqa: ARG002 - none: BCC takes -D macros
                programs: Sequence[str] | None = None,  # noqa: ARG002 - no load options
                maps: Mapping[str, Mapping[str, int]] | None = None,  # noqa: ARG002 - likewise
                ) -> BccProgram:
        return BccProgram(source, cflags=cflags, usdt=usdt, filename=filename,
                          line_offset=line_offset)

    def check_globals(self, names: list[str]) -> None:
        """BCC programs have no settable globals: they take ``-D`` macros instead."""
        if names:
            first = names[0]
            other = registry.alternative(GLOBALS, self.name)
            raise BPFError(f"cannot set {', '.join(names)}: BCC programs have no settable "
                           "globals; they take -D instead",
                           f"Write -D {first}=VALUE (Program(defines={{'{first}': VALUE}})) and "
                           f"use {first} as a macro in the C source" +
                           (f", or {other.offer.how.format(name=first)}" if other else "."))

    def named_probes(self, functions: list[str]) -> list:
        return named_probes(functions)

    def symbolize_user(self, pid: int, addrs: list[int]) -> list[str | None]:
        return symbolize_user(pid, addrs)

    def diagnostics(self) -> dict[str, Callable[[], Diagnostic]]:
        return diagnostics()

    def prestart(self) -> None:
        prestart()

    def header_tree(self) -> Path | None:
        """The running kernel's headers, or the tree of its BTF types BCC compiles against
        where they are missing; None where only another release's headers exist."""
        return headers.matching_tree()


BACKEND = BccBackend()
