"""BTF, the BPF Type Format: parse raw BTF, split BTF, and the ``.BTF`` section of an ELF object.

A :class:`Spec` indexes every type record once with numpy (where each record starts, its
kind and its name offset) and decodes a record into a :class:`Type` only when asked, so the
kernel's own BTF (about 130,000 types) parses in about 0.1 s (``bench/btf.py``). Type id 0 is
``void``; split BTF (a kernel module's) continues the ids and strings of its base.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ebpf_magic.errors import BPFError
from ebpf_magic.kernel.btf import elf

MAGIC = 0xEB9F
VMLINUX = "/sys/kernel/btf/vmlinux"

KINDS = ("void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile",
         "const", "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag",
         "type_tag", "enum64")
KIND_CODES = {name: code for code, name in enumerate(KINDS)}
# 32-bit words after the 12-byte common header: (fixed, per vlen entry), by kind code
_EXTRA = ((0, 0), (1, 0), (0, 0), (3, 0), (0, 3), (0, 3), (0, 2), (0, 0), (0, 0), (0, 0),
          (0, 0), (0, 0), (0, 0), (0, 2), (1, 0), (0, 3), (0, 0), (1, 0), (0, 0), (0, 3))
# kinds whose third header word is a size, not a type id
_SIZED = {"int", "struct", "union", "enum", "enum64", "datasec", "float"}
# kinds that only qualify or rename another type
MODIFIERS = frozenset({"typedef", "volatile", "const", "restrict", "type_tag"})

INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4


class BTFError(BPFError):
    """BTF that cannot be read, or a type or name it does not have."""


class Member(NamedTuple):
    """A struct or union member; ``bit_offset`` from the start of the aggregate."""

    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0


class Enumerator(NamedTuple):
    name: str
    value: int


class Param(NamedTuple):
    """A ``func_proto`` parameter (``type`` 0 and no name: the ``...`` of a variadic)."""

    name: str
    type: int


class VarSecinfo(NamedTuple):
    """One variable of a DATASEC: its VAR (or FUNC) type id, offset and size in the section."""

    type: int
    offset: int
    size: int


class Type(NamedTuple):
    """One decoded BTF type.

    ``size`` is set for int/struct/union/enum/enum64/datasec/float; ``type`` is the type
    referred to (pointee, typedef target, array element, return type, variable type, tagged
    type). ``encoding``/``bits``/``int_offset`` describe ints, ``nelems``/``index_type``
    arrays, ``linkage`` funcs and vars, ``component_idx`` decl tags.
    """

    id: int
    kind: str
    name: str = ""
    size: int = 0
    type: int = 0
    kind_flag: bool = False
    members: tuple[Member, ...] = ()
    enumerators: tuple[Enumerator, ...] = ()
    params: tuple[Param, ...] = ()
    secinfo: tuple[VarSecinfo, ...] = ()
    encoding: int = 0
    bits: int = 0
    int_offset: int = 0
    nelems: int = 0
    index_type: int = 0
    linkage: int = 0
    component_idx: int = -1

    @property
    def signed(self) -> bool:
        """Ints with the SIGNED encoding; enums whose kind flag says signed."""
        if self.kind == "int":
            return bool(self.encoding & INT_SIGNED)
        return self.kind in ("enum", "enum64") and self.kind_flag

    @property
    def is_bool(self) -> bool:
        return self.kind == "int" and bool(self.encoding & INT_BOOL)

    @property
    def is_char(self) -> bool:
        """Plain ``char`` (or the CHAR encoding): arrays of it are strings."""
        return self.kind == "int" and self.size == 1 and (
            self.name == "char" or bool(self.encoding & INT_CHAR))


VOID = Type(0, "void")


class Spec:
    """The types of one BTF blob (plus its base, for split BTF)."""

    def __init__(self) -> None:
        self.base: Spec | None = None
        self.byteorder = "<"
        self._first = 1  # id of the first type held here (base types come before)
        self._strings = b"\0"
        self._str_base = 0  # string offsets below this are the base's
        self._raw = b""  # the type section
        self._starts = np.zeros(0, np.int64)  # word index of each record
        self._kinds = np.zeros(0, np.uint8)
        self._name_offs = np.zeros(0, np.uint32)
        self._decoded: dict[int, Type] = {}
        self._datasec_fixups: dict[str, tuple[int, dict[str, int]]] = {}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes, base: Spec | None = None) -> Spec:
        """Parse raw BTF (as in ``/sys/kernel/btf/*``); ``base`` for split BTF."""
        raw = bytes(raw)
        if len(raw) < 24:
            raise BTFError(f"BTF of {len(raw)} bytes is too short for its 24-byte header")
        if struct.unpack_from("<H", raw)[0] == MAGIC:
            order = "<"
        elif struct.unpack_from(">H", raw)[0] == MAGIC:
            order = ">"
        else:
            raise BTFError(f"not BTF: magic {raw[:2].hex()}, expected 9feb (or eb9f)",
                           "pass the raw BTF blob, or an ELF object to Spec.from_elf")
        _v, _f, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "BBIIIII", raw, 2)
        types_at, strs_at = hdr_len + type_off, hdr_len + str_off
        if (types_at + type_len > len(raw) or strs_at + str_len > len(raw) or type_len % 4
                or hdr_len < 24):
            raise BTFError("BTF header describes sections beyond the data (truncated BTF?)")
        spec = cls()
        spec.byteorder = order
        spec._strings = raw[strs_at:strs_at + str_len]
        if base is not None:
            if base.byteorder != order:
                raise BTFError("split BTF and its base have different byte orders")
            spec.base = base
            spec._first = base._first + len(base._starts)
            spec._str_base = base._str_base + len(base._strings)
        words = np.frombuffer(raw, order + "u4", type_len // 4, types_at)
        spec._raw = raw[types_at:types_at + type_len]
        spec._starts = _record_starts(words)
        starts = spec._starts
        info = words[starts + 1] if len(starts) else np.zeros(0, np.uint32)
        spec._kinds = ((info >> 24) & 0x1F).astype(np.uint8)
        spec._name_offs = words[starts].astype(np.uint32) if len(starts) else spec._name_offs
        return spec

    @classmethod
    def from_elf(cls, data: bytes) -> Spec:
        """The ``.BTF`` section of an ELF object (such as ``clang -g -target bpf`` emits).

        DATASEC sizes and variable offsets, which the compiler leaves as 0 in a relocatable
        object, are taken from the ELF section sizes and symbol values, as a loader does.
        """
        try:
            obj = elf.ELF(data)
        except elf.ELFError as e:
            raise BTFError(e.message, e.hint) from None
        raw = obj.section_data(".BTF")
        if raw is None:
            raise BTFError("the ELF object has no .BTF section",
                           "compile with clang -g -O2 -target bpf, which emits BTF")
        spec = cls.parse(raw)
        sizes = {s.name: s.size for s in obj.sections}
        offsets: dict[str, dict[str, int]] = {}
        for sym in obj.symbols():
            if 0 < sym.shndx < len(obj.sections) and sym.name:
                offsets.setdefault(obj.sections[sym.shndx].name, {})[sym.name] = sym.value
        spec._datasec_fixups = {name: (sizes[name], offsets.get(name, {})) for name in sizes}
        return spec

    @classmethod
    def from_types(cls, types: list[Type]) -> Spec:
        """A spec holding already decoded ``types`` (ids 1..N in order)."""
        spec = cls()
        for i, t in enumerate(types, 1):
            if t.id != i:
                raise ValueError(f"type {i} has id {t.id}; ids must run 1..N in order")
            spec._decoded[i] = t
        spec._kinds = np.array([KIND_CODES[t.kind] for t in types], np.uint8)
        names = sorted({t.name for t in types if t.name})
        spec._strings = b"\0" + b"".join(n.encode() + b"\0" for n in names)
        off, where = 1, {}
        for n in names:
            where[n] = off
            off += len(n.encode()) + 1
        spec._name_offs = np.array([where.get(t.name, 0) for t in types], np.uint32)
        spec._starts = np.zeros(len(types), np.int64)
        return spec

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, void included (so ids run 0..len-1)."""
        return self._first + len(self._starts)

    def __iter__(self) -> Iterator[Type]:
        """Every type, void first."""
        return (self.type(i) for i in range(len(self)))

    def type(self, type_id: int) -> Type:
        """The type with id ``type_id``."""
        if type_id < self._first:
            if type_id == 0:
                return VOID
            if self.base is None or type_id < 0:
                raise BTFError(f"no BTF type with id {type_id}")
            return self.base.type(type_id)
        t = self._decoded.get(type_id)
        if t is None:
            if type_id >= len(self):
                raise BTFError(f"no BTF type with id {type_id} (the last is {len(self) - 1})")
            t = self._decoded[type_id] = self._decode(type_id)
        return t

    def resolve(self, type_id: int) -> Type:
        """The type behind typedefs, const, volatile, restrict and type tags."""
        t = self.type(type_id)
        for _ in range(64):
            if t.kind not in MODIFIERS:
                return t
            t = self.type(t.type)
        raise BTFError(f"type {type_id} is a loop of typedefs or qualifiers")

    def find(self, name: str, kind: str | None = None) -> list[Type]:
        """Every type called ``name`` (of ``kind``, if given), base types first."""
        if kind is not None and kind not in KIND_CODES:
            raise BTFError(f"unknown BTF kind {kind!r}", f"kinds are: {', '.join(KINDS[1:])}")
        found = self.base.find(name, kind) if self.base is not None else []
        if not name:
            return found
        offsets = _string_offsets(self._strings, name.encode())
        offsets = [o + self._str_base for o in offsets]
        base = self.base
        while base is not None:  # split records may name their base's strings
            offsets += [o + base._str_base for o in _string_offsets(base._strings, name.encode())]
            base = base.base
        if not offsets:
            return found
        hits = np.isin(self._name_offs, np.array(offsets, np.uint32))
        if kind is not None:
            hits &= self._kinds == KIND_CODES[kind]
        return found + [self.type(self._first + int(i)) for i in np.flatnonzero(hits)]

    def names(self, kind: str) -> list[str]:
        """The names of every named type of ``kind`` held here and in the base."""
        if kind not in KIND_CODES:
            raise BTFError(f"unknown BTF kind {kind!r}", f"kinds are: {', '.join(KINDS[1:])}")
        found = self.base.names(kind) if self.base is not None else []
        offs = self._name_offs[(self._kinds == KIND_CODES[kind]) & (self._name_offs != 0)]
        return found + [self.string(int(o)) for o in offs]

    def string(self, offset: int) -> str:
        """The string at ``offset`` of the string section (the base's for low offsets)."""
        off = offset - self._str_base
        if off < 0:
            assert self.base is not None
            return self.base.string(offset)
        end = self._strings.find(b"\0", off)
        if end < 0:
            if off >= len(self._strings):
                raise BTFError(f"string offset {offset} is beyond the BTF string section")
            end = len(self._strings)
        return self._strings[off:end].decode("utf-8", "replace")

    # -- decoding -------------------------------------------------------------------------

    def _decode(self, type_id: int) -> Type:
        at = 4 * int(self._starts[type_id - self._first])
        name_off, info, size_or_type = struct.unpack_from(self.byteorder + "3I", self._raw, at)
        code = (info >> 24) & 0x1F
        kind, vlen, flag = KINDS[code], info & 0xFFFF, bool(info >> 31)
        fixed, per = _EXTRA[code]
        extra = struct.unpack_from(f"{self.byteorder}{fixed + per * vlen}I", self._raw, at + 12)
        string = self.string
        kw: dict = {"size" if kind in _SIZED else "type": size_or_type}
        if kind == "int":
            enc = extra[0]
            kw.update(encoding=(enc >> 24) & 0xF, int_offset=(enc >> 16) & 0xFF, bits=enc & 0xFF)
        elif kind == "array":
            kw.update(type=extra[0], index_type=extra[1], nelems=extra[2])
        elif kind in ("struct", "union"):
            members = []
            for i in range(0, 3 * vlen, 3):
                m_name, m_type, off = extra[i:i + 3]
                bits, off = (off >> 24, off & 0xFFFFFF) if flag else (0, off)
                members.append(Member(string(m_name), m_type, off, bits))
            kw["members"] = tuple(members)
        elif kind in ("enum", "enum64"):
            step, width = (2, 32) if kind == "enum" else (3, 64)
            vals = []
            for i in range(0, step * vlen, step):
                value = extra[i + 1] if step == 2 else extra[i + 1] | extra[i + 2] << 32
                if flag and value >> (width - 1):
                    value -= 1 << width
                vals.append(Enumerator(string(extra[i]), value))
            kw["enumerators"] = tuple(vals)
        elif kind == "func_proto":
            kw["params"] = tuple(Param(string(extra[i]), extra[i + 1])
                                 for i in range(0, 2 * vlen, 2))
        elif kind == "var":
            kw["linkage"] = extra[0]
        elif kind == "func":
            kw["linkage"] = vlen
        elif kind == "decl_tag":
            kw["component_idx"] = extra[0] - (1 << 32) if extra[0] >> 31 else extra[0]
        t = Type(type_id, kind, string(name_off), kind_flag=flag, **kw)
        if kind == "datasec":
            return self._fix_datasec(t, [VarSecinfo(*extra[i:i + 3])
                                         for i in range(0, 3 * vlen, 3)])
        return t

    def _fix_datasec(self, t: Type, infos: list[VarSecinfo]) -> Type:
        size = t.size
        fix = self._datasec_fixups.get(t.name)
        if fix is not None:
            section_size, symbols = fix
            size = size or section_size
            fixed = []
            for info in infos:
                var_name = self.type(info.type).name
                offset = symbols.get(var_name, info.offset)
                fixed.append(info._replace(offset=offset))
            infos = fixed
        return t._replace(size=size, secinfo=tuple(infos))


def _record_starts(words: np.ndarray) -> np.ndarray:
    """Word index where each type record starts (records are variable-length)."""
    w = words.tolist()
    n = len(w)
    fixed = [e[0] + 3 for e in _EXTRA]
    per = [e[1] for e in _EXTRA]
    starts = []
    append = starts.append
    i = 0
    try:
        while i < n:
            append(i)
            info = w[i + 1]
            k = (info >> 24) & 0x1F
            i += fixed[k] + per[k] * (info & 0xFFFF)
    except IndexError:
        if i + 1 < n:  # an unknown kind code
            raise BTFError(f"unknown BTF kind {(w[i + 1] >> 24) & 0x1F} in type record "
                           f"{len(starts)}", "this BTF is newer than this reader") from None
        raise BTFError("BTF type section ends inside a type record") from None
    if i != n:
        raise BTFError("BTF type section ends inside a type record")
    return np.array(starts, np.int64)


def _string_offsets(strings: bytes, name: bytes) -> list[int]:
    """Offsets of every NUL-terminated string equal to ``name``."""
    needle = b"\0" + name + b"\0"
    out = [0] if strings.startswith(name + b"\0") else []  # split BTF has no leading NUL
    at = strings.find(needle)
    while at >= 0:
        out.append(at + 1)
        at = strings.find(needle, at + 1)
    return out


@functools.cache
def _vmlinux(path: str) -> Spec:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise BTFError(f"{path} does not exist: this kernel exposes no BTF",
                       "a kernel built with CONFIG_DEBUG_INFO_BTF=y provides it") from None
    except PermissionError:
        raise BTFError(f"cannot read {path}", "run as a user that can read it") from None
    return Spec.parse(raw)


def vmlinux(path: str = VMLINUX) -> Spec:
    """The running kernel's BTF, parsed once per process."""
    return _vmlinux(path)



@functools.cache
def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digest(path: str = VMLINUX) -> str:
    """The SHA-256 (hex) of the running kernel's BTF, read once per process: it changes only
    with the kernel. OSError where it cannot be read."""
    return _digest(path)
