"""What every backend gives the rest of the package, and what a backend is.

A :class:`Backend` compiles, loads and attaches; what it hands back is plain data: map
handles (:class:`MapHandle`: descriptor, kind, numpy dtypes, display hint), global
variables (:class:`GlobalVar`), and a :class:`CompiledProgram` that reports its implied
probes, maps, event streams and loss counters and owns every descriptor and link.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes
from ebpf_magic.kernel import mapkinds, sysbpf
from ebpf_magic.probes import Probe
from ebpf_magic.suggest import near


class Note(str):
    """A backend's note or warning: its text (``str(note)``), with a ``kind`` and a ``key``.

    ``kind`` says what it is about (:data:`PLAIN`, :data:`KERNEL_HEADERS`...). A note with a
    ``key`` concerns the machine, not the cell: a session shows it once per key, as its
    one-line ``brief`` (default: the text) pointing to the README section ``see``.
    """

    kind: str
    key: str
    brief: str
    see: str

    def __new__(cls, text: str, kind: str = "", key: str = "", brief: str = "",
                see: str = "") -> Note:
        note = super().__new__(cls, text)
        note.kind, note.key, note.brief, note.see = kind or PLAIN, key, brief or text, see
        return note

    def __reduce__(self) -> tuple:
        return (Note, (str(self), self.kind, self.key, self.brief, self.see))


# kinds of notes
PLAIN = "plain"  # about the cell, shown with every cell that has it
KERNEL_HEADERS = "kernel headers"  # the compiler reads another release's kernel headers


def as_note(text: str) -> Note:
    """``text`` as a :class:`Note`: itself if it is one, else a plain note."""
    return text if isinstance(text, Note) else Note(text)


@dataclass
class MapHandle:
    """A map of a loaded program: its descriptor and the layout of its data.

    ``kind`` is the kernel's map type name (``hash``, ``percpu_array``,
    ``ringbuf``...; its traits are :func:`ebpf_magic.kernel.mapkinds.kind`);
    ``declared`` is how the source declared it when that adds meaning the kernel
    type lacks (``histogram``). ``value_dtype`` describes one value (for per-CPU
    maps: one CPU's value); ``key_dtype`` is None for keyless maps (``keyless``:
    queue, stack, ring buffer...) and where the layout is unknown. ``id`` is the
    kernel's id of the map (0 where none); ``hist_kind`` is how a histogram the
    source declares is bucketed (``log2`` or ``linear``; "" for other maps).
    ``backend`` names the backend that made the map. A backend sets every field
    when it makes the handle.
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
    backend: str = ""
    id: int = 0
    hist_kind: str = ""
    keyless: bool = False

    @classmethod
    def of_kernel_map(cls, name: str, fd: int, key_dtype: np.dtype | None,
                      value_dtype: np.dtype | None, *, backend: str, declared: str = "",
                      hist_kind: str = "") -> MapHandle:
        """The handle of map ``fd`` as the kernel describes it (kind, sizes, id, keyless).

        ``key_dtype`` is dropped for keyless kinds, whatever the backend found.
        """
        info = sysbpf.map_info(fd)
        keyless = mapkinds.kind(info.kind).keyless
        return cls(name=name, fd=fd, kind=info.kind, key_dtype=None if keyless else key_dtype,
                   value_dtype=value_dtype, max_entries=info.max_entries,
                   key_size=info.key_size, value_size=info.value_size, declared=declared,
                   backend=backend, id=info.id, hist_kind=hist_kind, keyless=keyless)


@dataclass
class GlobalVar:
    """A global variable of a program: where its bytes live and their layout.

    ``section`` is its data section (``.rodata``, ``.data``, ``.bss``, or a named one such
    as ``.data.stats``); that section's map, descriptor ``fd`` (-1 before load), holds it at
    ``offset`` in its one value. ``c_type`` is its C declaration (``const volatile int``).
    """

    name: str
    section: str
    offset: int
    dtype: np.dtype
    c_type: str
    fd: int = -1

    @property
    def writable(self) -> bool:
        """False for ``.rodata``, which the kernel freezes at load."""
        return not self.section.startswith(".rodata")


