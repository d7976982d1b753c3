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

import contextlib
import ctypes as ct
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ebpf_magic import backend as registry
from ebpf_magic.backend.base import (
    GLOBALS,
    ITERATORS,
    LOAD_OPTIONS,
    STRUCT_READS,
    Backend,
    CompiledProgram,
    Diagnostic,
    GlobalVar,
    IterHandle,
    MapHandle,
    Offer,
    encode_globals,
)
from ebpf_magic.backend.libbpf import _compile, _lib, _mapsizes, _records, _select, _source
from ebpf_magic.errors import AttachError, BPFError, NotPrivilegedError, VerifierError
from ebpf_magic.kernel import btf, kallsyms, sysbpf, tracefs
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import link as links
from ebpf_magic.kernel.btf.dwarf import dwarf_spec
from ebpf_magic.probes import Probe
from ebpf_magic.suggest import (
    helpers,
    near,
    syscall_tracepoints,
    unknown_helper,
    verifier_excerpt,
    verifier_hint,
)

_EXTERN = re.compile(r"failed to find BTF for extern '(\w+)'")
_PROG_FAILED = re.compile(r"prog '(\w+)': (?:BPF program load failed|failed to load)")
_PERF_EVENT_ARRAY = 4  # enum bpf_map_type
_LIBBPF_OWN = ("__bpf_usdt_",)  # maps <bpf/usdt.bpf.h> declares for libbpf's bookkeeping
_DATA_SECTIONS = (".rodata", ".data", ".bss")  # and named ones: .data.NAME, .rodata.NAME
V3 = "-mcpu=v3"
_VERIFIER_LOG = "-- BEGIN PROG LOAD LOG --"  # libbpf's log has it where the verifier ran
# SEC() hooks attached through BPF trampolines (BTF-typed, refused where trampolines are)
_TRAMPOLINE_HOOKS = {"fentry", "fexit", "fmod_ret", "fentry.s", "fexit.s", "fmod_ret.s", "lsm",
                     "lsm.s", "lsm_cgroup", "freplace"}
_KPROBE_HOOKS = {"kprobe", "kretprobe", "ksyscall", "kretsyscall", "kprobe.multi",
                 "kretprobe.multi"}
_FD_HOOK_HINTS = {"tc": "tc programs need CAP_NET_ADMIN and SEC(\"tc\") (or tcx/ingress, "
                        "tcx/egress).",
                  "socket": "A socket filter is a SEC(\"socket\") program; give the socket's "
                            "fileno().",
                  "iter": "An iterator is a SEC(\"iter/TARGET\") program (task, task_file, tcp, "
                          "udp, bpf_map...)."}
FLAGS_ZERO_WARNING = ("{map}: bpf_perf_event_output(..., 0, ...) with flags 0 writes to the "
                      "buffer of CPU 0 only, so events on other CPUs are lost; pass "
                      "BPF_F_CURRENT_CPU as the flags")
