"""What can be traced here: attach points as DataFrames, in the ``-a`` probe syntax.

:func:`find` lists probes matching a bpftrace-style pattern (``tracepoint:syscalls:*open*``,
``uprobe:c:mall*``, ``usdt:1234:*``); each row's ``probe`` can be passed to ``%%bpf -a`` as it
is. Sources: tracefs's ``available_events`` and format files for tracepoints, BTF's
``btf_trace_*`` prototypes for raw tracepoints and kernel functions' arguments, ftrace's
``available_filter_functions`` (else ``/proc/kallsyms``) for kprobes, ELF symbol tables and
``.note.stapsdt`` notes for uprobes and USDT, ``/sys/class/net`` for XDP and tc devices,
BTF's ``bpf_iter__*`` context structs for iterator targets.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import functools
import os
import re
import struct
import subprocess
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pandas as pd
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ebpf_magic.errors import BPFError, ProbeSpecError
from ebpf_magic.internal.tables import Listing
from ebpf_magic.kernel import btf, kallsyms, symbols, sysbpf, tracefs
from ebpf_magic.kernel import host as kernel
from ebpf_magic.probes import HARDWARE_EVENTS, KINDS, SOFTWARE_EVENTS, Probe, section

# the kinds :func:`find` lists, in the order of its summary
LISTED = ("tracepoint", "rawtracepoint", "kprobe", "kretprobe", "kfunc", "kretfunc", "uprobe",
          "usdt", "software", "hardware", "profile", "xdp", "tc", "iter")
# kinds listed without a pattern naming them, and for a pattern without a kind
_GLOBAL = ("tracepoint", "rawtracepoint", "kprobe", "kfunc", "software", "hardware", "profile",
           "xdp", "tc", "iter")
PROFILE_FORMS = ("profile:hz:99", "profile:s:1", "profile:ms:10", "profile:us:100")
_TRACE_PREFIX = "btf_trace_"
_ITER_PREFIX = "bpf_iter__"  # the context struct of each BPF iterator target
_FIELD = re.compile(r"\s*field:(?P<decl>[^;]*);\s*offset:(\d+);\s*size:(\d+);")


class SourceUnavailable(BPFError):
    """A listing's source (tracefs, most often) cannot be read by this process."""


class Field(NamedTuple):
    """One argument of a probe: its name and C type."""

    name: str
    c_type: str

    @property
    def decl(self) -> str:
        """The C declaration: ``const char *filename``."""
        return f"{self.c_type} {self.name}".replace("* ", "*")


def find(pattern: str = "", verbose: bool = False,
         attachable_only: bool = False) -> pd.DataFrame:
    """Probes matching ``pattern`` (bpftrace's syntax, ``*`` wildcards) as a DataFrame.

    Columns: ``probe`` (the ``-a`` spelling), ``kind``, ``attachable`` (whether this kernel
    can attach that kind here: :func:`unattachable` says why not), ``section`` (the
    ``SEC()`` name of a libbpf-style program for it) and, with ``verbose``, ``args`` (C
    declarations, ``; `` separated). Without a pattern: one row per kind with its count.
    ``attachable_only`` leaves out the rows that cannot attach here.
    """
    pattern = pattern.strip()
    if not pattern:
        return summary(attachable_only)
    kind_text, sep, rest = pattern.partition(":")
    kind = "rawtracepoint" if kind_text == "tp_btf" else KINDS.get(kind_text)
    if not sep or kind is None:
        if sep:
            raise ProbeSpecError(f"unknown probe kind {kind_text!r}",
                                 f"Kinds: {', '.join(LISTED)}")
        kinds, rest = _GLOBAL, pattern  # a bare pattern matches every kind's names
    else:
        kinds = (kind,)
    if kind in ("lsm",):
        raise ProbeSpecError("lsm hooks are not listed", "Use kfunc:bpf_lsm_* to see them.")
    rows: list[dict] = []
    for k in kinds:
        if not (attachable_only and unattachable(k)):
            rows.extend(_LISTERS[k](rest or "*", verbose, k))
    for row in rows:
        row["section"] = _section(row["kind"], row["probe"])
    columns = ["probe", "kind", "attachable", "section"] + (["args"] if verbose else [])
    which = "attachable probe" if attachable_only else "probe"
    return Listing(rows, columns=columns, empty_text=f"no {which} matches {pattern!r}")