@dataclass
class IterHandle:
    """An attached BPF iterator program: reading ``link`` runs it once.

    ``target`` is what it iterates (``task``, ``tcp``, ``bpf_map_elem``...);
    ``record_dtype`` is the fixed-size record its ``bpf_seq_write`` calls write, or
    None where it writes text (``BPF_SEQ_PRINTF``).
    """

    name: str
    target: str
    link: Any  # an ebpf_magic.kernel.link.IterLink
    record_dtype: np.dtype | None


def encode_globals(values: Mapping[str, Any],
                   variables: list[GlobalVar]) -> list[tuple[GlobalVar, bytes]]:
    """Each of ``values`` as the bytes of its variable, for writing before load.

    Raises :class:`~ebpf_magic.errors.BPFError` for a name the program does not declare
    (listing those it does, nearest first) or a value that does not fit its type.
    """
    by_name = {v.name: v for v in variables}
    out = []
    for name, value in values.items():
        var = by_name.get(name)
        if var is None:
            close = near(str(name), list(by_name))
            listed = close + sorted(set(by_name) - set(close))
            raise BPFError(f"no global variable {name!r} in the program",
                           f"Its globals: {', '.join(listed)}." if listed else
                           "It declares none; e.g. const volatile int target_pid = 0;")
        out.append((var, encode_value(var, value)))
    return out


def encode_value(var: GlobalVar, value: Any) -> bytes:
    """``value`` as the bytes of ``var``; BPFError if it does not fit the variable's type.

    A struct's fields that a dict leaves out are zero.
    """
    dt = var.dtype
    plain_int = dt.kind in "iu" and dt.subdtype is None and not dt.names
    if plain_int and not dtypes.enum_names(dt) and (isinstance(value, bool) or
                                                     not isinstance(value, (int, np.integer))):
        raise BPFError(f"cannot set {var.name} ({var.c_type}) to {value!r}: it takes a whole "
                       "number", f"e.g. {var.name}=123")
    if dtypes.is_char_array(dt) and isinstance(value, str) and len(value.encode()) > dt.itemsize:
        raise BPFError(f"cannot set {var.name} ({var.c_type}) to {value!r}: longer than its "
                       f"{dt.itemsize} bytes", "Give a shorter string, or make the array longer.")
    try:
        return dtypes.encode(value, dt).tobytes()
    except (ValueError, TypeError, OverflowError) as e:
        raise BPFError(f"cannot set {var.name} ({var.c_type}) to {value!r}: {e}",
                       f"{var.name} is {dtypes.describe(dt)}.") from None


class CompiledProgram(abc.ABC):
    """A compiled and loaded BPF object. ``close()`` releases everything it holds."""

    functions: list[str]
    log: str  # what the compiler printed
    # what the user should know (e.g. inexact kernel headers), as text or :class:`Note`
    warnings: list[str]
    # what the backend assumed or changed (e.g. a license it added), as text or :class:`Note`
    notes: list[str] = []

    def load(self, probes: list[Probe]) -> None:  # noqa: B027 - optional, not abstract
        """Load the functions ``probes`` use, once, before maps(), event_dtype() and attach().

        A backend that loads while compiling does nothing here.
        """

    def implied_probes(self) -> list[Probe]:
        """The probes the program's own text implies (e.g. functions named after them)."""
        return []

    def loss_counters(self) -> dict[str, str]:
        """Hidden maps the backend added to count failed submissions, by stream name."""
        return {}

    def hidden_maps(self) -> set[str]:
        """Maps the backend added for its own bookkeeping, which the user never sees."""
        return set(self.loss_counters().values())

    def globals(self) -> list[GlobalVar]:
        """The program's global variables, with the descriptors of their sections' maps."""
        return []

    def iterators(self) -> dict[str, IterHandle]:
        """The program's attached BPF iterators, by function name."""
        return {}

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


@dataclass
class Diagnostic:
    """One finding about what a backend needs here: a row of ``%bpf doctor``.

    ``status`` is ``"ok"``, ``"warn"``, ``"fail"`` or ``"not checked"``; ``fix`` says what to
    do where it is not ok.
    """

    check: str
    status: str
    detail: str
    fix: str = ""


