"""Compiler backends: turn C source into loaded, attached programs.

A backend (:class:`~.base.Backend`) compiles, loads and attaches; it hands the rest of the
package plain descriptions (:mod:`.base`) with file descriptors and numpy dtypes. Maps,
streams, widgets and recordings work from those alone, so they never see a backend's own
types. Two backends: BCC (:mod:`.bcc`, its dialect, compiled in a worker process) and
libbpf (:mod:`.libbpf`, CO-RE C compiled by clang against the kernel's BTF). This module
is the registry: it knows each backend by name and module only, and
:func:`choose_backend` picks one from the cell's dialect.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebpf_magic.backend.base import (
    GLOBALS,
    ITERATORS,
    KERNEL_HEADERS,
    LOAD_OPTIONS,
    PLAIN,
    STRUCT_READS,
    Backend,
    CompiledProgram,
    Diagnostic,
    GlobalVar,
    IterHandle,
    MapHandle,
    Note,
    Offer,
    as_note,
    encode_globals,
    encode_value,
)
from ebpf_magic.errors import BPFError
from ebpf_magic.features import BackendChecks
from ebpf_magic.probes import Probe

__all__ = [
    "BACKENDS", "STRUCT_READS", "GLOBALS", "ITERATORS", "KERNEL_HEADERS", "LOAD_OPTIONS",
    "PLAIN", "Alternative",
    "Backend", "CompiledProgram", "Diagnostic", "GlobalVar", "IterHandle", "MapHandle", "Note",
    "Offer", "alternative", "as_note", "available", "check_globals", "check_load_options",
    "checks", "choose_backend", "compile_program", "compiles_out_of_process", "diagnostics",
    "encode_globals", "encode_value", "get", "header_tree", "host_facts", "named_probes",
    "prestart", "symbolize_user", "version",
]

# Each backend's module, which holds its one instance as ``BACKEND``. A cell in neither
# dialect goes to the first.
_MODULES = {"bcc": "ebpf_magic.backend.bcc", "libbpf": "ebpf_magic.backend.libbpf"}
BACKENDS = tuple(_MODULES)


@functools.cache
def get(name: str) -> Backend:
    """The backend called ``name``; BPFError naming the backends for any other name."""
    if name not in _MODULES:
        raise BPFError(f"unknown backend {name!r}", f"Backends: {', '.join(BACKENDS)}.")
    return importlib.import_module(_MODULES[name]).BACKEND


def choose_backend(source: str, backend: str | None = None) -> str:
    """The backend for ``source``: ``backend`` if given, else the first whose dialect
    ``source`` is written in, else the first backend."""
    if backend is not None:
        return get(backend).name
    return next((n for n in BACKENDS if get(n).claims(source)), BACKENDS[0])


def compile_program(source: str, *, cflags: list[str], usdt: list[Probe],
                    filename: str = "cell", line_offset: int = 0,
                    backend: str | None = None,
                    globals: Mapping[str, Any] | None = None,
                    programs: Sequence[str] | None = None,
                    maps: Mapping[str, Mapping[str, int]] | None = None) -> CompiledProgram:
    """Compile and load ``source`` with ``backend`` (default: :func:`choose_backend`).

    Compile errors name lines as ``filename, line N`` with ``line_offset`` added.
    ``globals`` are initial values of global variables (see :func:`check_globals`);
    ``programs`` and ``maps`` choose the functions loaded and set map attributes
    before load (see :func:`check_load_options`).
    """
    chosen = get(choose_backend(source, backend))
    chosen.check_globals(list(globals or {}))
    check_load_options(chosen.name, programs, maps)
    options: dict[str, Any] = {}
    if programs is not None:
        options["programs"] = list(programs)
    if maps:
        options["maps"] = maps
    return chosen.compile(source, cflags=cflags, usdt=usdt, filename=filename,
                          line_offset=line_offset, globals=globals or {}, **options)


@dataclass(frozen=True)
class Alternative:
    """Another backend that gives what a cell needs: its ``name``, its :class:`Offer`, whether
    it can run here (``available``, else ``why_not``) and what to install for it."""

    name: str
    offer: Offer
    available: bool
    why_not: str
    install: str


def alternative(need: str, instead_of: str) -> Alternative | None:
    """The first backend other than ``instead_of`` that gives ``need`` (:data:`STRUCT_READS`,
    :data:`GLOBALS`, :data:`ITERATORS`), or None; a backend asks this rather than naming
    another."""
    for name in BACKENDS:
        offer = get(name).offer(need) if name != instead_of else None
        if offer is not None:
            ok, why = available(name)
            return Alternative(name, offer, ok, why, get(name).install_hint())
    return None


def header_tree() -> Path | None:
    """Headers declaring the running kernel's types, from the first available backend that
    has them (see :meth:`Backend.header_tree`), or None."""
    for name in BACKENDS:
        if available(name)[0]:
            tree = get(name).header_tree()
            if tree is not None:
                return tree
    return None


def named_probes(backend: str, functions: list[str]) -> list[Probe]:
    """The probes ``backend``'s naming conventions give ``functions``, known before compiling."""
    return get(backend).named_probes(functions)


