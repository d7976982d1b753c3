"""User-space addresses to function names, from ``/proc/PID/maps`` and the mapped ELF files.

An address in a process falls in one mapping of ``/proc/PID/maps``; the
mapping names a file and the file offset it starts at. The file's loadable
segments turn that offset into the address the file's symbol tables use, and
the function whose ``[value, value + size)`` holds it is the frame's name.
Both ``.symtab`` and ``.dynsym`` are read, so stripped libraries still name
their exported functions. A file's symbols are read once and kept while the
file is unchanged (same device, inode, size and modification time).

Files are opened through ``/proc/PID/root`` so a process in another mount
namespace (a container) resolves against its own files.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import Symbol, SymbolTableSection

_FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC")
_CACHE_FILES = 256  # ELF files whose symbols stay loaded


@dataclass(frozen=True)
class Mapping:
    """One file-backed line of ``/proc/PID/maps``."""

    start: int
    end: int
    offset: int  # file offset of ``start``
    path: str


def function_symbols(elf: ELFFile) -> Iterator[Symbol]:
    """The named functions an ELF file defines: ``.symtab``'s (locals too), then ``.dynsym``'s."""
    for name in (".symtab", ".dynsym"):
        table = elf.get_section_by_name(name)
        if not isinstance(table, SymbolTableSection):
            continue
        for sym in table.iter_symbols():
            if (sym["st_info"]["type"] in _FUNC_TYPES and sym.name
                    and sym["st_shndx"] != "SHN_UNDEF"):
                yield sym


class ElfSymbols:
    """The functions of one ELF file, found by file offset."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.segments = sorted((s["p_offset"], s["p_vaddr"], s["p_filesz"])
                                   for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
            # by address: the largest function there; a plain name before `_`-prefixed aliases
            found: dict[int, tuple[tuple[int, bool], str]] = {}
            for sym in function_symbols(elf):
                value = sym["st_value"]
                if not value:
                    continue
                rank = (sym["st_size"], not sym.name.startswith("_"))
                if value not in found or rank > found[value][0]:
                    found[value] = (rank, sym.name)
        self._starts = sorted(found)
        self._sizes = [found[a][0][0] for a in self._starts]
        self._names = [found[a][1] for a in self._starts]

    def address(self, offset: int) -> int | None:
        """The symbol-table address of file offset ``offset`` (None outside every segment)."""
        for p_offset, p_vaddr, p_filesz in self.segments:
            if p_offset <= offset < p_offset + p_filesz:
                return offset - p_offset + p_vaddr
        return None

    def function(self, address: int) -> str | None:
        """The function whose extent holds ``address`` (a sizeless one: its first byte only)."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        return self._names[i] if address < self._starts[i] + max(self._sizes[i], 1) else None

    def resolve(self, offset: int) -> str | None:
        """The function at file offset ``offset``, or None."""
        address = self.address(offset)
        return None if address is None else self.function(address)


_files: dict[tuple[int, int, int, int], ElfSymbols | None] = {}
_files_lock = threading.Lock()


def elf_symbols(path: str) -> ElfSymbols | None:
    """The symbols of the ELF file at ``path``, cached while it is unchanged; None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _files_lock:
        if key in _files:
            return _files[key]
    try:
        symbols: ElfSymbols | None = ElfSymbols(path)
    except (OSError, ELFError, ValueError):
        symbols = None
    with _files_lock:
        if len(_files) >= _CACHE_FILES:
            _files.pop(next(iter(_files)))
        _files[key] = symbols
    return symbols


def process_mappings(pid: int) -> list[Mapping]:
    """The file-backed mappings of process ``pid``, by start address; empty once it has exited."""
    out = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue  # anonymous, [heap], [stack], [vdso]...
        start, end = (int(x, 16) for x in parts[0].split("-"))
        out.append(Mapping(start, end, int(parts[2], 16), parts[5]))
    out.sort(key=lambda m: m.start)
    return out


def _open_path(pid: int, m: Mapping) -> str:
    """Where this process can read the mapped file: the target's own root, else the map file."""
    path = m.path.removesuffix(" (deleted)")
    own = f"/proc/{pid}/root{path}"
    if path == m.path and os.path.exists(own):
        return own
    return f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"


def symbolize_user(pid: int, addrs: list[int]) -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown)."""
    maps = process_mappings(pid) if addrs else []
    starts = [m.start for m in maps]
    names: list[str | None] = []
    for addr in addrs:
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr >= maps[i].end:
            names.append(None)
            continue
        m = maps[i]
        symbols = elf_symbols(_open_path(pid, m))
        names.append(None if symbols is None else symbols.resolve(addr - m.start + m.offset))
    return names