def _section(kind: str, spec: str) -> str:
    """The SEC() name for probe ``spec``; a uprobe's library as the file libbpf opens."""
    target = spec.split(":", 1)[1]
    if kind in ("uprobe", "uretprobe"):
        lib, _, symbol = target.rpartition(":")
        with contextlib.suppress(ProbeSpecError):
            target = f"{library_path(lib)}:{symbol}"
    return section(Probe(kind, target))


def summary(attachable_only: bool = False) -> pd.DataFrame:
    """Kinds of probe, how many of each this machine offers, and whether they attach here
    (``attachable_only``: only the kinds that do)."""
    rows = []
    for kind in _GLOBAL:
        if attachable_only and unattachable(kind):
            continue
        try:
            found = _LISTERS[kind]("*", False, kind)
        except SourceUnavailable as e:
            rows.append({"kind": kind, "count": None, "attachable": _attachable(kind),
                         "example": e.message})
            continue
        rows.append({"kind": kind, "count": len(found), "attachable": _attachable(kind),
                     "example": found[0]["probe"] if found else ""})
    rows.append({"kind": "uprobe", "count": None, "attachable": True,
                 "example": "uprobe:c:malloc  (list: uprobe:BINARY_OR_LIB:*)"})
    rows.append({"kind": "usdt", "count": None, "attachable": True,
                 "example": "usdt:PATH_OR_PID:*"})
    frame = Listing(rows, columns=["kind", "count", "attachable", "example"])
    frame["count"] = frame["count"].astype("Int64")  # no count for kinds that need a target
    return frame


# -- which kinds attach here --------------------------------------------------------------


@functools.cache
def unattachable(kind: str) -> str:
    """Why probes of ``kind`` cannot attach on this machine, in a few words; '' if they can."""
    if kind in ("kprobe", "kretprobe") and not kernel.kprobes_supported():
        return "this kernel is built without kprobes (CONFIG_KPROBES is off)"
    if kind in ("kfunc", "kretfunc"):
        # fentry needs BTF and ftrace's function trampolines, which list their functions
        if not kernel.btf_available():
            return "fentry/fexit need the kernel's BTF, and this kernel has none"
        if not tracefs.readable("available_filter_functions"):
            return ("fentry/fexit need ftrace's function trampolines, and this kernel offers "
                    "no ftrace function list (available_filter_functions)")
    if kind == "hardware" and not _hardware_counters():
        return "this machine gives no hardware performance counters (VMs often hide them)"
    if kind in ("tracepoint", "rawtracepoint") and tracefs.root() is None:
        return "tracefs is not mounted, or not readable by this process"
    return ""


def _attachable(kind: str) -> bool:
    return not unattachable(kind)


def _hardware_counters() -> bool:
    """Whether a disabled CPU-cycles counter on this process opens (VMs often have none)."""
    attr = sysbpf.PerfEventAttr()
    attr.type, attr.size, attr.config = 0, ctypes.sizeof(attr), 0
    attr.flags = 1 | (1 << 5) | (1 << 6)  # disabled, exclude_kernel, exclude_hv
    try:
        fd = sysbpf.perf_event_open(attr, 0, -1)
    except OSError:
        return False
    os.close(fd)
    return True


def _rows(kind: str, specs: Iterable[str], args: Callable[[str], str] | None = None
          ) -> list[dict]:
    ok = _attachable(kind)
    if args is None:
        return [{"probe": s, "kind": kind, "attachable": ok} for s in specs]
    return [{"probe": s, "kind": kind, "attachable": ok, "args": args(s)} for s in specs]


def _match(names: Iterable[str], pattern: str) -> list[str]:
    if pattern in ("*", ""):
        return sorted(names)
    rx = re.compile(fnmatch.translate(pattern))
    return sorted(n for n in names if rx.match(n))


def _decls(fields: list[Field]) -> str:
    return "; ".join(f.decl for f in fields)


# -- tracepoints --------------------------------------------------------------------------


def tracepoints() -> list[str]:
    """Every tracepoint as ``CATEGORY:NAME``, from tracefs."""
    try:
        return tracefs.tracepoints()
    except tracefs.NotMounted:
        raise SourceUnavailable("tracefs is not mounted or not readable by this user, so "
                                "tracepoints cannot be listed here",
                                "Root (or tracefs's group) can list them; BTF-based kinds still "
                                "list: rawtracepoint:*, kfunc:*.") from None
    except OSError as e:
        raise SourceUnavailable(f"cannot read {e.filename}: {e.strerror}",
                                "Listing tracepoints needs read access to tracefs (root, or "
                                "the group that owns it); BTF-based kinds still list: "
                                "rawtracepoint:*, kfunc:*.") from None


