"""The compile worker: BCC compiles and loads C here, never in the notebook's process.

Run as ``python -m ebpf_magic.backend.bcc.worker --fd N --parent PID``, by
:mod:`.client` only. It imports BCC once and serves requests on the unix socket
``N``, one program at a time:

``compile``
    source, cflags, environment and USDT probes -> the C functions, the
    compiler's log and why any map or event type could not be decoded (those are
    read as raw bytes), or the failure (exception text and log). With ``types``, the
    header tree of the kernel's BTF types (:mod:`.btftypes`), the program is compiled
    first against the part of its ``vmlinux.h`` it needs (:mod:`ebpf_magic.internal.
    typesubset`). With ``cache``, a key naming everything that makes the program, a
    program loaded before under that key is not compiled again (:mod:`.cached`).
``load``
    functions with their BPF program types, uprobe targets to resolve -> program
    and map descriptors (SCM_RIGHTS) with plain metadata: map names and key/value
    dtypes, event record dtypes, resolved uprobe and USDT attach points, and the
    functions the kernel refused with its reasons (the verifier's log). Then the
    worker drops its BPF object, closing its copies of every descriptor: from then
    on the notebook's process alone holds them.

libbcc prints diagnostics on descriptor 2, a file the parent reads too: the log
of each request is what was appended to it meanwhile, and after a crash the
parent shows its end. Nothing here attaches anything.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes as ct
import functools
import json
import os
import re
import resource
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ebpf_magic.backend.bcc import cached, protocol
from ebpf_magic.backend.bcc.btftypes import INDEX, TYPES_MACRO
from ebpf_magic.backend.bcc.instrument import TYPE_PREFIX, TYPEDEF_PREFIX
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.internal import cache, typesubset
from ebpf_magic.kernel import tracefs

_PR_SET_PDEATHSIG = 1
SUBSET_TRIES = 4  # compiles against a part of vmlinux.h before the whole is taken
LEARNED = "bcc-types"  # cache entries: names BCC's own headers and rewriter need
MAX_LEARNED = 512
_TYPES_FILE = "ebpf_magic-vmlinux-"  # + worker pid + "-": the part of vmlinux.h compiled with
_TRACEPOINT = re.compile(r"\bTRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)|"
                         r"\btracepoint__(\w+?)__(\w+)\s*\(")


@functools.cache
def _bcc_class() -> tuple[ModuleType, type]:
    """BCC, and its BPF class made to leave attaching to the parent; built once."""
    bcc = import_bcc()
    lib = bcc.libbcc.lib
    # libbcc functions BCC's Python module does not declare
    lib.bpf_num_tables.restype = ct.c_ulonglong
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_table_name.restype = ct.c_char_p
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_ulonglong]

    class _BPF(bcc.BPF):
        """BCC's BPF without auto-attach."""

        def __init__(self, **kwargs: Any) -> None:
            try:
                super().__init__(**kwargs)
            except BaseException:
                self.cleanup()
                atexit.unregister(self.cleanup)
                raise

        def _trace_autoload(self) -> None:
            pass

    return bcc, _BPF


