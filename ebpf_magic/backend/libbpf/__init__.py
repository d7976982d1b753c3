"""The libbpf backend: CO-RE C compiled by clang, loaded and attached by the system's libbpf.

Kernel types come from the running kernel's BTF (a generated ``vmlinux.h``),
and libbpf relocates every ``BPF_CORE_READ`` to the kernel's true layout, so
kernel structs read right without kernel headers. The cell is libbpf-style C:
``SEC("tracepoint/...")`` programs, maps in ``SEC(".maps")`` (or the legacy
``struct bpf_map_def SEC("maps")``, rewritten), ``bpf_perf_event_output``
and ring buffers (see :mod:`._compile` for what is added to the source).

Probes attach with libbpf's own attach functions: a program's SEC() name is
attached by ``bpf_program__attach`` exactly as libbpf-based tools do, and
each attachment is a ``struct bpf_link`` this program owns and destroys.
libbpf, not attaching by descriptor, because it also owns what some programs
need at attach time: USDT argument specs, the BTF targets of ``tp_btf``,
``fentry`` and ``lsm`` programs, and the SEC() grammar itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ebpf_magic import backend as registry
from ebpf_magic.backend.base import (
    GLOBALS,
    ITERATORS,
    LOAD_OPTIONS,
    STRUCT_READS,
    Backend,
    Diagnostic,
    Offer,
)
from ebpf_magic.backend.libbpf import _mapsizes
from ebpf_magic.backend.libbpf._attach import LibbpfLink
from ebpf_magic.backend.libbpf._host import PACKAGES, available, compiler_version, describe, version
from ebpf_magic.backend.libbpf._program import FLAGS_ZERO_WARNING, V3, LibbpfProgram
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import host as kernel
from ebpf_magic.probes import Probe

__all__ = ["BACKEND", "FLAGS_ZERO_WARNING", "OFFERS", "PACKAGES", "V3", "LibbpfBackend",
           "LibbpfLink", "LibbpfProgram", "available", "compiler_version", "describe",
           "diagnostics", "version"]

# what it gives that a cell may need (see Backend.offer)
OFFERS = {
    STRUCT_READS: Offer("the libbpf backend's CO-RE reads (BPF_CORE_READ) are relocated to "
                        "this kernel's BTF and are right",
                        "read kernel structs in libbpf-style cells (SEC() names and "
                        "BPF_CORE_READ, or --backend libbpf)"),
    GLOBALS: Offer("libbpf-style programs set const volatile globals before load",
                   "write the program in libbpf's style (SEC() names, --backend libbpf) with "
                   "const volatile ... {name};"),
    ITERATORS: Offer("libbpf-style programs attach BPF iterators (SEC(\"iter/TARGET\"))",
                     'write the iterator as SEC("iter/TARGET") in libbpf\'s style '
                     "(--backend libbpf)"),
    LOAD_OPTIONS: Offer("libbpf-style programs choose the programs they load and set map "
                        "attributes before load",
                        "only libbpf-style programs (SEC() names, --backend libbpf) take "
                        "--programs and --map"),
}



def diagnostics() -> dict[str, Callable[[], Diagnostic]]:
    """This backend's checks: clang, libbpf, the ``vmlinux.h`` cache, libbpf-style cells."""
    return {"clang": _check_clang, "libbpf": _check_libbpf,
            "vmlinux.h cache": _check_vmlinux_cache, "libbpf-style cells": _check_cells}


def _check_clang() -> Diagnostic:
    if compiler_version() is None:
        return Diagnostic("clang", "warn", "not installed: libbpf-style cells cannot be compiled",
                          PACKAGES)
    return Diagnostic("clang", "ok", describe()["clang"] + " (compiles libbpf-style cells)")


def _check_libbpf() -> Diagnostic:
    try:
        version()
    except Exception:  # noqa: BLE001 - any failure means it cannot be loaded
        return Diagnostic("libbpf", "warn", "the system's libbpf cannot be loaded: libbpf-style "
                          "cells cannot be loaded", PACKAGES)
    return Diagnostic("libbpf", "ok", describe()["libbpf"] + " (loads and attaches libbpf-style "
                      "cells)")


def _check_vmlinux_cache() -> Diagnostic:
    if not kernel.btf_available():
        return Diagnostic("vmlinux.h cache", "not checked", "needs BTF (see its row above)")
    return Diagnostic("vmlinux.h cache", "ok", "the kernel's types for libbpf-style cells, "
                      f"generated from its BTF: {describe()['vmlinux.h']}")


def _check_cells() -> Diagnostic:
    ok, why = available()
    if ok:
        return Diagnostic("libbpf-style cells", "ok", "served by the libbpf backend (SEC() "
                          "programs, maps in SEC(\".maps\"), libbpf-tools and libbpf-bootstrap "
                          "style)")
    return Diagnostic("libbpf-style cells", "warn", f"no backend: {why}", PACKAGES)


# libbpf's dialect: SEC() names and its headers (blanks, not \s, before the #: \s would match
# newlines and make a search quadratic in blank lines)
_DIALECT = re.compile(r"\bSEC\s*\(|^[ \t]*#[ \t]*include[ \t]*[<\"](?:bpf/|vmlinux\.h)", re.M)


class LibbpfBackend(Backend):
    """CO-RE C compiled by clang against the kernel's BTF, loaded through libbpf.so.1."""

    name = "libbpf"

    def claims(self, source: str) -> bool:
        return bool(_DIALECT.search(source))

    def available(self) -> tuple[bool, str]:
        return available()

    def version(self) -> str:
        return version()

    def host_facts(self) -> dict[str, str | None]:
        return {"libbpf": registry.version("libbpf"), "clang": compiler_version()}

    def compile(self, source: str, *, cflags: list[str],
                usdt: list[Probe],  # noqa: ARG002 - attach() attaches them, nothing at load
                filename: str, line_offset: int, globals: Mapping[str, Any],
                programs: Sequence[str] | None = None,
                maps: Mapping[str, Mapping[str, int]] | None = None) -> LibbpfProgram:
        return LibbpfProgram(source, cflags=cflags, filename=filename,
                             line_offset=line_offset, globals=globals, programs=programs,
                             maps=maps)

    def check_load_options(self, programs: Sequence[str] | None,
                           maps: Mapping[str, Mapping[str, Any]] | None) -> None:
        """Programs are named after compiling; map attributes are checked here."""
        _mapsizes.check(maps or {})
        if programs is not None and not programs:
            raise BPFError("--programs names no program", "Name at least one: --programs f,g")

    def diagnostics(self) -> dict[str, Callable[[], Diagnostic]]:
        return diagnostics()

    def offer(self, need: str) -> Offer | None:
        return OFFERS.get(need)

    def install_hint(self) -> str:
        return PACKAGES


BACKEND = LibbpfBackend()