def tracepoint_fields(category: str, name: str) -> list[Field]:
    """The arguments of tracepoint ``CATEGORY:NAME`` from its format file (common_* left out)."""
    try:
        text = tracefs.tracepoint_format(category, name)
    except (tracefs.NotMounted, PermissionError) as e:
        why = e.strerror if e.filename is None else f"cannot read {e.filename}: {e.strerror}"
        raise SourceUnavailable(why, "Reading tracepoint formats needs read access to tracefs.") \
            from None
    except OSError as e:
        raise BPFError(f"no format for tracepoint {category}:{name} ({e.strerror})",
                       "List them with %bpf probes tracepoint:CATEGORY:*") from None
    fields = []
    for line in text.splitlines():
        m = _FIELD.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        c_type, field = _split_decl(decl)
        if not field.startswith("common_"):
            fields.append(Field(field, c_type))
    return fields


def _split_decl(decl: str) -> tuple[str, str]:
    """``const char * filename`` -> (``const char *``, ``filename``); arrays keep ``[N]``."""
    m = re.match(r"(?P<type>.*?)(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(\[[^\]]*\])*)$", decl)
    if not m:
        return decl, ""
    return (m.group("type").strip() + m.group("dims")), m.group("name")


def _list_tracepoints(pattern: str, verbose: bool, kind: str) -> list[dict]:
    names = _match(tracepoints(), pattern)
    args = None
    if verbose:
        def args(spec: str) -> str:
            return _decls(tracepoint_fields(*spec.split(":")[1:]))
    return _rows(kind, (f"tracepoint:{n}" for n in names), args)


# -- BTF: raw tracepoints and kernel functions ---------------------------------------------


@functools.cache
def kernel_btf() -> btf.Spec | None:
    """The kernel's BTF, read once; None where the kernel has none."""
    try:
        return btf.vmlinux()
    except (BPFError, OSError):
        return None


@functools.cache
def raw_tracepoints() -> tuple[str, ...]:
    """Raw tracepoint names, from BTF's ``btf_trace_NAME`` typedefs (empty without BTF)."""
    spec = kernel_btf()
    if spec is None:
        return ()
    n = len(_TRACE_PREFIX)
    return tuple(sorted({name[n:] for name in spec.names("typedef")
                         if name.startswith(_TRACE_PREFIX)}))


def _btf_args(name: str, typedef: bool) -> str:
    spec = kernel_btf()
    if spec is None:
        return ""
    found = spec.find(_TRACE_PREFIX + name, "typedef") if typedef else spec.find(name, "func")
    if not found:
        return ""
    proto = spec.resolve(found[0].type)
    if proto.kind == "ptr":
        proto = spec.resolve(proto.type)
    if proto.kind != "func_proto":
        return ""
    params = proto.params[1:] if typedef else proto.params  # a raw tracepoint's void *ctx
    return "; ".join(btf.c_decl(spec, p.type, p.name) if p.type else "..." for p in params)


def _list_raw(pattern: str, verbose: bool, kind: str) -> list[dict]:
    names = _match(raw_tracepoints(), pattern)
    args = (lambda s: _btf_args(s.split(":", 1)[1], True)) if verbose else None
    return _rows(kind, (f"rawtracepoint:{n}" for n in names), args)


@functools.cache
def kernel_functions() -> tuple[str, ...]:
    """Kernel functions a kprobe could name: ftrace's list where readable, else kallsyms'."""
    try:
        names = tracefs.filter_functions()
    except OSError:
        names = []
    if not names:
        return kallsyms.functions()
    # __pfx_ symbols are the padding before functions, not functions
    return tuple(sorted({n for n in names if not n.startswith("__pfx_")}))


@functools.cache
def btf_functions() -> tuple[str, ...]:
    """Kernel functions BTF describes (what fentry/fexit can attach to)."""
    spec = kernel_btf()
    return () if spec is None else tuple(sorted(set(spec.names("func"))))


