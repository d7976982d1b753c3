"""BCC programs kept after their first load, loaded again without compiling.

Used by the worker (:mod:`.worker`). After BCC compiles a program, :func:`capture` takes
each function's instructions, the descriptors of the maps they use replaced by the maps'
names; after the load, :func:`entry` adds what the kernel says of the maps and programs
(types, sizes, flags, names) and the compile's reply, and the worker keeps it in this
user's cache (:mod:`ebpf_magic.internal.cache`) under the key the notebook's process sent,
made of everything that changes the program (source, flags, headers, kernel, BCC).

:func:`load` makes the maps and loads the programs from an entry with bpf(2): what BCC
would have loaded, save its BTF (bpftool shows the maps without types and the programs
without source lines). Kept are only programs that need nothing more at load: kprobe,
tracepoint, perf event and raw tracepoint programs, maps of the kinds in
:data:`MAP_TYPES`, no calls between functions or to kernel functions. Whatever the
kernel refuses is compiled again.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import functools
import hashlib
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ebpf_magic.internal import cache
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import sysbpf

KIND = "bcc"  # of cache entry
FORMAT = 1
PROG_TYPES = {2, 5, 7, 17}  # kprobe, tracepoint, perf_event, raw_tracepoint
# hash, array, prog array, perf event array, per-CPU hash and array, stack trace, LRU
# hashes, LPM trie, queue, stack, ring buffer
MAP_TYPES = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 22, 23, 27}
_LD_IMM64, _CALL = 0x18, 0x85
_PSEUDO_MAP_FD = 1
_NUMA_NODE = 1 << 2  # a map flag that needs more than the flags at creation
# what BCC reads from its environment while it compiles
_ENVIRONMENT = ("BCC_KERNEL_SOURCE", "BCC_KERNEL_MODULES_SUFFIX", "BCC_LINUX_VERSION_CODE",
                "ARCH")


@functools.cache
def _code() -> str:
    """The hash of this package's BCC backend: its worker describes what it keeps."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _libbcc() -> str:
    """The file libbcc was loaded from in this process."""
    return next((line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                 if "/libbcc.so" in line), "")


def _library(bcc: Any) -> str:
    """libbcc as loaded here: its file, size and modification time, and BCC's version."""
    lib = _libbcc()
    try:
        info = os.stat(lib)
        return f"{getattr(bcc, '__version__', '')} {lib} {info.st_size} {info.st_mtime_ns}"
    except OSError:
        return f"{getattr(bcc, '__version__', '')} {lib}"


def _tree(path: str) -> str:
    """A header tree as a cache key: its path and when it was completed."""
    for name in (".ebpf_magic_complete", "."):
        with contextlib.suppress(OSError):
            return f"{path} {os.stat(os.path.join(path, name)).st_mtime_ns}"
    return path


def key(bcc: Any, source: str, cflags: list[str], env: Mapping[str, str]) -> str:
    """The cache key of the program BCC (module ``bcc``) makes of ``source`` with
    ``cflags`` in environment ``env``: those, the headers, the kernel, BCC and this backend."""
    settings = {k: env.get(k, "") for k in _ENVIRONMENT}
    return cache.key(KIND, FORMAT, source, list(cflags), settings,
                     _tree(settings["BCC_KERNEL_SOURCE"]), kernel.build(), _library(bcc),
                     _code())