# what this backend needs installed, for the fixes of rows that miss it
PACKAGES = "Install them: `apt-get install clang libbpf-dev` (scripts/setup.sh does)."
# what it gives that a cell may need (see Backend.offer)
OFFERS = {
    STRUCT_READS: Offer("the libbpf backend's CO-RE reads (BPF_CORE_READ) are relocated to this "
                      "kernel's BTF and are right",
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


def available() -> tuple[bool, str]:
    """Whether this backend can run here, and why not."""
    if _compile.clang() is None:
        return False, "clang is not installed (apt-get install clang libbpf-dev)"
    try:
        _lib.lib()
    except _lib.LibbpfMissing as e:
        return False, f"libbpf.so.1 cannot be loaded ({e}); apt-get install libbpf1"
    if not _compile.BTF_PATH.exists():
        return False, "the kernel exposes no BTF (/sys/kernel/btf/vmlinux)"
    return True, ""


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


def version() -> str:
    """The version of the system's libbpf."""
    return _lib.version()


def compiler_version() -> str | None:
    """clang's version (``clang --version``'s first line), or None without clang."""
    cc = _compile.clang()
    return _compile.clang_version(cc) if cc else None


def describe() -> dict[str, str]:
    """What this backend uses here, in words (for the doctor): clang, libbpf, BTF, vmlinux.h."""
    cc = _compile.clang()
    try:
        libbpf = f"libbpf.so.1, version {_lib.version()}"
    except _lib.LibbpfMissing as e:
        libbpf = f"missing ({e}); apt-get install libbpf1"
    cached = _compile.cached_vmlinux()
    return {
        "clang": f"{cc}: {_compile.clang_version(cc)}" if cc else
                 "missing; apt-get install clang libbpf-dev",
        "libbpf": libbpf,
        "kernel BTF": str(_compile.BTF_PATH) if _compile.BTF_PATH.exists() else
                      "missing: the kernel has no CONFIG_DEBUG_INFO_BTF, CO-RE cannot work",
        "vmlinux.h": str(cached) if cached else "not generated yet (the first libbpf cell does)",
    }


class LibbpfLink:
    """One attachment (a ``struct bpf_link``); ``close()`` detaches it and is idempotent."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr = ptr
        self.description = description

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            with _lib.logged():
                _lib.lib().bpf_link__destroy(ptr)


class LibbpfProgram(CompiledProgram):
    """A C source compiled by clang and loaded by libbpf.

    ``usdt`` probes need nothing at load time here: :meth:`attach` attaches
    them with libbpf's USDT support (the C side uses ``<bpf/usdt.bpf.h>``).
    ``globals`` are written into the data sections' initial images between
    opening and loading, so ``const volatile`` variables reach the verifier
    with their values.
    """

    def __init__(self, source: str, *, cflags: list[str], usdt: list[Probe],
                 filename: str = "cell", line_offset: int = 0,
                 globals: Mapping[str, Any] | None = None,
                 programs: Sequence[str] | None = None,
                 maps: Mapping[str, Mapping[str, int]] | None = None) -> None:
        ok, why = available()
        if not ok:
            raise BPFError(f"The libbpf backend cannot run here: {why}.",
                           "Install what is missing (scripts/setup.sh does), or use BCC: "
                           "--backend bcc.")
        if not kernel.has_bpf_rights():
            raise NotPrivilegedError("Not allowed to load BPF programs: " +
                                     kernel.rights_summary(), kernel.rights_hint())
        self._obj: int | None = None
        self._programs: dict[str, int] = {}
        self._sections: dict[str, int] = {}
        self._variables: list[GlobalVar] = []
        self._links: list[LibbpfLink | links.Link] = []
        self._iters: dict[str, tuple[links.Link, str]] = {}
        self._dwarf: btf.Spec | None = None
        self._plan: _select.Plan | None = None
        map_sizes = _mapsizes.check(maps or {})
        self._source = source
        self._records, flags_zero = _source.submissions(source)
        self.warnings = [FLAGS_ZERO_WARNING.format(map=m) for m in dict.fromkeys(flags_zero)]
        tracefs.ensure()
        build = (list(cflags), filename, line_offset, globals or {}, programs, map_sizes)
        try:
            self._build(*build)
        except VerifierError as refused:
            # clang 14's default (v1) code can lose a bounds check the verifier needs; its
            # v3 code (32-bit subregisters, newer clang's default) keeps it, and the reverse
            # happens too. The second try is made only where the verifier read the code (a
            # hook the kernel refuses outright is not about code) and the cell chose no -mcpu.
            if _VERIFIER_LOG not in refused.log or any(f.startswith("-mcpu") for f in cflags):
                raise
            try:
                self._build([*cflags, V3], *build[1:])
            except BPFError:
                raise refused from None
            self.notes.append(f"compiled with {V3}: the verifier refused {refused.function}() "
                              "as clang's default code generation wrote it")

    def _build(self, cflags: list[str], filename: str, line_offset: int,
               globals: Mapping[str, Any], programs: Sequence[str] | None,
               map_sizes: Mapping[str, Mapping[str, int]]) -> None:
        """Compile, then open, choose, size and load until the kernel takes the object.

        A program the kernel refuses is replaced by the next variant of its event, if any
        (see :mod:`._select`); on failure nothing stays open.
        """
        compiled = _compile.compile_cell(self._source, cflags, filename, line_offset)
        self.log = compiled.log
        self.cached = compiled.cached  # from the cache, not compiled now
        self.cut = compiled.cut  # against the part of vmlinux.h it needs
        self._object = compiled.obj
        self._lost_maps = dict(compiled.lost_maps)
        self._markers = dict(compiled.records)
        self._marked: dict[str, list] | None = None
        self._buf = ct.create_string_buffer(compiled.obj, len(compiled.obj))
        kernel_facts = _kernel_facts()
        excluded: dict | None = None
        while True:  # each pass opens the object afresh: libbpf loads an object only once
            self.notes = list(compiled.notes)
            self._open(filename)
            try:
                self._choose(kernel_facts, programs, excluded)
                self._size_maps(map_sizes)
                self._one_slot_per_cpu()
                self._find_variables()
                self._set_initial(globals)
                with _lib.logged() as log:
                    rc = _lib.lib().bpf_object__load(self._obj)
                if not rc:
                    return
                error = _load_failure(-rc, log, self.all_sections, self.functions)
                excluded = self._refused(error)
                if excluded is None:
                    raise error
            except BaseException:
                self.close()
                raise
            self.close()

    def _open(self, filename: str) -> None:
        """Open the compiled object (nothing loaded yet) and list its programs' SEC() names."""
        lib = _lib.lib()
        opts = _lib.ObjectOpenOpts(sz=ct.sizeof(_lib.ObjectOpenOpts),
                                   object_name=filename.encode()[:15])
        with _lib.logged() as log:
            obj = lib.bpf_object__open_mem(self._buf, len(self._object), ct.byref(opts))
            err = _lib.last_errno() if not obj else 0
        if not obj:
            extern = next((m.group(1) for m in map(_EXTERN.search, log) if m), None)
            if extern and near(extern, helpers(), n=1):  # a misspelt helper
                raise BPFError(unknown_helper(extern),
                               "Call one of the kernel's helpers (`man bpf-helpers`) or define "
                               "the function in the cell (static inline).")
            if extern:
                raise BPFError(f"{extern} is used but defined nowhere: not in the cell, not a "
                               "BPF helper, not in libbpf's headers.",
                               "Define it, or include the header that does (a cell without "
                               "#include gets vmlinux.h and libbpf's bpf_helpers.h, "
                               "bpf_tracing.h, bpf_core_read.h and bpf_endian.h).")
            raise BPFError(f"libbpf could not open the compiled object: {_lib.strerror(err)}",
                           "\n".join(log[-8:]))
        self._obj = obj
        self._all: dict[str, int] = {}
        self.all_sections: dict[str, str] = {}
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            self._all[name] = prog
            self.all_sections[name] = lib.bpf_program__section_name(prog).decode()
            prog = lib.bpf_object__next_program(obj, prog)

    def _choose(self, facts: _select.Kernel, explicit: Sequence[str] | None,
                excluded: dict | None) -> None:
        """Load only the planned programs (see :mod:`._select`); say what was chosen."""
        lib = _lib.lib()
        self._plan = plan = _select.plan(self.all_sections, facts, explicit=explicit,
                                         excluded=excluded)
        for name, prog in self._all.items():
            if name not in plan.load:
                lib.bpf_program__set_autoload(prog, False)
            elif self.all_sections[name] in _source.NEWER_SECTIONS:  # unknown to libbpf 1.1
                prog_type, attach_type = _source.NEWER_SECTIONS[self.all_sections[name]]
                lib.bpf_program__set_type(prog, prog_type)
                lib.bpf_program__set_expected_attach_type(prog, attach_type)
        self._programs = {n: self._all[n] for n in plan.load}
        self.sections = {n: self.all_sections[n] for n in plan.load}
        self.functions = list(plan.load)
        self.notes += plan.notes

    def _refused(self, error: BPFError) -> dict | None:
        """The variants to exclude next time, if a refused program has another variant."""
        function = getattr(error, "function", "")
        if not function or self._plan is None:
            return None
        return self._plan.refusing(function, self.all_sections, error.message.split(".")[0])

    def _size_maps(self, requested: Mapping[str, Mapping[str, int]]) -> None:
        """Set map attributes before load: those asked, then defaults (see :mod:`._mapsizes`)."""
        lib = _lib.lib()
        found, decls = {}, []
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            name = lib.bpf_map__name(m).decode()
            if not lib.bpf_map__is_internal(m):
                found[name] = m
                decls.append(_mapsizes.MapDecl(name, lib.bpf_map__type(m), lib.bpf_map__key_size(m),
                                               lib.bpf_map__value_size(m),
                                               lib.bpf_map__max_entries(m)))
            m = lib.bpf_object__next_map(self._obj, m)
        changes, notes = _mapsizes.sizes(decls, requested)
        setters = {"max_entries": lib.bpf_map__set_max_entries,
                   "value_size": lib.bpf_map__set_value_size,
                   "key_size": lib.bpf_map__set_key_size, "map_flags": lib.bpf_map__set_map_flags}
        for name, attrs in changes.items():
            for attr, value in attrs.items():
                with _lib.logged() as log:
                    rc = setters[attr](found[name], value)
                if rc:
                    raise BPFError(f"libbpf could not set {name}.{attr} to {value}: "
                                   f"{_lib.strerror(-rc)}", "\n".join(log[-4:]))
        self.notes += notes

    def _one_slot_per_cpu(self) -> None:
        """Give every perf event array a slot per possible CPU, before loading.

        A CPU without a slot cannot deliver (``bpf_perf_event_output`` fails
        there), and nothing would count what it drops.
        """
        lib, cpus = _lib.lib(), sysbpf.possible_cpus()
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            size = lib.bpf_map__max_entries(m)
            if lib.bpf_map__type(m) == _PERF_EVENT_ARRAY and 0 < size < cpus:
                lib.bpf_map__set_max_entries(m, cpus)
                name = lib.bpf_map__name(m).decode()
                self.notes.append(f"{name}: max_entries {size} raised to {cpus}, one per CPU, "
                                  "so that events on every CPU reach the buffer")
            m = lib.bpf_object__next_map(self._obj, m)

    def _find_variables(self) -> None:
        """The data sections' maps and the variables in them, from the object's BTF.

        Function-local statics (named ``function.variable``, e.g. bpf_printk's format)
        are the compiler's, not the program's globals.
        """
        lib, spec = _lib.lib(), self._btf()
        m = lib.bpf_object__next_map(self._obj, None)
        while m and spec is not None:
            type_id = lib.bpf_map__btf_value_type_id(m)
            sec = spec.type(type_id) if lib.bpf_map__is_internal(m) and type_id else None
            if sec is not None and sec.kind == "datasec" and sec.name.startswith(_DATA_SECTIONS):
                self._sections[sec.name] = m
                for info in sec.secinfo:
                    var = spec.type(info.type)
                    dt = _dtype(spec, var.type, None) if var.kind == "var" else None
                    if dt is not None and "." not in var.name:
                        self._variables.append(GlobalVar(var.name, sec.name, info.offset, dt,
                                                         btf.c_decl(spec, var.type)))
            m = lib.bpf_object__next_map(self._obj, m)

    def _set_initial(self, values: Mapping[str, Any]) -> None:
        """Write ``values`` into their sections' initial images (before load only)."""
        lib = _lib.lib()
        images: dict[str, bytearray] = {}
        for var, raw in encode_globals(values, self._variables):
            if not var.writable and "volatile" not in var.c_type.split():
                self.warnings.append(f"{var.name} is const but not volatile, so clang may have "
                                     "built its initial value into the code and setting it may "
                                     "change nothing; declare it const volatile")
            image = images.get(var.section)
            if image is None:
                size = ct.c_size_t()
                data = lib.bpf_map__initial_value(self._sections[var.section], ct.byref(size))
                if not data:
                    raise BPFError(f"libbpf holds no initial value for {var.section}",
                                   f"{var.name} cannot be set before load.")
                image = images[var.section] = bytearray(ct.string_at(data, size.value))
            image[var.offset:var.offset + len(raw)] = raw
        for section, image in images.items():
            buf = (ct.c_char * len(image)).from_buffer(image)
            with _lib.logged() as log:
                rc = lib.bpf_map__set_initial_value(self._sections[section], buf, len(image))
            if rc:
                raise BPFError(f"libbpf could not set the initial value of {section}: "
                               f"{_lib.strerror(-rc)}", "\n".join(log[-4:]))

    def globals(self) -> list[GlobalVar]:
        """The variables of ``.rodata``, ``.data`` and ``.bss`` (and named data sections)."""
        if self._obj is None:
            return []
        lib = _lib.lib()
        fds = {sec: lib.bpf_map__fd(m) for sec, m in self._sections.items()}
        return [GlobalVar(v.name, v.section, v.offset, v.dtype, v.c_type, fds[v.section])
                for v in self._variables if fds[v.section] >= 0]

    # -- probes ---------------------------------------------------------------

    def implied_probes(self) -> list[Probe]:
        """The probes the programs' SEC() names attach to."""
        probes = (_source.section_probe(sec, fn) for fn, sec in self.sections.items())
        return [p for p in probes if p is not None]

    def loss_counters(self) -> dict[str, str]:
        return dict(self._lost_maps)

    def attach(self, probe: Probe) -> list[str]:
        prog = self._programs.get(probe.function)
        if prog is None:
            raise AttachError(f"no function {probe.function!r} in the program",
                              f"Functions: {', '.join(self.functions)}", probe=str(probe))
        lib = _lib.lib()
        implied = _source.section_probe(self.sections[probe.function], probe.function)
        if probe.kind in ("profile", "software", "hardware"):
            return self._attach_perf_event(probe, prog)
        if probe.kind == "xdp":
            return self._attach_xdp(probe, prog)
        if probe.kind in ("tc", "socket", "iter"):
            return self._attach_by_fd(probe, prog)
        with _lib.logged() as log:
            if probe == implied:
                link = lib.bpf_program__attach(prog)
            elif probe.kind == "tracepoint":
                category, _, name = probe.target.partition(":")
                link = lib.bpf_program__attach_tracepoint(prog, category.encode(), name.encode())
            elif probe.kind == "rawtracepoint":
                link = lib.bpf_program__attach_raw_tracepoint(prog, probe.target.encode())
            elif probe.kind in ("kprobe", "kretprobe"):
                link = lib.bpf_program__attach_kprobe(prog, probe.kind == "kretprobe",
                                                      probe.target.encode())
            elif probe.kind in ("uprobe", "uretprobe"):
                path, _, sym = probe.target.partition(":")
                opts = _lib.UprobeOpts(sz=ct.sizeof(_lib.UprobeOpts),
                                       retprobe=probe.kind == "uretprobe", func_name=sym.encode())
                link = lib.bpf_program__attach_uprobe_opts(
                    prog, probe.pid if probe.pid else -1, _library(path).encode(), 0,
                    ct.byref(opts))
            elif probe.kind == "usdt":
                parts = probe.target.split(":")
                path, provider, name = parts[0], parts[-2] if len(parts) == 3 else "", parts[-1]
                link = lib.bpf_program__attach_usdt(prog, probe.pid if probe.pid else -1,
                                                    _library(path).encode(), provider.encode(),
                                                    name.encode(), None)
            else:
                link = lib.bpf_program__attach(prog)
            err = _lib.last_errno() if not link else 0
        if not link:
            raise self._attach_failure(probe, probe == implied, err, log)
        self._links.append(LibbpfLink(link, str(probe)))
        return [str(probe)]

    def _attach_perf_event(self, probe: Probe, prog: int) -> list[str]:
        """Sampling and counting events: one perf event per CPU, through ebpf_magic.kernel.link."""
        ev_type, config, rate = probe.perf_event
        try:
            attached = links.perf_event(_lib.lib().bpf_program__fd(prog), ev_type, config,
                                        pid=probe.pid or -1, **rate)
        except links.LinkError as e:
            raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})", e.hint,
                              probe=str(probe)) from None
        self._links.append(attached)
        return [str(probe)]

    def _attach_xdp(self, probe: Probe, prog: int) -> list[str]:
        """XDP by BPF link in the mode ``xdp:DEV@skb|drv|hw`` names (libbpf 1.1 takes no mode)."""
        try:
            attached = links.xdp(_lib.lib().bpf_program__fd(prog),
                                 *links.xdp_device(probe.target))
        except links.LinkError as e:
            raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})",
                              e.hint or "XDP needs CAP_NET_ADMIN.", probe=str(probe)) from None
        self._links.append(attached)
        return [str(probe)]

    def _attach_by_fd(self, probe: Probe, prog: int) -> list[str]:
        """tc, socket filters and iterators, through ebpf_magic.kernel.link (libbpf 1.1 has no
        tcx links, and iterators are read by descriptor)."""
        fd = _lib.lib().bpf_program__fd(prog)
        section = self.sections[probe.function]
        try:
            if probe.kind == "tc":
                device, _, direction = probe.target.partition(":")
                direction = direction or _source.tc_direction(section)
                if not direction:
                    raise AttachError(f"cannot attach {probe}: say which direction",
                                      f"-a tc:{device}:ingress or -a tc:{device}:egress",
                                      probe=str(probe))
                attached = links.tc(fd, links.device_index(device), direction,
                                    name=probe.function)
            elif probe.kind == "socket":
                attached = links.socket_filter(fd, int(probe.target))
            else:
                target, _, map_name = probe.target.partition(":")
                map_fd = self._map_fd(map_name, probe) if map_name else None
                attached = links.iterator(fd, target, map_fd=map_fd, pid=probe.pid or 0)
                self._iters[probe.function] = (attached, target)
        except links.LinkError as e:
            raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})",
                              e.hint or _FD_HOOK_HINTS.get(probe.kind, ""),
                              probe=str(probe)) from None
        self._links.append(attached)
        return [str(probe)]

    def _map_fd(self, name: str, probe: Probe) -> int:
        lib = _lib.lib()
        m = lib.bpf_object__next_map(self._obj, None)
        names = []
        while m:
            found = lib.bpf_map__name(m).decode()
            if found == name:
                return lib.bpf_map__fd(m)
            if not lib.bpf_map__is_internal(m):
                names.append(found)
            m = lib.bpf_object__next_map(self._obj, m)
        raise AttachError(f"cannot attach {probe}: no map {name!r} in the program",
                          f"Its maps: {', '.join(near(name, names) or names) or 'none'}.",
                          probe=str(probe))

    def iterators(self) -> dict[str, IterHandle]:
        """The attached iterator programs, with the record type each writes (None: text)."""
        out = {}
        for function, (link, target) in self._iters.items():
            ctype = _source.iterator_record(self._source, function)
            out[function] = IterHandle(function, target, link,
                                       self._c_dtype(ctype) if ctype else None)
        return out

    def _attach_failure(self, probe: Probe, from_section: bool, err: int,
                        log: list[str]) -> AttachError:
        section = self.sections.get(probe.function, "")
        where = f'SEC("{section}") {probe.function}' if from_section else str(probe)
        detail = next((ln.strip() for ln in reversed(log) if ln.strip()), "")
        message = f"cannot attach {where}: {_lib.strerror(err)}" + (
            f" ({detail})" if detail else "")
        hint = ""
        if probe.kind in ("kprobe", "kretprobe") and not kernel.kprobes_supported():
            found = syscall_tracepoints(probe.target, exit=probe.kind == "kretprobe")
            hint = "This kernel is built without kprobes (CONFIG_KPROBES is off)."
            if found:
                category, _, name = found[0].partition(":")
                hint += (f' Use the tracepoint instead: SEC("tracepoint/{category}/{name}") '
                         f"(or -a tracepoint:{found[0]}).")
            else:
                hint += ' Use a tracepoint instead: SEC("tracepoint/CATEGORY/NAME").'
        return AttachError(message, hint, probe=str(probe))

    def program_fds(self) -> dict[str, int]:
        if self._obj is None:
            return {}
        lib = _lib.lib()
        fds = {name: lib.bpf_program__fd(p) for name, p in self._programs.items()}
        return {n: fd for n, fd in fds.items() if fd >= 0}

    # -- maps -----------------------------------------------------------------

    def maps(self) -> dict[str, MapHandle]:
        lib = _lib.lib()
        spec = self._btf()
        out = {}
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            name = lib.bpf_map__name(m).decode()
            fd = lib.bpf_map__fd(m)
            if fd >= 0 and not lib.bpf_map__is_internal(m) and not name.startswith(_LIBBPF_OWN):
                key_dt = _dtype(spec, lib.bpf_map__btf_key_type_id(m), lib.bpf_map__key_size(m))
                val_dt = _dtype(spec, lib.bpf_map__btf_value_type_id(m),
                                lib.bpf_map__value_size(m))
                out[name] = MapHandle.of_kernel_map(name, fd, key_dt, val_dt, backend="libbpf")
            m = lib.bpf_object__next_map(self._obj, m)
        return out

    def _btf(self) -> btf.Spec | None:
        """The object's BTF as libbpf holds it after loading."""
        lib = _lib.lib()
        handle = lib.bpf_object__btf(self._obj)
        if not handle:
            return None
        size = ct.c_uint32()
        raw = lib.btf__raw_data(handle, ct.byref(size))
        return btf.Spec.parse(ct.string_at(raw, size.value)) if raw else None

    def event_dtype(self, map_name: str) -> np.dtype | None:
        """The type the source submits to ``map_name``, from the object's own BTF.

        Records are often structs declared inside the function, which clang's
        BTF leaves out: each submission's marker (see :mod:`._records`) names its
        record's type there. None where the submissions disagree or the type is not a
        struct. Submissions without a marker (a call inside a macro) are looked up by
        name in the object's DWARF.
        """
        if self._marked is None:
            self._marked = _records.record_types(self._btf(), self._markers)
        marked = self._marked.get(map_name)
        if marked:
            first = marked[0]
            same = all(d is not None and d == first for d in marked)
            return first if same and first.names else None
        ctype = self._records.get(map_name)
        return self._c_dtype(ctype) if ctype is not None else None

    def _c_dtype(self, ctype: str) -> np.dtype | None:
        """The struct dtype of C type ``ctype`` (``struct X`` or a typedef name), from DWARF."""
        if self._dwarf is None:
            try:
                self._dwarf = dwarf_spec(self._object)
            except BPFError:
                return None
        kind, _, name = ctype.partition(" ") if " " in ctype else ("typedef", "", ctype)
        found = [t for t in self._dwarf.find(name, kind) if t.size or kind == "typedef"]
        dt = _dtype(self._dwarf, found[0].id, None) if found else None
        return dt if dt is not None and dt.names else None

    # -- lifecycle ------------------------------------------------------------

    def detach(self) -> None:
        self._iters = {}
        links, self._links = self._links, []
        for link in links:
            link.close()

    def close(self) -> None:
        self.detach()
        obj, self._obj = self._obj, None
        if obj:
            with _lib.logged():
                _lib.lib().bpf_object__close(obj)
        self._programs = {}
        self._sections = {}
        self._variables = []


