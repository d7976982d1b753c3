"""A cell's C compiled by clang, opened, sized, loaded and attached through libbpf."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ebpf_magic.backend.base import CompiledProgram, GlobalVar, IterHandle, MapHandle
from ebpf_magic.backend.libbpf import (
    _attach,
    _compile,
    _facts,
    _failures,
    _lib,
    _mapsizes,
    _objects,
    _records,
    _select,
    _source,
)
from ebpf_magic.backend.libbpf._attach import LibbpfLink
from ebpf_magic.backend.libbpf._host import available
from ebpf_magic.errors import AttachError, BPFError, NotPrivilegedError, VerifierError
from ebpf_magic.kernel import btf, tracefs
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import link as links
from ebpf_magic.kernel.btf.dwarf import dwarf_spec
from ebpf_magic.probes import Probe
from ebpf_magic.suggest import near

V3 = "-mcpu=v3"
FLAGS_ZERO_WARNING = ("{map}: bpf_perf_event_output(..., 0, ...) with flags 0 writes to the "
                      "buffer of CPU 0 only, so events on other CPUs are lost; pass "
                      "BPF_F_CURRENT_CPU as the flags")


class LibbpfProgram(CompiledProgram):
    """A C source compiled by clang and loaded by libbpf.

    USDT probes need nothing at load time here: :meth:`attach` attaches
    them with libbpf's USDT support (the C side uses ``<bpf/usdt.bpf.h>``).
    ``globals`` are written into the data sections' initial images between
    opening and loading, so ``const volatile`` variables reach the verifier
    with their values.
    """

    def __init__(self, source: str, *, cflags: list[str],
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
            if _failures.VERIFIER_LOG not in refused.log or \
                    any(f.startswith("-mcpu") for f in cflags):
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
        kernel_facts = _facts.kernel_facts()
        excluded: dict | None = None
        while True:  # each pass opens the object afresh: libbpf loads an object only once
            self.notes = list(compiled.notes)
            self._open(filename)
            try:
                self._choose(kernel_facts, programs, excluded)
                self.notes += _objects.size_maps(self._obj, map_sizes)
                self.notes += _objects.one_slot_per_cpu(self._obj)
                self._sections, self._variables = _objects.data_sections(self._obj)
                self.warnings += _objects.set_initial(self._sections, self._variables, globals)
                with _lib.logged() as log:
                    rc = _lib.lib().bpf_object__load(self._obj)
                if not rc:
                    return
                error = _failures.load_failure(-rc, log, self.all_sections, self.functions)
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
            raise _failures.open_failure(err, log)
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
        fd = _lib.lib().bpf_program__fd(prog)
        section = self.sections[probe.function]
        attached: LibbpfLink | links.Link
        if probe.kind in _attach.PERF_EVENT_KINDS:
            attached = _attach.attach_perf_event(probe, fd)
        elif probe.kind == "xdp":
            attached = _attach.attach_xdp(probe, fd)
        elif probe.kind in _attach.BY_FD_KINDS:
            map_name = probe.target.partition(":")[2] if probe.kind == "iter" else ""
            attached = _attach.attach_by_fd(probe, fd, section,
                                            self._map_fd(map_name, probe) if map_name else None)
            if probe.kind == "iter":
                self._iters[probe.function] = (attached, probe.target.partition(":")[0])
        else:
            attached = _attach.attach_with_libbpf(prog, probe, section)
        self._links.append(attached)
        return [str(probe)]

    def _map_fd(self, name: str, probe: Probe) -> int:
        found = _objects.user_maps(self._obj)
        if name in found:
            return _lib.lib().bpf_map__fd(found[name])
        names = list(found)
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

    def program_fds(self) -> dict[str, int]:
        if self._obj is None:
            return {}
        lib = _lib.lib()
        fds = {name: lib.bpf_program__fd(p) for name, p in self._programs.items()}
        return {n: fd for n, fd in fds.items() if fd >= 0}

    # -- maps -----------------------------------------------------------------

    def maps(self) -> dict[str, MapHandle]:
        return _objects.map_handles(self._obj)

    def event_dtype(self, map_name: str) -> np.dtype | None:
        """The type the source submits to ``map_name``, from the object's own BTF.

        Records are often structs declared inside the function, which clang's
        BTF leaves out: each submission's marker (see :mod:`._records`) names its
        record's type there. None where the submissions disagree or the type is not a
        struct. Submissions without a marker (a call inside a macro) are looked up by
        name in the object's DWARF.
        """
        if self._marked is None:
            self._marked = _records.record_types(_objects.object_btf(self._obj), self._markers)
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
        dt = _objects.btf_dtype(self._dwarf, found[0].id, None) if found else None
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