# what a cell may need that one backend gives and another may lack (see Backend.offer)
STRUCT_READS = "kernel struct reads"  # reads of kernel structs relocated to this kernel's layout
GLOBALS = "settable globals"  # global variables set before load
ITERATORS = "BPF iterators"
LOAD_OPTIONS = "load options"  # choosing the programs to load, setting map sizes before load


@dataclass(frozen=True)
class Offer:
    """How a backend gives what a cell needs: ``does`` says what it does, in words (for a
    doctor row); ``how`` says what to write to get it (for a hint)."""

    does: str
    how: str


class Backend(abc.ABC):
    """One way of turning a cell's C into loaded programs; the registry holds one of each.

    ``name`` is what ``--backend`` takes; ``out_of_process`` says the backend compiles and
    loads in another process, which Ctrl-C may stop at once (one that loads in this
    process must not be interrupted half-way: what it loaded would have no owner).
    """

    name: str
    out_of_process: bool = False

    @abc.abstractmethod
    def claims(self, source: str) -> bool:
        """Whether ``source`` is written in this backend's dialect."""

    @abc.abstractmethod
    def available(self) -> tuple[bool, str]:
        """Whether this backend can run here, and why not."""

    @abc.abstractmethod
    def version(self) -> str:
        """The version of what it runs on; raises :class:`~ebpf_magic.errors.BPFError` if
        that is missing."""

    @abc.abstractmethod
    def host_facts(self) -> dict[str, str | None]:
        """The versions a recording of one of its programs names (None where unknown)."""

    @abc.abstractmethod
    def compile(self, source: str, *, cflags: list[str], usdt: list[Probe], filename: str,
                line_offset: int, globals: Mapping[str, Any],
                programs: Sequence[str] | None = None,
                maps: Mapping[str, Mapping[str, int]] | None = None) -> CompiledProgram:
        """Compile and load ``source``; errors name lines as ``filename, line N``.

        ``programs`` names the functions to load (default: the backend chooses);
        ``maps`` sets map attributes before load (see :meth:`check_load_options`).
        """

    @abc.abstractmethod
    def diagnostics(self) -> dict[str, Callable[[], Diagnostic]]:
        """Its checks of its prerequisites, by the name of the doctor row each returns."""

    def check_globals(self, names: list[str]) -> None:  # noqa: B027 - optional
        """Raise :class:`~ebpf_magic.errors.BPFError` if globals ``names`` cannot be set."""

    def check_load_options(self, programs: Sequence[str] | None,  # noqa: B027 - optional
                           maps: Mapping[str, Mapping[str, Any]] | None) -> None:
        """Raise :class:`~ebpf_magic.errors.BPFError` if the programs it loads (``programs``)
        or the map attributes set before load (``maps``) are wrong; only a backend that
        offers :data:`LOAD_OPTIONS` is asked."""

    def named_probes(self, functions: list[str]) -> list[Probe]:  # noqa: ARG002 - none here
        """The probes its naming conventions give ``functions``, known before compiling."""
        return []

    def symbolize_user(self, pid: int, addrs: list[int]) -> list[str | None]:
        """Function names of user-space addresses in process ``pid`` (None where unknown)."""
        from ebpf_magic.kernel import symbols

        return symbols.symbolize_user(pid, addrs)

    def prestart(self) -> None:  # noqa: B027 - optional
        """Start its compiler now, so the first program does not wait for it."""

    def offer(self, need: str) -> Offer | None:  # noqa: ARG002 - offers nothing here
        """How this backend gives ``need`` (:data:`STRUCT_READS`...), or None if it cannot."""
        return None

    def header_tree(self) -> Path | None:
        """A directory of C headers declaring this kernel's own types (``include/``,
        ``arch/``), as another compiler may read them (bpftrace's ``#include``), or None
        where this backend has none that match the running kernel."""
        return None

    def install_hint(self) -> str:
        """What to install for this backend to run here, in words ("" if nothing)."""
        return ""