class _Log:
    """What libbcc appended to descriptor 2 since :meth:`mark`."""

    def __init__(self) -> None:
        self.start = 0

    def mark(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        self.start = os.fstat(2).st_size

    def text(self) -> str:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        end = os.fstat(2).st_size
        try:
            data = os.pread(2, max(0, end - self.start), self.start)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")


class Server:
    """Requests in, replies out; compiled programs wait here, by id, for their load."""

    def __init__(self) -> None:
        self.programs: dict[int, Compiled] = {}
        self.log = _Log()

    def handle(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        op, key = msg.get("op"), msg.get("id")
        if op == "compile":
            self.drop(key)
            compiled = Compiled(self.log)
            reply = compiled.compile(msg)
            if reply["ok"]:
                self.programs[key] = compiled
            return reply, []
        if op == "load":
            compiled = self.programs.get(key)
            if compiled is None:
                return {"ok": False, "stage": "protocol", "error": "nothing compiled"}, []
            return compiled.load(msg)
        if op == "drop":
            self.drop(key)
            return {"ok": True}, []
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, []
        return {"ok": False, "stage": "protocol", "error": f"unknown request {op!r}"}, []

    def drop(self, key: int | None) -> None:
        compiled = self.programs.pop(key, None)
        if compiled is not None:
            compiled.drop()

    def close(self) -> None:
        for key in list(self.programs):
            self.drop(key)


class Compiled:
    """One program between its compile and its load: BCC's BPF object and USDT contexts."""

    def __init__(self, log: _Log) -> None:
        self.bcc, self.cls = _bcc_class()
        self.bpf = None
        self.contexts: list = []
        self.usdt: list[dict[str, Any]] = []
        self.log = log
        self.tables: list[dict[str, Any]] = []
        self.events: dict[str, Any] = {}
        self.request: dict[str, Any] = {}
        self.text = b""
        self.key = ""  # the cache key of a program to keep after its load
        self.code: dict[str, Any] | None = None  # its instructions (see cached.capture)
        self.reply: dict[str, Any] = {}  # its compile's reply
        self.stored: dict[str, Any] | None = None  # the cache entry standing for a compile
        self.held: list[int] = []  # descriptors made from a cache entry
        self.cut = False  # compiled against a part of vmlinux.h

    def compile(self, msg: dict[str, Any]) -> dict[str, Any]:
        os.environ.clear()
        os.environ.update(msg.get("env", {}))
        self.log.mark()
        for spec in msg.get("usdt", []):
            try:
                self.contexts.append(self._usdt_context(spec))
            except Exception as e:  # noqa: BLE001 - any failure of the probe is the reply
                self.drop()
                return {"ok": False, "stage": "usdt", "probe": spec["probe_text"],
                        "error": str(e), "log": self.log.text()}
        lib = self.bcc.libbcc.lib
        text = msg["source"].encode()
        if self.contexts:
            # BCC's own USDT path would attach uprobes here; only the argument code is wanted.
            handles = (ct.c_void_p * len(self.contexts))(*[c.get_context() for c in self.contexts])
            generated = lib.bcc_usdt_genargs(handles, len(self.contexts))
            if generated is None:
                self.drop()
                return {"ok": False, "stage": "usdt", "probe": msg["usdt"][0]["probe_text"],
                        "error": "cannot generate the USDT probe arguments (a probe in a "
                        "shared library with several locations needs a pid)",
                        "log": self.log.text()}
            text = generated + text
        self.request, self.text = msg, text
        key = "" if self.contexts else msg.get("cache") or ""
        self.stored = cached.lookup(key) if key else None
        if self.stored is not None:  # loaded before: load() makes it from the entry
            return {**self.stored["compiled"], "ok": True, "cached": True}
        reply = self._compile(text, msg)
        if reply["ok"] and key:
            self._keep(key, reply)
        return reply

    def _keep(self, key: str, reply: dict[str, Any]) -> None:
        """Have the program stored under ``key`` once it is loaded (see :meth:`load`)."""
        self.key, self.reply = key, {k: v for k, v in reply.items() if k != "ok"}
        self.code = cached.capture(self.bcc.libbcc.lib, self.bpf.module,
                                   [t["name"] for t in self.tables])

    def _compile(self, text: bytes, msg: dict[str, Any]) -> dict[str, Any]:
        lib = self.bcc.libbcc.lib
        before = self.log.text()
        try:
            self.bpf = self._build(text, list(msg["cflags"]), msg.get("types"))
        except MemoryError:
            raise  # over the worker's bound: it dies, and the notebook says which bound
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception on compile errors
            self.drop()
            return {"ok": False, "stage": "compile", "error": str(e),
                    "log": before + self.log.text()}
        functions = [lib.bpf_function_name(self.bpf.module, i).decode()
                     for i in range(lib.bpf_num_functions(self.bpf.module))]
        self.usdt = [loc for ctx, spec in zip(self.contexts, msg.get("usdt", []), strict=True)
                     for loc in self._usdt_locations(ctx, spec)]
        undecoded = self._describe()
        return {"ok": True, "functions": functions, "log": before + self.log.text(),
                "undecoded": undecoded, "events": self.events, "cut": self.cut}

    def _build(self, text: bytes, cflags: list[str], tree: str | None) -> Any:
        """BCC's BPF object: against the part of ``tree``'s vmlinux.h the program needs
        where that compiles, else as the environment says."""
        index = _index(tree) if tree else None
        self.cut = False
        if index is not None and SUBSET_TRIES:
            bpf = self._build_subset(text, cflags, index, tree)
            if bpf is not None:
                self.cut = True
                return bpf
        self.log.mark()
        return self.cls(text=text, cflags=cflags)

    def _build_subset(self, text: bytes, cflags: list[str], index: typesubset.Index,
                      tree: str) -> Any | None:
        """BCC's BPF object compiled against the declarations of vmlinux.h the program,
        BCC's headers (as learned before) and the compiler's errors name; None where it
        does not compile so."""
        learned = _learned(tree)
        names = index.seeds(text.decode("utf-8", "replace")) | learned | _tracepoint_names(text)
        found: set[str] = set()
        for _ in range(SUBSET_TRIES):
            # this process's own file (0600, sticky /tmp): nobody else can change it
            fd, header = tempfile.mkstemp(suffix=".h", prefix=f"{_TYPES_FILE}{os.getpid()}-")
            with os.fdopen(fd, "w") as f:
                f.write(index.header(names))
            self.log.mark()
            try:
                bpf = self.cls(text=text, cflags=[*cflags, *typesubset.STRICT,
                                                  f'-D{TYPES_MACRO}="{header}"'])
            except MemoryError:
                raise
            except Exception:  # noqa: BLE001 - BCC raises bare Exception on compile errors
                wanted = index.known(typesubset.missing(self.log.text())) - names
                if not wanted:
                    return None
                names |= wanted
                found |= wanted
                continue
            finally:
                os.unlink(header)
            # declarations BCC's headers would have warned about: there the next time
            found |= index.known(typesubset.missing(self.log.text())) - names
            if found - learned:
                _learn(tree, learned | found)
            return bpf
        return None

    def _usdt_context(self, spec: dict[str, Any]) -> Any:
        ctx = self.bcc.USDT(path=spec["path"], pid=spec["pid"]) if spec["pid"] else \
            self.bcc.USDT(path=spec["path"])
        ctx.enable_probe(probe=spec["probe"], fn_name=spec["function"])
        return ctx

    def _usdt_locations(self, ctx: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Where the uprobes of one USDT probe go, with its semaphore's file offset."""
        provider, _, name = spec["probe"].rpartition(":")
        semaphores = {}
        for p in ctx.enumerate_probes():
            if p.name.decode() == name and (not provider or p.provider.decode() == provider):
                semaphores[p.bin_path.decode()] = p.semaphore
        out = []
        for binpath, fn_name, addr, pid in ctx.enumerate_active_probes():
            if fn_name.decode() != spec["function"]:
                continue
            path, offset = self.bcc.BPF._check_path_symbol(binpath, b"", addr, pid)
            path = path.decode()
            semaphore = semaphores.get(binpath.decode()) or semaphores.get(path) or 0
            out.append({"function": spec["function"], "path": path, "offset": offset,
                        "pid": pid if pid and pid > 0 else -1,
                        "ref_ctr_offset": file_offset(path, semaphore) if semaphore else 0})
        return out

    def load(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        if self.stored is not None:
            done = self._load_stored(msg)
            if done is not None:
                return done
            # the kernel refused what was kept, or other functions are asked for: compile,
            # and keep what this load makes in the entry's place
            self.stored = None
            os.environ.clear()
            os.environ.update(self.request.get("env", {}))
            reply = self._compile(self.text, self.request)
            if not reply["ok"]:
                return reply, []
            self._keep(self.request["cache"], reply)
        if self.bpf is None:
            return {"ok": False, "stage": "protocol", "error": "nothing compiled"}, []
        fds: list[int] = []
        programs, failed = {}, {}
        for name, prog_type in msg["functions"]:
            self.log.mark()
            try:
                fn = self.bpf.load_func(name.encode(), prog_type)
            except Exception as e:  # noqa: BLE001 - BCC raises bare Exception when refused
                failed[name] = {"error": str(e), "log": self.log.text()}
                continue
            programs[name] = len(fds)
            fds.append(fn.fd)
        uprobes = self._uprobes(msg)
        maps = []
        table_fds = {}
        for table in self.tables:
            fd = self.bcc.libbcc.lib.bpf_table_fd(self.bpf.module, table["name"].encode())
            if fd >= 0:
                maps.append({**table, "fd": len(fds)})
                fds.append(fd)
                table_fds[table["name"]] = fd
        if self.code is not None and not failed and len(table_fds) == len(self.tables):
            kept = cached.entry(self.code, self.reply, self.tables, table_fds,
                                {name: (kind, fds[programs[name]])
                                 for name, kind in msg["functions"]})
            if kept is not None:
                cached.store(self.key, kept)
        return {"ok": True, "programs": programs, "failed": failed, "maps": maps,
                "events": self.events, "uprobes": uprobes, "usdt": self.usdt,
                "cached": False}, fds

    def _uprobes(self, msg: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Where each uprobe of the load request goes: path and offset, or why not."""
        uprobes = {}
        for key, (path, symbol, pid) in msg.get("uprobes", {}).items():
            self.log.mark()
            try:
                resolved, offset = self.bcc.BPF._check_path_symbol(path, symbol, 0, pid)
                uprobes[key] = {"path": resolved.decode(), "offset": offset}
            except Exception as e:  # noqa: BLE001 - BCC raises bare Exception when unresolved
                uprobes[key] = {"error": str(e), "log": self.log.text()}
        return uprobes

    def _load_stored(self, msg: dict[str, Any]) -> tuple[dict[str, Any], list[int]] | None:
        """The load reply made from the cache entry, or None where it cannot serve."""
        assert self.stored is not None
        made = cached.load(self.stored, [(name, kind) for name, kind in msg["functions"]])
        if made is None:
            return None
        progs, maps = made
        self.held = list(progs.values()) + list(maps.values())
        fds: list[int] = []
        programs = {}
        for name, fd in progs.items():
            programs[name] = len(fds)
            fds.append(fd)
        described = []
        for m in self.stored["maps"]:
            described.append({"name": m["name"], "key": m["key"], "value": m["value"],
                              "fd": len(fds)})
            fds.append(maps[m["name"]])
        return {"ok": True, "programs": programs, "failed": {}, "maps": described,
                "events": self.stored["compiled"]["events"], "uprobes": self._uprobes(msg),
                "usdt": [], "cached": True}, fds

    def _describe(self) -> dict[str, dict[str, str]]:
        """Learn each table's key/value dtypes and each stream's record dtype.

        Returns why a type could not be decoded, ``{"maps": {table: why}, "events":
        {stream: why}}``: those are read as raw bytes.
        """
        lib = self.bcc.libbcc.lib
        module = self.bpf.module
        undecoded: dict[str, dict[str, str]] = {"maps": {}, "events": {}}
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i).decode()
            key, why_key = self._desc_dtype(lib.bpf_table_key_desc(module, name.encode()))
            value, why_value = self._desc_dtype(lib.bpf_table_leaf_desc(module, name.encode()))
            if why_key or why_value:
                undecoded["maps"][name] = "; ".join(
                    f"{part}: {why}" for part, why in (("key", why_key), ("value", why_value))
                    if why)
            self.tables.append({"name": name, "key": protocol.dtype_to_json(key),
                                "value": protocol.dtype_to_json(value)})
            event, why = self._event_dtype(name)
            if event is not None:
                self.events[name] = protocol.dtype_to_json(event)
            elif why:
                undecoded["events"][name] = why
        return undecoded

    def _desc_dtype(self, desc: bytes | None) -> tuple[np.dtype | None, str]:
        """The dtype of BCC's type description ``desc``, or None and why not ("" if none)."""
        ctype, why = self._decode(desc)
        if ctype is None:
            return None, why
        return _as_dtype(ctype)

    def _decode(self, desc: bytes | None) -> tuple[Any, str]:
        if not desc:
            return None, ""
        try:
            return self.bcc.BPF._decode_table_type(json.loads(desc.decode())), ""
        except Exception as e:  # noqa: BLE001 - BCC's decoder fails in any way on odd input
            return None, f"BCC's description of it could not be read ({e})"

    def _event_dtype(self, map_name: str) -> tuple[np.dtype | None, str]:
        """The record layout BCC learned from ``perf_submit``/``ringbuf_output`` calls.

        None and why not ("" when BCC learned no fields).
        """
        lib = self.bcc.libbcc.lib
        module, name = self.bpf.module, map_name.encode()
        fields = []
        for i in range(lib.bpf_perf_event_fields(module, name)):
            text = lib.bpf_perf_event_field(module, name, i).decode()
            fname, _, ftype = text.partition("#")
            why: list[str] = []
            ctype = event_field_ctype(ftype, functools.partial(self._described_ctype,
                                                               why=why))
            if ctype is None:
                return None, (f"field {fname!r} of type {ftype!r}: " + why[0] if why else
                              f"field {fname!r} has type {ftype!r}, which is not known here")
            fields.append((fname, ctype))
        if not fields:
            return None, ""
        # BCC names a bitfield's type without its width: the fields would decode wrongly.
        names = [f for f, _ in fields]
        for ctype in self._described_types():
            if _has_bitfields(ctype) and _field_names(ctype) == names:
                return None, "its fields include bitfields, which numpy cannot express"
        return _as_dtype(type("event", (ct.Structure,), {"_fields_": fields}))

    def _described_types(self) -> list[Any]:
        """The ctypes layouts of the program's file-scope structs (see :mod:`.instrument`)."""
        lib = self.bcc.libbcc.lib
        out = []
        for table in self.tables:
            if table["name"].startswith((TYPE_PREFIX, TYPEDEF_PREFIX)):
                ctype, _ = self._decode(lib.bpf_table_leaf_desc(self.bpf.module,
                                                                table["name"].encode()))
                if ctype is not None:
                    out.append(ctype)
        return out

    def _described_ctype(self, type_map: str, why: list[str]) -> type | None:
        """The ctypes layout held by a hidden one-entry map describing a type.

        None if there is none; the reason is appended to ``why``.
        """
        lib = self.bcc.libbcc.lib
        ctype, reason = self._decode(lib.bpf_table_leaf_desc(self.bpf.module, type_map.encode()))
        if reason:
            why.append(reason)
        return ctype

    def drop(self) -> None:
        """Release the BPF object and USDT contexts: close this process's descriptors."""
        held, self.held = self.held, []
        cached.release(held)
        if self.bpf is not None:
            self.bpf.cleanup()
            atexit.unregister(self.bpf.cleanup)
            self.bpf = None
        self.contexts.clear()
        self.usdt = []


@functools.cache
def _index(tree: str) -> typesubset.Index | None:
    """The index of the header tree ``tree`` (see :mod:`.btftypes`), if it has a usable one."""
    path = Path(tree)
    if not cache.trusted(path / INDEX) or not cache.trusted(path / "vmlinux.h"):
        return None
    return typesubset.Index.load(path / INDEX, path / "vmlinux.h")


def _learned(tree: str) -> set[str]:
    """The names compiles against ``tree`` needed before beyond their own text."""
    found = cache.unpack(cache.lookup(LEARNED, cache.key(LEARNED, tree)))
    names = found[0].get("names") if found is not None else None
    return {str(n) for n in names} if isinstance(names, list) else set()


def _learn(tree: str, names: set[str]) -> None:
    if len(names) <= MAX_LEARNED:
        cache.store(LEARNED, cache.key(LEARNED, tree), cache.pack({"names": sorted(names)}))


def _sweep() -> None:
    """Remove the parts of vmlinux.h that workers killed while compiling left behind."""
    for path in Path(tempfile.gettempdir()).glob(f"{_TYPES_FILE}*.h"):
        pid = path.name[len(_TYPES_FILE):].split("-", 1)[0]
        with contextlib.suppress(OSError, ValueError):
            if path.lstat().st_uid == os.geteuid() and not Path(f"/proc/{int(pid)}").exists():
                path.unlink()


def _tracepoint_names(text: bytes) -> set[str]:
    """The names the fields of the tracepoints ``TRACEPOINT_PROBE`` reads use: BCC declares
    their argument struct from the tracepoint's format."""
    out: set[str] = set()
    for m in _TRACEPOINT.finditer(text.decode("utf-8", "replace")):
        category, name = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        with contextlib.suppress(OSError):
            out |= typesubset.names_in(tracefs.tracepoint_format(category, name))
    return out


def _as_dtype(ctype: Any) -> tuple[np.dtype | None, str]:
    """The dtype of ctypes type ``ctype``, or None and why numpy cannot express it."""
    try:
        return np.dtype(ctype), ""
    except (TypeError, ValueError, NotImplementedError) as e:
        if _has_bitfields(ctype):
            return None, "it has bitfields, which numpy cannot express"
        return None, f"numpy cannot express its layout ({e})"


def _field_names(ctype: Any) -> list[str]:
    return [f[0] for f in getattr(ctype, "_fields_", ()) if not f[0].startswith("__pad")]


def _has_bitfields(ctype: Any) -> bool:
    while hasattr(ctype, "_type_") and hasattr(ctype, "_length_"):  # arrays
        ctype = ctype._type_
    return any(len(f) == 3 or _has_bitfields(f[1]) for f in getattr(ctype, "_fields_", ()))


_EVENT_CTYPES = {
    "char": ct.c_char, "s8": ct.c_int8, "signed char": ct.c_int8, "unsigned char": ct.c_uint8,
    "u8": ct.c_uint8, "short": ct.c_int16, "s16": ct.c_int16, "unsigned short": ct.c_uint16,
    "u16": ct.c_uint16, "int": ct.c_int32, "s32": ct.c_int32, "enum": ct.c_int32,
    "unsigned int": ct.c_uint32, "u32": ct.c_uint32, "long": ct.c_int64,
    "unsigned long": ct.c_uint64, "long long": ct.c_int64, "s64": ct.c_int64,
    "unsigned long long": ct.c_uint64, "u64": ct.c_uint64, "_Bool": ct.c_bool,
    "bool": ct.c_bool, "float": ct.c_float, "double": ct.c_double,
    "void *": ct.c_uint64, "char *": ct.c_uint64, "u8 *": ct.c_uint64,
    "__int128": ct.c_int64 * 2, "unsigned __int128": ct.c_uint64 * 2,
    "pid_t": ct.c_int32, "uid_t": ct.c_uint32, "gid_t": ct.c_uint32, "size_t": ct.c_uint64,
    "__u8": ct.c_uint8, "__u16": ct.c_uint16, "__u32": ct.c_uint32, "__u64": ct.c_uint64,
    "__s8": ct.c_int8, "__s16": ct.c_int16, "__s32": ct.c_int32, "__s64": ct.c_int64,
}
_ARRAY = re.compile(r"^(.*?) ?((?:\[\d+\])+)$")


def event_field_ctype(ftype: str,
                      described: Callable[[str], type | None] | None = None) -> type | None:
    """The ctypes type of one event field as BCC names it (``u32``, ``char[16]``...).

    ``described`` maps a hidden type-describing map's name to its ctypes layout;
    struct and typedef fields are looked up there.
    """
    ftype = ftype.strip()
    if ftype.startswith("enum "):
        ftype = "enum"
    m = _ARRAY.match(ftype)
    if m:
        base = event_field_ctype(m.group(1), described)
        if base is None:
            return None
        for n in reversed([int(x) for x in re.findall(r"\d+", m.group(2))]):
            base = base * n
        return base
    if ftype in _EVENT_CTYPES or described is None:
        return _EVENT_CTYPES.get(ftype)
    if ftype.startswith("struct "):
        return described(TYPE_PREFIX + ftype[len("struct "):].strip())
    return described(TYPEDEF_PREFIX + ftype) if ftype.isidentifier() else None


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of virtual address ``vaddr`` in ELF file ``path`` (0 if unmapped).

    The kernel wants a USDT semaphore as a file offset (``ref_ctr_offset``);
    the ELF notes give its link-time address.
    """
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if ident[:4] != b"\x7fELF" or ident[4] != 2:
                return 0
            end = "<" if ident[5] == 1 else ">"
            phoff, = struct.unpack_from(end + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return 0
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            end + "IIQQQQ", table, i * phentsize)
        if p_type == 1 and p_vaddr <= vaddr < p_vaddr + p_filesz:  # PT_LOAD
            return vaddr - p_vaddr + p_offset
    return 0


def _die_with_parent(parent: int) -> None:
    libc = ct.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Serve requests on the inherited socket until the parent closes it."""
    parser = argparse.ArgumentParser(prog="ebpf_magic.backend.bcc.worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--memory", type=int, default=0, help="address-space limit, bytes")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop us
    if args.memory:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    sock = socket.socket(fileno=args.fd)
    _sweep()
    _bcc_class()
    server = Server()
    protocol.send(sock, {"ok": True, "pid": os.getpid()})
    while True:
        try:
            msg, fds = protocol.receive(sock)
        except protocol.Closed:
            break
        for fd in fds:
            os.close(fd)
        reply, out = server.handle(msg)
        # After a load the worker lets go of everything before the parent can go on.
        done = functools.partial(server.drop, msg.get("id")) if msg.get("op") == "load" \
            else None
        protocol.send(sock, reply, out, handed_over=done)
    server.close()


if __name__ == "__main__":
    main()