def _list_kfuncs(pattern: str, verbose: bool, kind: str) -> list[dict]:
    names = _match(btf_functions() if kind in ("kfunc", "kretfunc") else kernel_functions(),
                   pattern)
    args = (lambda s: _btf_args(s.split(":", 1)[1], False)) if verbose else None
    return _rows(kind, (f"{kind}:{n}" for n in names), args)


# -- user space: ELF symbols and USDT notes ------------------------------------------------


@functools.cache
def _ldconfig() -> dict[str, str]:
    try:
        out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        soname, arrow, where = line.partition("=>")
        if arrow:
            found.setdefault(soname.strip().split(" ")[0], where.strip())
    return found


def libraries() -> list[str]:
    """Short names of the shared libraries the dynamic linker knows (``c`` for libc.so.6)."""
    found = {re.sub(r"^lib|\.so.*$", "", soname) for soname in _ldconfig()}
    return sorted(n for n in found if n)


def library_path(target: str) -> str:
    """A uprobe target as a file: a path as it is, ``c`` or ``libc`` as the system's libc."""
    if "/" in target:
        return target
    name = target if target.startswith("lib") else f"lib{target}"
    for soname, where in _ldconfig().items():
        if soname.startswith(name + ".so"):
            return where
    raise ProbeSpecError(f"no library or binary {target!r}",
                         "Give a path (uprobe:/usr/bin/python3:*) or a library the dynamic "
                         "linker knows (uprobe:c:*, uprobe:pthread:*).")


def elf_functions(path: str) -> list[str]:
    """Names of the functions ``path`` defines (.symtab and .dynsym, versions stripped)."""
    return sorted(_elf_functions(*_file_key(path)))


