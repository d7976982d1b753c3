"""Compiler backends: turn C source into loaded, attached programs.

A backend compiles, loads and attaches; it hands the rest of the package
plain descriptions (:class:`MapHandle`) with file descriptors and numpy dtypes.
Maps, streams, widgets and recordings work from those alone, so they never see
a backend's own types. BCC is the backend today (:mod:`.bcc`); it compiles in a worker process.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from ..probes import Probe


@dataclass
class MapHandle:
    """A map of a loaded program: its descriptor and the layout of its data.

    ``kind`` is the kernel's map type name (``hash``, ``percpu_array``,
    ``ringbuf``...); ``declared`` is how the source declared it when that adds
    meaning the kernel type lacks (``histogram``). ``value_dtype`` describes one
    value (for per-CPU maps: one CPU's value); ``key_dtype`` is None for maps
    without keys (queue, stack, ring buffer).
    """

    name: str
    fd: int
    kind: str
    key_dtype: np.dtype | None
    value_dtype: np.dtype | None
    max_entries: int
    key_size: int
    value_size: int
    declared: str = ""
    extra: dict = field(default_factory=dict)


class CompiledProgram(abc.ABC):
    """A compiled and loaded BPF object. ``close()`` releases everything it holds."""

    functions: list[str]
    log: str  # what the compiler printed
    warnings: list[str]  # what the user should know (e.g. inexact kernel headers)

    def load(self, probes: list[Probe]) -> None:  # noqa: B027 - optional, not abstract
        """Load the functions ``probes`` use, once, before maps(), event_dtype() and attach().

        A backend that loads while compiling does nothing here.
        """

    @abc.abstractmethod
    def maps(self) -> dict[str, MapHandle]:
        """Every map the program declares, by name."""

    @abc.abstractmethod
    def event_dtype(self, map_name: str) -> np.dtype | None:
        """The record layout submitted to a perf or ring buffer, if the backend knows it."""

    @abc.abstractmethod
    def attach(self, probe: Probe) -> list[str]:
        """Attach ``probe`` (bound to a function); return what was attached, for display.

        Raises :class:`~ebpf_magic.errors.AttachError` with the kernel's reason.
        """

    @abc.abstractmethod
    def program_fds(self) -> dict[str, int]:
        """Descriptors of the loaded functions, by name."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Detach every probe, keeping programs and maps open so buffers can be drained.

        Safe to call twice; after it no probe of this program fires.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Detach every probe and close every descriptor. Safe to call twice."""


def compile_program(source: str, *, cflags: list[str], usdt: list[Probe],
                    filename: str = "cell", line_offset: int = 0) -> CompiledProgram:
    """Compile and load ``source`` with the default backend (BCC).

    Compile errors name lines as ``filename, line N`` with ``line_offset`` added.
    """
    from .bcc import BccProgram

    return BccProgram(source, cflags=cflags, usdt=usdt, filename=filename,
                      line_offset=line_offset)


def prestart() -> None:
    """Start the default backend's compiler now, so the first program does not wait for it."""
    from .bcc import prestart as start

    start()