def _kernel_facts() -> _select.Kernel:
    """What this kernel offers the hooks of SEC() names, asked once per question.

    Tracepoints (also raw and BTF-typed ones: every tracepoint is one) are looked up in
    tracefs's list, kernel functions in kallsyms (kprobes) or BTF (fentry), each read on
    the first question that needs it. Where tracefs cannot be read, tracepoints are
    taken to exist: attaching says whether they do.
    """
    listing: list[frozenset[str] | None] = []

    def tracepoints() -> frozenset[str] | None:
        if not listing:
            try:
                listing.append(frozenset(tracefs.tracepoints()))
            except OSError:
                listing.append(None)
        return listing[0]

    def check(hook: str, section: str, event: str) -> _select.Availability:
        if hook in ("tp", "tracepoint", "tp_btf", "raw_tp", "raw_tracepoint"):
            known = tracepoints()
            if hook in ("tp", "tracepoint"):
                category, _, name = section.partition("/")[2].partition("/")
                event = f"{category}:{name}"
                ok = known is None or event in known
            else:
                ok = known is None or any(t.endswith(f":{event}") for t in known)
            return _select.Availability(ok, "" if ok else f"no tracepoint {event}",
                                        absent=not ok)
        if hook in ("kprobe", "kretprobe"):
            if not kernel.kprobes_supported():
                return _select.Availability(False, "this kernel has no kprobes (CONFIG_KPROBES)")
            ok = event in kallsyms.functions()
        else:  # fentry, fexit: the function's BTF is what they attach by
            ok = bool(btf.vmlinux().find(event, "func"))
        return _select.Availability(ok, "" if ok else f"no kernel function {event}",
                                    absent=not ok)

    return _select.Kernel(check)