def compiles_out_of_process(backend: str) -> bool:
    """Whether ``backend`` compiles and loads in another process, which Ctrl-C may stop at once."""
    return get(backend).out_of_process


def check_globals(backend: str, names: Mapping[str, Any] | list[str]) -> None:
    """Raise :class:`~ebpf_magic.errors.BPFError` if ``backend`` cannot set globals ``names``."""
    get(backend).check_globals(list(names))


def check_load_options(backend: str, programs: Sequence[str] | None,
                       maps: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Raise :class:`~ebpf_magic.errors.BPFError` if ``backend`` cannot choose ``programs``
    or set ``maps``' attributes before load."""
    chosen = get(backend)
    if chosen.offer(LOAD_OPTIONS) is None:
        if programs is None and not maps:
            return
        what = "choose which programs to load" if programs is not None else \
            "set map sizes before load"
        other = alternative(LOAD_OPTIONS, chosen.name)
        raise BPFError(f"the {chosen.name} backend cannot {what}",
                       f"{other.offer.how[0].upper()}{other.offer.how[1:]}." if other else "")
    chosen.check_load_options(programs, maps)


def available(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` can run here, and why not."""
    return get(backend).available()


def version(backend: str) -> str | None:
    """The version of what ``backend`` runs on, or None where it is missing."""
    try:
        return get(backend).version()
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return None


def host_facts(backend: str) -> dict[str, str | None]:
    """The versions a recording of a ``backend`` program names (None where unknown)."""
    return get(backend).host_facts()


def symbolize_user(pid: int, addrs: list[int], backend: str = "") -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown).

    The symbolizer of ``backend`` (default: the first) where that backend can run here,
    else :mod:`ebpf_magic.kernel.symbols`, from the process's mappings and ELF files.
    """
    chosen = get(backend or BACKENDS[0])
    if chosen.available()[0]:
        return chosen.symbolize_user(pid, addrs)
    return Backend.symbolize_user(chosen, pid, addrs)


def diagnostics() -> dict[str, Callable[[], Diagnostic]]:
    """Every backend's checks of its prerequisites, by the name of the row each returns."""
    return {name: check for b in BACKENDS for name, check in get(b).diagnostics().items()}


def checks() -> dict[str, BackendChecks]:
    """Every backend's own doctor checks, by backend name: whether it can load programs
    here and its attach probes in its dialect (each backend's ``checks`` module)."""
    return {name: importlib.import_module(f"{_MODULES[name]}.checks") for name in BACKENDS}


def prestart() -> None:
    """Start the default backend's compiler now, so the first program does not wait for it."""
    get(BACKENDS[0]).prestart()
