"""numpy dtypes, C spellings and field listings from BTF types.

:func:`dtype` gives the exact C layout (offsets, itemsize, padding) in the package's
conventions (see :mod:`ebpf_magic.internal.dtypes`):

* typedefs, ``const``, ``volatile``, ``restrict`` and type tags are looked through;
* plain ``char`` arrays are bytes ``S<N>``; other arrays are numpy subarrays (``[0]`` arrays
  of flexible members hold no bytes);
* ints keep their signedness, ``bool`` is ``?``, pointers are ``u8`` (BPF is 64-bit);
* enums are ints of their size, with ``metadata["enum"] = {value: name}``;
* bitfields cannot be numpy fields: each run of adjacent bitfields keeps its storage bytes
  as a ``u1`` array field named ``__bits<byte offset>``, and the struct's
  ``metadata["bitfields"]`` maps every named bitfield to ``(storage field, bit offset in the
  storage, width, declared dtype, big endian)``;
* a union is a struct dtype whose members all start at offset 0 (``metadata["union"]``):
  every member's view of the bytes is a column, and writing one member writes only it;
* anonymous struct and union members are flattened into their parent, as C names them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ebpf_magic.kernel.btf.spec import MODIFIERS, BTFError, Member, Spec, Type

_cache: weakref.WeakKeyDictionary[Spec, dict[int, np.dtype]] = weakref.WeakKeyDictionary()


def dtype(spec: Spec, type_id: int) -> np.dtype:
    """The numpy dtype with the C layout of type ``type_id``."""
    memo = _cache.setdefault(spec, {})
    dt = memo.get(type_id)
    if dt is None:
        dt = memo[type_id] = _Builder(spec).build(type_id)
    return dt


def datasec(spec: Spec, name: str) -> dict[str, tuple[int, np.dtype]]:
    """The variables of DATASEC ``name`` (``.rodata``, ``.bss``, ``.data``...): offset, dtype."""
    secs = spec.find(name, "datasec")
    if not secs:
        have = sorted({t.name for t in spec if t.kind == "datasec"})
        raise BTFError(f"no data section {name!r} in this BTF",
                       f"sections with variables: {', '.join(have) or 'none'}")
    out = {}
    for info in secs[0].secinfo:
        var = spec.type(info.type)
        if var.kind == "var":
            out[var.name] = (info.offset, dtype(spec, var.type))
    return out


def c_decl(spec: Spec, type_id: int, name: str = "") -> str:
    """The C spelling of type ``type_id`` (declaring ``name``, if given)."""
    return _decl(spec, type_id, name, 0).strip()


class StructField(NamedTuple):
    """One row of :func:`struct_fields`; ``bits`` is the width of a bitfield, else 0."""

    field: str
    offset: int
    bit_offset: int
    size: int
    c_type: str
    bits: int = 0


def struct_fields(spec: Spec, name: str) -> list[StructField]:
    """The members of struct (or union) ``name``, anonymous members' fields inlined."""
    found = [t for t in spec.find(name) if t.kind in ("struct", "union")]
    if not found:
        raise BTFError(f"no struct or union {name!r} in this BTF",
                       "check the spelling (without the 'struct ' prefix)")
    return type_fields(spec, found[0])


def type_fields(spec: Spec, t: Type) -> list[StructField]:
    """The members of struct or union type ``t``, anonymous members' fields inlined."""
    rows: list[StructField] = []
    _list_fields(spec, t, 0, rows)
    return rows


def _list_fields(spec: Spec, t: Type, base: int, rows: list[StructField]) -> None:
    for m in t.members:
        inner = spec.resolve(m.type)
        bit = base + m.bit_offset
        if not m.name and inner.kind in ("struct", "union"):
            _list_fields(spec, inner, bit, rows)
            continue
        bits = _bitfield_width(spec, m)
        rows.append(StructField(m.name, bit // 8, bit, _sizeof(spec, m.type),
                                c_decl(spec, m.type), bits))


