"""Compiler backends: turn C source into loaded, attached programs.

A backend compiles, loads and attaches; it hands the rest of the package
plain descriptions (:class:`MapHandle`) with file descriptors and numpy dtypes.
Maps, streams, widgets and recordings work from those alone, so they never see
a backend's own types. Two backends: BCC (:mod:`.bcc`, its dialect, compiled in a worker
process) and libbpf (:mod:`.libbpf`, CO-RE C compiled by clang against the kernel's BTF);
:func:`choose_backend` picks one from the cell's dialect.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes
from ebpf_magic.probes import Probe
from ebpf_magic.suggest import near


@dataclass
class MapHandle:
    """A map of a loaded program: its descriptor and the layout of its data.

    ``kind`` is the kernel's map type name (``hash``, ``percpu_array``,
    ``ringbuf``...); ``declared`` is how the source declared it when that adds
    meaning the kernel type lacks (``histogram``). ``value_dtype`` describes one
    value (for per-CPU maps: one CPU's value); ``key_dtype`` is None for maps
    without keys (queue, stack, ring buffer). ``backend`` names the backend
    that made the map, where it says.
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
    backend: str = ""


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
    warnings: list[str]  # what the user should know (e.g. inexact kernel headers)
    notes: list[str] = []  # what the backend assumed or changed (e.g. a license it added)

    def load(self, probes: list[Probe]) -> None:  # noqa: B027 - optional, not abstract
        """Load the functions ``probes`` use, once, before maps(), event_dtype() and attach().

        A backend that loads while compiling does nothing here.
        """

    def implied_probes(self) -> list[Probe]:
        """The probes the program's own text implies (BCC: ``kprobe__FUNC``; libbpf: SEC())."""
        return []

    def loss_counters(self) -> dict[str, str]:
        """Hidden maps the backend added to count failed submissions, by stream name."""
        return {}

    def hidden_maps(self) -> set[str]:
        """Maps the backend added for its own bookkeeping, which the user never sees."""
        return set(self.loss_counters().values())

    def histogram_kinds(self) -> dict[str, str]:
        """``{map: "log2" | "linear"}`` for maps the source declares as histograms."""
        return {}

    def globals(self) -> list[GlobalVar]:
        """The program's global variables, with the descriptors of their sections' maps."""
        return []

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


BACKENDS = ("bcc", "libbpf")
# BCC's dialect: its table macros, probe macros and method-call helpers
_BCC_DIALECT = re.compile(r"\bBPF_(?:HASH|ARRAY|HISTOGRAM|PERF_OUTPUT|RINGBUF_OUTPUT|STACK_TRACE|"
                          r"PERCPU_\w+|PROG_ARRAY|QUEUE|STACK|LPM_TRIE|TABLE|DEVMAP|CPUMAP|"
                          r"XSKMAP|SOCKMAP|SOCKHASH|CGROUP_\w+|SK_STORAGE|TASK_STORAGE)\s*\(|"
                          r"\b(?:TRACEPOINT_PROBE|RAW_TRACEPOINT_PROBE|KFUNC_PROBE|KRETFUNC_PROBE|"
                          r"LSM_PROBE)\s*\(|\.\s*(?:perf_submit|ringbuf_output|ringbuf_reserve|"
                          r"increment|lookup_or_try_init)\s*\(")
# libbpf's: SEC() names and its headers
_LIBBPF_DIALECT = re.compile(r"\bSEC\s*\(|^\s*#\s*include\s*[<\"](?:bpf/|vmlinux\.h)", re.M)


def choose_backend(source: str, backend: str | None = None) -> str:
    """The backend for ``source``: ``backend`` if given, else by the cell's dialect.

    BCC's macros mean BCC; otherwise ``SEC(`` or libbpf's headers mean libbpf;
    anything else goes to BCC.
    """
    if backend is not None:
        if backend not in BACKENDS:
            raise BPFError(f"unknown backend {backend!r}",
                           f"Backends: {', '.join(BACKENDS)}.")
        return backend
    if _BCC_DIALECT.search(source):
        return "bcc"
    return "libbpf" if _LIBBPF_DIALECT.search(source) else "bcc"


def compile_program(source: str, *, cflags: list[str], usdt: list[Probe],
                    filename: str = "cell", line_offset: int = 0,
                    backend: str | None = None,
                    globals: Mapping[str, Any] | None = None) -> CompiledProgram:
    """Compile and load ``source`` with ``backend`` (default: :func:`choose_backend`).

    Compile errors name lines as ``filename, line N`` with ``line_offset`` added.
    ``globals`` are initial values of global variables (libbpf only; see
    :func:`check_globals`).
    """
    chosen = choose_backend(source, backend)
    check_globals(chosen, globals or {})
    if chosen == "libbpf":
        from ebpf_magic.backend.libbpf import LibbpfProgram

        return LibbpfProgram(source, cflags=cflags, usdt=usdt, filename=filename,
                             line_offset=line_offset, globals=globals)
    from ebpf_magic.backend.bcc import BccProgram

    return BccProgram(source, cflags=cflags, usdt=usdt, filename=filename,
                      line_offset=line_offset)


def named_probes(backend: str, functions: list[str]) -> list[Probe]:
    """The probes ``backend``'s naming conventions give ``functions``, known before compiling.

    BCC's ``kprobe__FUNC``-style names; libbpf names none (its probes are in SEC()).
    """
    if backend == "libbpf":
        return []
    from ebpf_magic.backend.bcc import named_probes as named

    return named(functions)


def compiles_out_of_process(backend: str) -> bool:
    """Whether ``backend`` compiles and loads in another process, which Ctrl-C may stop at once.

    A backend that loads in this process must not be interrupted half-way: what it loaded
    would have no owner.
    """
    return backend == "bcc"


def check_globals(backend: str, names: Mapping[str, Any] | list[str]) -> None:
    """Raise :class:`~ebpf_magic.errors.BPFError` if ``backend`` cannot set globals ``names``.

    Only libbpf programs have settable globals; BCC programs take ``-D`` macros instead.
    """
    if names and backend == "bcc":
        first = next(iter(names))
        raise BPFError(f"cannot set {', '.join(names)}: BCC programs have no settable globals; "
                       "they take -D instead",
                       f"Write -D {first}=VALUE (Program(defines={{'{first}': VALUE}})) and use "
                       f"{first} as a macro in the C source, or write the program in libbpf's "
                       "style (SEC() names, --backend libbpf) with "
                       f"const volatile ... {first};")


def available(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` can run here, and why not."""
    if backend == "libbpf":
        from ebpf_magic.backend import libbpf

        return libbpf.available()
    from ebpf_magic.backend import bcc

    try:
        bcc.version()
    except BPFError as e:
        return False, e.message
    return True, ""


def version(backend: str) -> str | None:
    """The version of what ``backend`` runs on (BCC's, libbpf's), or None where it is missing."""
    try:
        if backend == "libbpf":
            from ebpf_magic.backend import libbpf

            return libbpf.version()
        from ebpf_magic.backend import bcc

        return bcc.version()
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return None


def host_facts(backend: str) -> dict[str, str | None]:
    """The versions a recording of a ``backend`` program names (None where unknown).

    BCC's version for BCC programs; libbpf's and clang's for libbpf programs.
    """
    if backend != "libbpf":
        return {"bcc": version("bcc")}
    from ebpf_magic.backend import libbpf

    return {"libbpf": version("libbpf"), "clang": libbpf.compiler_version()}


def symbolize_user(pid: int, addrs: list[int], backend: str = "") -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown).

    BCC's symbolizer where BCC is present, unless ``backend`` is ``"libbpf"``
    (whose programs need no BCC); else :mod:`ebpf_magic.kernel.symbols`, from the
    process's mappings and the ELF files they map.
    """
    if backend != "libbpf" and available("bcc")[0]:
        from ebpf_magic.backend import bcc

        return bcc.symbolize_user(pid, addrs)
    from ebpf_magic.kernel import symbols

    return symbols.symbolize_user(pid, addrs)


# what the libbpf backend needs installed, for the fixes of rows that miss it
LIBBPF_PACKAGES = "Install them: `apt-get install clang libbpf-dev` (scripts/setup.sh does)."


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


def diagnostics() -> dict[str, Callable[[], Diagnostic]]:
    """Every backend's checks of its prerequisites, by the name of the row each returns."""
    from ebpf_magic.backend import bcc, libbpf

    return {**bcc.diagnostics(), **libbpf.diagnostics()}


def prestart() -> None:
    """Start the default backend's compiler now, so the first program does not wait for it."""
    from ebpf_magic.backend.bcc import prestart as start

    start()