def _dtype(spec: btf.Spec | None, type_id: int, size: int | None) -> np.dtype | None:
    """The dtype of ``type_id`` if known and (when ``size`` is given) of that size."""
    if spec is None or not type_id:
        return None
    try:
        dt = btf.dtype(spec, type_id)
    except BPFError:
        return None
    return dt if size is None or dt.itemsize == size else None


def _library(path: str) -> str:
    """A uprobe target as a path: ``c`` names libc, like bpftrace's ``uprobe:c:malloc``."""
    if "/" in path:
        return path
    name = f"lib{path}.so" if not path.startswith("lib") else path
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listing = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True,
                                 timeout=10).stdout
        for line in listing.splitlines():
            soname, arrow, where = line.partition("=>")
            if arrow and soname.strip().split(" ")[0].startswith(name):
                return where.strip()
    return path


def _load_failure(err: int, log: list[str], sections: Mapping[str, str] | None = None,
                  loaded: Sequence[str] = ()) -> BPFError:
    """The error for a failed ``bpf_object__load``: ``sections`` are every program's SEC()
    names, ``loaded`` the programs that were to load."""
    if err in (1, 13) and not kernel.has_bpf_rights():
        return NotPrivilegedError("Not allowed to load BPF programs: " +
                                  kernel.rights_summary(), kernel.rights_hint())
    text = "\n".join(log)
    function = next((m.group(1) for m in map(_PROG_FAILED.search, log) if m), "")
    section = (sections or {}).get(function, "")
    hook = section.partition("/")[0]
    if hook in _TRAMPOLINE_HOOKS and _VERIFIER_LOG not in text:
        kprobes = kernel.kprobes_supported()
        others = [p for p in loaded if p != function and
                  (sections or {}).get(p, "").partition("/")[0] not in _TRAMPOLINE_HOOKS and
                  (kprobes or (sections or {}).get(p, "").partition("/")[0] not in _KPROBE_HOOKS)]
        return VerifierError(
            f'This kernel refuses SEC("{section}") {function}(): it loads no {hook} programs '
            f"({_lib.strerror(err)}, with the rights to load BPF).",
            "fentry, fexit and LSM programs need BPF trampolines this kernel does not offer "
            "them. Hook the same event with a tracepoint or raw tracepoint (%bpf probes "
            "'tracepoint:*NAME*')" + (f"; or run the cell's other programs without it: "
                                      f"--programs {','.join(others)}" if others else "") + ".",
            log=text, function=function)
    if "missing BPF prog type" in text:
        return BPFError(f"{function or 'A function'}() has no SEC() name, so libbpf cannot tell "
                        "what kind of program it is.",
                        'Put SEC("tracepoint/CATEGORY/NAME") (or SEC("kprobe/FUNC"), '
                        'SEC("uprobe"), SEC("perf_event")...) before it; a SEC() without a target '
                        "is attached with -a SPEC=FUNCTION.")
    verifier = [ln for ln in log if ln.strip() and not ln.startswith("libbpf:")
                and not ln.startswith(("processed ", "-- BEGIN", "-- END"))]
    if function or _VERIFIER_LOG in text:
        tail = verifier_excerpt((verifier or log)[-12:])
        return VerifierError(
            f"The kernel's verifier rejected {function or 'a program'}() "
            f"({_lib.strerror(err)}). The end of its log:\n{tail}",
            verifier_hint("\n".join(verifier or log)), log=text, function=function)
    detail = "\n".join(ln.strip() for ln in log[-6:])
    return BPFError(f"libbpf could not load the program: {_lib.strerror(err)}", detail)


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

    def compile(self, source: str, *, cflags: list[str], usdt: list[Probe], filename: str,
                line_offset: int, globals: Mapping[str, Any],
                programs: Sequence[str] | None = None,
                maps: Mapping[str, Mapping[str, int]] | None = None) -> LibbpfProgram:
        return LibbpfProgram(source, cflags=cflags, usdt=usdt, filename=filename,
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