# -- dtypes -------------------------------------------------------------------------------


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.order = spec.byteorder
        self.depth = 0

    def build(self, type_id: int) -> np.dtype:
        self.depth += 1
        try:
            if self.depth > 64:
                raise BTFError(f"type {type_id} nests too deeply (a loop?)")
            return self._build(self.spec.resolve(type_id))
        finally:
            self.depth -= 1

    def _build(self, t: Type) -> np.dtype:
        kind = t.kind
        if kind == "int":
            return _int_dtype(t, self.order)
        if kind == "ptr":
            return np.dtype(self.order + "u8")
        if kind in ("enum", "enum64"):
            base = np.dtype(f"{self.order}{'i' if t.signed else 'u'}{t.size}")
            names: dict[int, str] = {}
            for e in t.enumerators:
                names.setdefault(_wrap(e.value, base), e.name)
            return np.dtype(base, metadata={"enum": names})
        if kind == "float":
            if t.size in (2, 4, 8):
                return np.dtype(f"{self.order}f{t.size}")
            return np.dtype((self.order + "u8", (t.size // 8,)))
        if kind == "array":
            elem_t = self.spec.resolve(t.type)
            if elem_t.is_char:
                return np.dtype(f"S{t.nelems}") if t.nelems else np.dtype(("S1", (0,)))
            elem = self.build(t.type)
            if elem.subdtype is not None:  # arrays of arrays: one multi-dimensional subarray
                base, shape = elem.subdtype
                return np.dtype((base, (t.nelems, *shape)))
            return np.dtype((elem, (t.nelems,)))
        if kind in ("struct", "union"):
            return self._aggregate(t)
        what = "void" if kind == "void" else f"{kind} {t.name!r}".strip()
        raise BTFError(f"type {t.id} ({what}) has no data layout",
                       "only ints, floats, enums, pointers, arrays, structs and unions do")

    def _aggregate(self, t: Type) -> np.dtype:
        names: list[str] = []
        formats: list[np.dtype] = []
        offsets: list[int] = []
        bitfields: dict[str, tuple] = {}
        run: list[tuple[str, int, int, np.dtype]] = []  # adjacent bitfields: name, bit, width

        def close_run() -> None:
            if not run:
                return
            first = min(bit for _, bit, _, _ in run) // 8
            last = max(bit + width for _, bit, width, _ in run)
            nbytes = -(-last // 8) - first
            storage = f"__bits{first}"
            while storage in names:  # a union's bitfields all start at byte 0
                storage += "_"
            names.append(storage)
            formats.append(np.dtype(("u1", (nbytes,))))
            offsets.append(first)
            for name, bit, width, decl in run:
                if name:
                    bitfields[name] = (storage, bit - 8 * first, width, decl, self.order == ">")
            run.clear()

        for name, bit, width, type_id in self._members(t, 0):
            if width:
                run.append((name, bit, width, self.build(type_id)))
                continue
            close_run()
            if bit % 8:
                raise BTFError(f"member {name!r} of {t.kind} {t.name!r} starts mid-byte")
            names.append(name)
            formats.append(self.build(type_id))
            offsets.append(bit // 8)
        close_run()
        metadata: dict = {}
        if bitfields:
            metadata["bitfields"] = bitfields
        if t.kind == "union" or _overlaps(formats, offsets):
            metadata["union"] = True
        spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": t.size}
        return np.dtype(spec, metadata=metadata) if metadata else np.dtype(spec)

    def _members(self, t: Type, base: int) -> Iterator[tuple[str, int, int, int]]:
        """(name, bit offset, bitfield width, type id) with anonymous aggregates inlined."""
        for m in t.members:
            inner = self.spec.resolve(m.type)
            bit = base + m.bit_offset
            if not m.name and inner.kind in ("struct", "union"):
                yield from self._members(inner, bit)
                continue
            width = _bitfield_width(self.spec, m)
            if width and inner.kind == "int" and not m.bitfield_size:
                bit += inner.int_offset  # old-style bitfield: the int type carries the bits
            if not m.name and width:
                yield "", bit, width, m.type  # unnamed padding bits: storage, no column
                continue
            yield m.name, bit, width, m.type


def _bitfield_width(spec: Spec, m: Member) -> int:
    if m.bitfield_size:
        return m.bitfield_size
    inner = spec.resolve(m.type)
    if inner.kind == "int" and (inner.int_offset or inner.bits not in (0, inner.size * 8)):
        return inner.bits
    return 0


def _int_dtype(t: Type, order: str) -> np.dtype:
    if t.is_bool and t.size == 1:
        return np.dtype("?")
    if t.size in (1, 2, 4, 8):
        return np.dtype(f"{order}{'i' if t.signed else 'u'}{t.size}")
    if t.size == 16:  # __int128: two 64-bit words in memory order
        return np.dtype((order + "u8", (2,)))
    raise BTFError(f"int {t.name!r} of {t.size} bytes has no numpy type")


def _wrap(value: int, dt: np.dtype) -> int:
    """``value`` as an integer of ``dt`` reads it (enumerators are stored as raw bits)."""
    bits = dt.itemsize * 8
    value &= (1 << bits) - 1
    if dt.kind == "i" and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def _overlaps(formats: list[np.dtype], offsets: list[int]) -> bool:
    spans = sorted((off, off + f.itemsize) for f, off in zip(formats, offsets, strict=True)
                   if f.itemsize)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))


def _sizeof(spec: Spec, type_id: int) -> int:
    t = spec.resolve(type_id)
    if t.kind == "ptr":
        return 8
    if t.kind == "array":
        return t.nelems * _sizeof(spec, t.type)
    return t.size


# -- C spelling ---------------------------------------------------------------------------


def _decl(spec: Spec, type_id: int, inner: str, depth: int) -> str:
    if depth > 64:
        raise BTFError(f"type {type_id} nests too deeply (a loop?)")
    t = spec.type(type_id)
    kind = t.kind
    pad = f" {inner}" if inner and not inner.startswith("[") else inner
    if kind == "void":
        return "void" + pad
    if kind in ("int", "float", "typedef"):
        return t.name + pad
    if kind in ("struct", "union", "enum", "enum64", "fwd"):
        word = {"enum64": "enum", "fwd": "union" if t.kind_flag else "struct"}.get(kind, kind)
        return f"{word} {t.name or '{...}'}{pad}"
    if kind == "ptr":
        target = spec.type(t.type)
        star = "*" + inner
        if target.kind in ("array", "func_proto"):
            star = f"({star})"
        return _decl(spec, t.type, star, depth + 1)
    if kind in ("const", "volatile", "restrict"):
        target = spec.type(t.type)
        while target.kind in MODIFIERS and target.kind != "typedef":
            target = spec.type(target.type)
        if target.kind == "ptr":
            return _decl(spec, t.type, f"{kind} {inner}".strip(), depth + 1)
        return f"{kind} " + _decl(spec, t.type, inner, depth + 1)
    if kind == "array":
        return _decl(spec, t.type, f"{inner}[{t.nelems}]", depth + 1)
    if kind == "func_proto":
        params = ", ".join("..." if not p.type and not p.name else _decl(spec, p.type, p.name,
                                                                          depth + 1)
                           for p in t.params) or "void"
        return _decl(spec, t.type, f"{inner}({params})", depth + 1)
    if kind == "func":
        return _decl(spec, t.type, inner or t.name, depth + 1)
    if kind == "var":
        return _decl(spec, t.type, inner or t.name, depth + 1)
    if kind in ("type_tag", "decl_tag"):
        return _decl(spec, t.type, inner, depth + 1)
    if kind == "datasec":
        return f"SEC(\"{t.name}\")"
    raise BTFError(f"type {type_id} has unknown kind {kind!r}")
