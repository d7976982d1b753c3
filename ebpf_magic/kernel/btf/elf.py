"""The little of ELF that BTF needs: section headers and symbols, 32/64-bit, either byte order."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ebpf_magic.errors import BPFError

SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
SHT_SYMTAB = 2


class ELFError(BPFError):
    """Data that is not a well-formed ELF object."""


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    info: int
    shndx: int


class ELF:
    """Section headers and symbol table of an ELF file held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        d = self.data
        if len(d) < 52 or d[:4] != b"\x7fELF":
            raise ELFError("not an ELF object (no \\x7fELF magic)",
                           "pass the bytes of a .o file compiled by clang -target bpf")
        if d[4] not in (1, 2) or d[5] not in (1, 2):
            raise ELFError(f"unknown ELF class {d[4]} or data encoding {d[5]}")
        self.is64 = d[4] == 2
        self.order = "<" if d[5] == 1 else ">"
        if self.is64:
            shoff, = self._unpack("Q", 0x28)
            shentsize, shnum, shstrndx = self._unpack("HHH", 0x3A)
        else:
            shoff, = self._unpack("I", 0x20)
            shentsize, shnum, shstrndx = self._unpack("HHH", 0x2E)
        self._shoff, self._shentsize = shoff, shentsize
        if shoff == 0:
            self.sections: list[Section] = []
            return
        first = self._header(0)
        if shnum == 0:  # more sections than the header field holds
            shnum = first[3]
        if shstrndx == SHN_XINDEX:
            shstrndx = first[4]
        raw = [self._header(i) for i in range(shnum)]
        if not 0 <= shstrndx < shnum:
            raise ELFError(f"section name table index {shstrndx} out of range")
        names = raw[shstrndx]
        names_blob = d[names[1]:names[1] + names[3]]
        self.sections = [
            Section(_cstr(names_blob, name), typ, off, size, link, entsize)
            for name, typ, off, size, link, entsize in
            ((h[0], h[5], h[1], h[3], h[4], h[6]) for h in raw)]

    def _unpack(self, fmt: str, at: int) -> tuple[int, ...]:
        try:
            return struct.unpack_from(self.order + fmt, self.data, at)
        except struct.error:
            raise ELFError("ELF object is truncated") from None

    def _header(self, i: int) -> tuple[int, int, int, int, int, int, int]:
        """(name, offset, flags, size, link, type, entsize) of section header ``i``."""
        at = self._shoff + i * self._shentsize
        if self.is64:
            name, typ, flags, _addr, off, size, link, _info, _align, entsize = self._unpack(
                "IIQQQQIIQQ", at)
        else:
            name, typ, flags, _addr, off, size, link, _info, _align, entsize = self._unpack(
                "IIIIIIIIII", at)
        if typ != 8 and off + size > len(self.data):  # SHT_NOBITS (.bss) holds no bytes
            raise ELFError(f"ELF section {i} lies beyond the end of the file (truncated?)")
        return name, off, flags, size, link, typ, entsize

    def section(self, name: str) -> Section | None:
        """The first section called ``name``."""
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, name: str) -> bytes | None:
        """The bytes of section ``name`` (None if absent)."""
        s = self.section(name)
        return None if s is None else self.data[s.offset:s.offset + s.size]

    def symbols(self) -> list[Symbol]:
        """Every entry of the symbol table (``.symtab``), empty if there is none."""
        tab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if tab is None or not 0 <= tab.link < len(self.sections):
            return []
        strtab = self.sections[tab.link]
        names = self.data[strtab.offset:strtab.offset + strtab.size]
        out = []
        if self.is64:
            fmt, step = self.order + "IBBHQQ", 24
        else:
            fmt, step = self.order + "IIIBBH", 16
        for at in range(tab.offset, tab.offset + tab.size - step + 1, step):
            if self.is64:
                name, info, _other, shndx, value, size = struct.unpack_from(fmt, self.data, at)
            else:
                name, value, size, info, _other, shndx = struct.unpack_from(fmt, self.data, at)
            out.append(Symbol(_cstr(names, name), value, size, info, shndx))
        return out


def _cstr(blob: bytes, offset: int) -> str:
    end = blob.find(b"\0", offset)
    return blob[offset:end if end >= 0 else None].decode("utf-8", "replace")