def _file_key(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ProbeSpecError(f"cannot read {path}: {e.strerror}",
                             "Check the path; uprobe and usdt targets are ELF files.") from None
    return path, st.st_ino, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _elf_functions(path: str, _ino: int, _mtime: int) -> frozenset[str]:
    try:
        with open(path, "rb") as f:
            names = {sym.name.split("@", 1)[0]
                     for sym in symbols.function_symbols(ELFFile(f))}
    except (OSError, ELFError) as e:
        raise ProbeSpecError(f"{path} is not a readable ELF file ({e})") from None
    return frozenset(names)


def _list_uprobes(pattern: str, verbose: bool, kind: str) -> list[dict]:
    target, sep, sym_pattern = pattern.rpartition(":")
    if not sep or not target:
        raise ProbeSpecError(f"{kind}:{pattern}: name the binary or library",
                             f"Example: {kind}:c:mall* or {kind}:/usr/bin/bash:*")
    path = library_path(target)
    names = _match(elf_functions(path), sym_pattern or "*")
    return _rows(kind, (f"{kind}:{target}:{n}" for n in names), (lambda _spec: "") if verbose
                 else None)


class Note(NamedTuple):
    """One USDT probe of an ELF file's ``.note.stapsdt``: where it is and its argument specs."""

    provider: str
    name: str
    pc: int
    semaphore: int
    args: str


def usdt_notes(path: str) -> list[Note]:
    """The USDT probes of ELF file ``path``, in note order (empty when it has none)."""
    return list(_usdt_notes(*_file_key(path)))


@functools.lru_cache(maxsize=64)
def _usdt_notes(path: str, _ino: int, _mtime: int) -> tuple[Note, ...]:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            section = elf.get_section_by_name(".note.stapsdt")
            if section is None:
                return ()
            data, wide = section.data(), elf.elfclass == 64
            order = "<" if elf.little_endian else ">"
    except (OSError, ELFError):
        return ()
    notes, at, word = [], 0, 8 if wide else 4
    while at + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(order + "3I", data, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        at = desc_at + (descsz + 3) // 4 * 4
        if ntype != 3 or data[name_at:name_at + namesz].rstrip(b"\0") != b"stapsdt":
            continue
        desc = data[desc_at:desc_at + descsz]
        pc, _base, sem = struct.unpack_from(order + ("3Q" if wide else "3I"), desc)
        strings = desc[3 * word:].split(b"\0")
        provider, probe, args = (s.decode("utf-8", "replace") for s in (strings + [b""] * 3)[:3])
        notes.append(Note(provider, probe, pc, sem, args))
    return tuple(notes)


def _usdt_objects(target: str) -> list[tuple[str, str]]:
    """(name for the probe spec, file to read) of a USDT target: a path, library or PID."""
    if target.isdigit():
        pid = int(target)
        try:
            maps = symbols.process_mappings(pid)
        except OSError as e:
            raise ProbeSpecError(f"cannot read the mappings of process {pid}: {e.strerror}",
                                 "Is it running, and may you read /proc/PID/maps?") from None
        seen, out = set(), []
        for m in maps:
            if m.path.startswith("/") and m.path not in seen:
                seen.add(m.path)
                out.append((m.path, f"/proc/{pid}/root{m.path}"))
        return out
    path = library_path(target)
    return [(target, path)]


def _list_usdt(pattern: str, verbose: bool, kind: str) -> list[dict]:
    target, sep, probe_pattern = pattern.partition(":")
    if not sep or not target:
        raise ProbeSpecError(f"usdt:{pattern}: name the binary, library or PID",
                             "Example: usdt:/usr/bin/python3:* or usdt:1234:*")
    rows = []
    for shown, path in _usdt_objects(target):
        try:
            notes = usdt_notes(path)
        except ProbeSpecError:
            continue
        for n in notes:
            full = f"{n.provider}:{n.name}"
            if not (_match([full], probe_pattern) or _match([n.name], probe_pattern)):
                continue
            row = {"probe": f"usdt:{shown}:{full}", "kind": kind, "attachable": True}
            if verbose:
                row["args"] = n.args
            rows.append(row)
    seen: set[str] = set()
    return [r for r in rows if not (r["probe"] in seen or seen.add(r["probe"]))]


# -- events, profile forms, devices ---------------------------------------------------------


def _list_events(pattern: str, verbose: bool, kind: str) -> list[dict]:
    table = SOFTWARE_EVENTS if kind == "software" else HARDWARE_EVENTS
    names = _match(table, pattern.split(":")[0])
    args = (lambda _spec: "") if verbose else None
    return _rows(kind, (f"{kind}:{n}" for n in names), args)


def _list_profile(pattern: str, verbose: bool, kind: str) -> list[dict]:
    rx = re.compile(fnmatch.translate("profile:" + pattern))
    args = (lambda _spec: "") if verbose else None
    return _rows(kind, (f for f in PROFILE_FORMS if rx.match(f) or pattern == "*"), args)


def network_devices() -> list[str]:
    """Network interfaces, the targets of ``xdp:``."""
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []


def _list_xdp(pattern: str, verbose: bool, kind: str) -> list[dict]:
    args = (lambda _spec: "") if verbose else None
    return _rows(kind, (f"xdp:{n}" for n in _match(network_devices(), pattern)), args)


def _list_tc(pattern: str, verbose: bool, kind: str) -> list[dict]:
    args = (lambda _spec: "") if verbose else None
    specs = [f"{d}:{way}" for d in network_devices() for way in ("ingress", "egress")]
    return _rows(kind, (f"tc:{s}" for s in _match(specs, pattern)), args)


@functools.cache
def iterator_targets() -> tuple[str, ...]:
    """What BPF iterators can walk here (``task``, ``tcp``...), from BTF's ``bpf_iter__*``."""
    spec = kernel_btf()
    if spec is None:
        return ()
    n = len(_ITER_PREFIX)
    # bpf_iter__task__safe_trusted and the like are the verifier's variants, not targets
    return tuple(sorted({name[n:] for name in spec.names("struct")
                         if name.startswith(_ITER_PREFIX) and "__" not in name[n:]}))


def _list_iter(pattern: str, verbose: bool, kind: str) -> list[dict]:
    args = None
    if verbose:
        def args(spec: str) -> str:
            found = kernel_btf().find(_ITER_PREFIX + spec.split(":")[1], "struct")
            return "; ".join(f.c_type + " " + f.field for f in
                             btf.type_fields(kernel_btf(), found[0])) if found else ""
    return _rows(kind, (f"iter:{n}" for n in _match(iterator_targets(), pattern)), args)


_LISTERS = {
    "tracepoint": _list_tracepoints, "rawtracepoint": _list_raw,
    "kprobe": _list_kfuncs, "kretprobe": _list_kfuncs, "kfunc": _list_kfuncs,
    "kretfunc": _list_kfuncs, "uprobe": _list_uprobes, "uretprobe": _list_uprobes,
    "usdt": _list_usdt, "software": _list_events, "hardware": _list_events,
    "profile": _list_profile, "xdp": _list_xdp, "tc": _list_tc, "iter": _list_iter,
}
