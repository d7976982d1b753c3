"""numpy dtypes for the types of a compiled object: from its BTF, and from its DWARF.

Map keys and values are described by the object's BTF (libbpf hands over the
type ids). Event records are often function-local structs (``struct S {...}
data;`` inside the program), which BTF does not carry but the DWARF from
``-g`` does; ``llvm-dwarfdump`` (part of the clang toolchain) reads it.

Fields numpy cannot hold (bitfields) are left out; the record keeps its size,
so the other fields still decode.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

_INT_SIGNED, _INT_CHAR, _INT_BOOL = 1, 2, 4
_KIND_INT, _KIND_PTR, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION, _KIND_ENUM = 1, 2, 3, 4, 5, 6
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT = 8, 9, 10, 11
_KIND_FLOAT, _KIND_TYPE_TAG, _KIND_ENUM64 = 16, 18, 19
_MODIFIERS = (_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG)
# extra 32-bit words after each type's header: (fixed, per member)
_EXTRA = {1: (1, 0), 3: (3, 0), 4: (0, 3), 5: (0, 3), 6: (0, 2), 13: (0, 2), 14: (1, 0),
          15: (0, 3), 17: (1, 0), 19: (0, 3)}


def _scalar(size: int, signed: bool) -> np.dtype:
    return np.dtype(f"{'i' if signed else 'u'}{size}") if size in (1, 2, 4, 8) \
        else np.dtype(f"V{size}")


def _record(fields: list[tuple[str, np.dtype, int]], size: int) -> np.dtype:
    names, formats, offsets = [], [], []
    for name, dt, offset in fields:
        if name in names:
            continue
        names.append(name)
        formats.append(dt)
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size})


class Btf:
    """The types of a raw BTF blob (as ``btf__raw_data`` returns it)."""

    def __init__(self, raw: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", raw)
        if magic != 0xEB9F:
            raise ValueError("not BTF")
        self._strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]
        self.types: list[tuple[int, str, int, int, tuple[int, ...]]] = [(0, "", 0, 0, ())]
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", raw, pos)
            pos += 12
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, per = _EXTRA.get(kind, (0, 0))
            n = fixed + per * vlen
            extra = struct.unpack_from(f"<{n}I", raw, pos)
            pos += 4 * n
            self.types.append((kind, self._name(name_off), info, size_or_type, extra))
        self._cache: dict[int, np.dtype | None] = {}

    def _name(self, off: int) -> str:
        return self._strings[off:self._strings.index(b"\0", off)].decode()

    def dtype(self, type_id: int) -> np.dtype | None:
        """The numpy dtype of type ``type_id``; None for void and unsized types."""
        if type_id not in self._cache:
            self._cache[type_id] = self._build(type_id)
        return self._cache[type_id]

    def _build(self, type_id: int) -> np.dtype | None:
        if not 0 < type_id < len(self.types):
            return None
        kind, _name, info, size, extra = self.types[type_id]
        if kind == _KIND_INT:
            enc = (extra[0] >> 24) & 0xF
            if enc & _INT_BOOL:
                return np.dtype(np.bool_)
            if enc & _INT_CHAR and size == 1:
                return np.dtype("S1")
            return _scalar(size, bool(enc & _INT_SIGNED))
        if kind == _KIND_PTR:
            return np.dtype(np.uint64)
        if kind in (_KIND_ENUM, _KIND_ENUM64):
            return _scalar(size, bool(info >> 31))
        if kind == _KIND_FLOAT:
            return np.dtype(f"f{size}")
        if kind in _MODIFIERS:
            return self.dtype(size)
        if kind == _KIND_ARRAY:
            elem, _index, n = extra
            base = self.dtype(elem)
            if base is None:
                return None
            if base == np.dtype("S1"):
                return np.dtype(f"S{n}")
            return np.dtype((base, (n,))) if n else None
        if kind in (_KIND_STRUCT, _KIND_UNION):
            fields = []
            for i in range(info & 0xFFFF):
                name_off, member, offset = extra[3 * i:3 * i + 3]
                bitfield = (info >> 31) and (offset >> 24)
                offset &= 0xFFFFFF if info >> 31 else 0xFFFFFFFF
                dt = self.dtype(member)
                if dt is None or bitfield or offset % 8:
                    continue
                fields.append((self._name(name_off) or f"_anon{i}", dt, offset // 8))
            return _record(fields, size)
        return None


_DIE = re.compile(r"^0x([0-9a-f]+):(\s+)(DW_TAG_\w+|NULL)")
_ATTR = re.compile(r"^\s+(DW_AT_\w+)\s+\((.*)\)$")


def _dwarfdump() -> str | None:
    return shutil.which("llvm-dwarfdump") or next(
        (str(p) for p in sorted(Path("/usr/bin").glob("llvm-dwarfdump-*"), reverse=True)), None)


class Dwarf:
    """The type entries of an object's DWARF, read with ``llvm-dwarfdump``."""

    def __init__(self, dump: str) -> None:
        self.dies: dict[int, dict] = {}
        stack: list[tuple[int, int]] = []  # (indent, offset)
        current: dict | None = None
        for line in dump.splitlines():
            m = _DIE.match(line)
            if m:
                indent = len(m.group(2))
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                if m.group(3) == "NULL":
                    current = None
                    continue
                off = int(m.group(1), 16)
                current = {"tag": m.group(3), "children": []}
                if stack:
                    self.dies[stack[-1][1]]["children"].append(off)
                self.dies[off] = current
                stack.append((indent, off))
                continue
            a = _ATTR.match(line)
            if a and current is not None:
                current[a.group(1)] = a.group(2)

    @classmethod
    def of_object(cls, path: Path) -> Dwarf | None:
        tool = _dwarfdump()
        if tool is None:
            return None
        done = subprocess.run([tool, "--debug-info", str(path)], capture_output=True, timeout=60)
        return cls(done.stdout.decode("utf-8", "replace")) if done.returncode == 0 else None

    def find(self, c_type: str) -> np.dtype | None:
        """The dtype of ``struct TAG`` or of typedef ``NAME``, as the object defines it."""
        tag, _, name = c_type.partition(" ") if c_type.startswith(("struct ", "union ")) \
            else ("typedef", "", c_type)
        want = {"struct": "DW_TAG_structure_type", "union": "DW_TAG_union_type",
                "typedef": "DW_TAG_typedef"}[tag]
        for off, die in self.dies.items():
            if die["tag"] == want and die.get("DW_AT_name") == f'"{name.strip()}"' \
                    and "DW_AT_declaration" not in die:
                return self.dtype(off)
        return None

    def dtype(self, off: int, depth: int = 0) -> np.dtype | None:
        die = self.dies.get(off)
        if die is None or depth > 32:
            return None
        tag = die["tag"]
        size = _int(die.get("DW_AT_byte_size"))
        if tag == "DW_TAG_base_type":
            enc = die.get("DW_AT_encoding", "")
            if "boolean" in enc:
                return np.dtype(np.bool_)
            if "float" in enc:
                return np.dtype(f"f{size}")
            if "char" in enc and size == 1:
                return np.dtype("S1")
            return _scalar(size, "unsigned" not in enc)
        if tag == "DW_TAG_pointer_type":
            return np.dtype(np.uint64)
        if tag == "DW_TAG_enumeration_type":
            return _scalar(size or 4, False)
        if tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                   "DW_TAG_restrict_type"):
            return self.dtype(_ref(die.get("DW_AT_type")), depth + 1)
        if tag == "DW_TAG_array_type":
            base = self.dtype(_ref(die.get("DW_AT_type")), depth + 1)
            dims = []
            for c in die["children"]:
                sub = self.dies[c]
                if "DW_AT_count" in sub:
                    dims.append(_int(sub["DW_AT_count"]))
                elif "DW_AT_upper_bound" in sub:
                    dims.append(_int(sub["DW_AT_upper_bound"]) + 1)
            if base is None or not dims or 0 in dims:
                return None
            if base == np.dtype("S1") and len(dims) == 1:
                return np.dtype(f"S{dims[0]}")
            return np.dtype((base, tuple(dims)))
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            fields = []
            for i, c in enumerate(die["children"]):
                m = self.dies[c]
                if m["tag"] != "DW_TAG_member" or "DW_AT_bit_size" in m:
                    continue
                dt = self.dtype(_ref(m.get("DW_AT_type")), depth + 1)
                if dt is None:
                    continue
                name = (m.get("DW_AT_name") or f'"_anon{i}"').strip('"')
                fields.append((name, dt, _int(m.get("DW_AT_data_member_location"))))
            return _record(fields, size)
        return None


def _int(text: str | None) -> int:
    if not text:
        return 0
    m = re.match(r"\s*(0x[0-9a-f]+|\d+)", text)
    return int(m.group(1), 0) if m else 0


def _ref(text: str | None) -> int:
    return _int(text) if text else -1