def capture(lib: Any, module: int, tables: list[str]) -> dict[str, Any] | None:
    """Each function of BCC's ``module`` as instructions and map references; None if a
    function uses anything :func:`load` cannot give it again."""
    names = {lib.bpf_table_fd(module, t.encode()): t for t in tables}
    functions = {}
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        start, size = lib.bpf_function_start(module, name), lib.bpf_function_size(module, name)
        if not start or size % 8:
            return None
        code = ct.string_at(start, size)
        uses = []
        slot = 0
        while slot < size // 8:
            op, regs = code[slot * 8], code[slot * 8 + 1]
            source = regs >> 4 if sys.byteorder == "little" else regs & 0xF
            if op == _CALL and source != 0:
                return None  # a call to another function or a kernel function
            if op == _LD_IMM64:
                if source == _PSEUDO_MAP_FD:
                    fd, = struct.unpack_from("=i", code, slot * 8 + 4)
                    if fd not in names:
                        return None
                    uses.append([slot, names[fd]])
                elif source != 0:
                    return None
                slot += 1
            slot += 1
        functions[name.decode()] = {"code": code.hex(), "maps": uses}
    return {"functions": functions, "license": (lib.bpf_module_license(module) or b"").decode(),
            "kern_version": lib.bpf_module_kern_version(module)}


def entry(code: dict[str, Any], compiled: dict[str, Any], tables: list[dict[str, Any]],
          map_fds: dict[str, int], programs: dict[str, tuple[int, int]]) -> bytes | None:
    """A cache entry of a loaded program: ``code`` from :func:`capture`, the compile's
    reply ``compiled``, the ``tables`` the worker describes with the descriptors
    ``map_fds`` they have, and ``programs``, ``{function: (program type, fd)}``.

    None where a part is of a kind :func:`load` does not make.
    """
    maps = []
    for table in tables:
        info = sysbpf.map_info(map_fds[table["name"]])
        if info.type not in MAP_TYPES or info.map_flags & _NUMA_NODE or info.map_extra:
            return None
        maps.append({**table, "type": info.type, "key_size": info.key_size,
                     "value_size": info.value_size, "max_entries": info.max_entries,
                     "flags": info.map_flags, "kernel_name": info.name.decode()})
    loaded = {}
    for function, (prog_type, fd) in programs.items():
        if prog_type not in PROG_TYPES or function not in code["functions"]:
            return None
        loaded[function] = {"type": prog_type, "name": sysbpf.prog_info(fd).name.decode()}
    return cache.pack({"format": FORMAT, "compiled": compiled, "code": code, "maps": maps,
                       "programs": loaded})


def lookup(key: str) -> dict[str, Any] | None:
    """The entry stored under ``key``, if there, trusted and of this format."""
    found = cache.unpack(cache.lookup(KIND, key))
    if found is None:
        return None
    meta = found[0]
    shape = {"compiled": dict, "code": dict, "maps": list, "programs": dict}
    if meta.get("format") != FORMAT or not all(isinstance(meta.get(k), t)
                                               for k, t in shape.items()):
        return None
    return meta


def store(key: str, data: bytes) -> None:
    cache.store(KIND, key, data)


def load(stored: dict[str, Any],
         functions: list[tuple[str, int]]) -> tuple[dict[str, int], dict[str, int]] | None:
    """Make the maps and load ``functions`` (name, program type) of entry ``stored``:
    ``({function: fd}, {map: fd})``, owned by the caller. None where the entry does not
    hold those functions with those types, or the kernel refuses any (nothing is left
    open then)."""
    programs = stored["programs"]
    if any(programs.get(name, {}).get("type") != kind for name, kind in functions):
        return None
    maps: dict[str, int] = {}
    progs: dict[str, int] = {}
    try:
        for m in stored["maps"]:
            maps[m["name"]] = sysbpf.map_create(m["type"], m["key_size"], m["value_size"],
                                                m["max_entries"], m["flags"], m["kernel_name"])
        code = stored["code"]
        for name, kind in functions:
            function = code["functions"][name]
            insns = bytearray.fromhex(function["code"])
            for slot, table in function["maps"]:
                struct.pack_into("=i", insns, slot * 8 + 4, maps[table])
            progs[name] = sysbpf.prog_load(kind, bytes(insns), code["license"],
                                           code["kern_version"], programs[name]["name"])
    except (OSError, KeyError, TypeError, ValueError, IndexError, struct.error):
        # refused by the kernel, or an entry not as this module writes them
        release(list(progs.values()) + list(maps.values()))
        return None
    return progs, maps


def release(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
