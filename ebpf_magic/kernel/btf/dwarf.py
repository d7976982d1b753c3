"""Types from DWARF, for what a BPF object's BTF leaves out.

clang's BTF for a BPF object holds only types that globals, maps and function signatures
use; a struct declared inside a function (say the record given to
``bpf_perf_event_output``) is only in the DWARF that ``-g`` also emits. This module turns
the DWARF type entries into a :class:`~ebpf_magic.kernel.btf.spec.Spec`, so the same
:func:`~ebpf_magic.kernel.btf.dtypes.dtype` and :func:`~ebpf_magic.kernel.btf.dtypes.c_decl` apply.

DWARF is read with pyelftools (any DWARF version, either byte order, abbreviation tables
and string forms included); relocations are not applied, which in a relocatable BPF object
leaves section offsets as written (section-relative, addend in place).
"""

from __future__ import annotations

import io
from typing import Any

from ebpf_magic.kernel.btf.spec import (
    INT_BOOL,
    INT_SIGNED,
    BTFError,
    Enumerator,
    Member,
    Param,
    Spec,
    Type,
)

_MODIFIERS = {"DW_TAG_typedef": "typedef", "DW_TAG_const_type": "const",
              "DW_TAG_volatile_type": "volatile", "DW_TAG_restrict_type": "restrict",
              "DW_TAG_atomic_type": "volatile", "DW_TAG_pointer_type": "ptr",
              "DW_TAG_reference_type": "ptr", "DW_TAG_rvalue_reference_type": "ptr"}
_AGGREGATES = ("DW_TAG_structure_type", "DW_TAG_class_type", "DW_TAG_union_type")
_SIGNED = {0x05, 0x06, 0x0D}  # DW_ATE_signed, signed_char, signed_fixed
_BOOL, _FLOAT = 0x02, 0x04


def dwarf_spec(elf_bytes: bytes) -> Spec:
    """Every type in the DWARF of an ELF object, as a spec (ids in DWARF order)."""
    from elftools.common.exceptions import ELFError, ELFParseError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(bytes(elf_bytes)))
        if not elf.has_dwarf_info():
            raise BTFError("the ELF object has no DWARF", "compile with -g")
        info = elf.get_dwarf_info(relocate_dwarf_sections=False)
        dies = [die for cu in info.iter_CUs() for die in cu.iter_DIEs() if die.tag]
    except (ELFError, ELFParseError) as e:
        raise BTFError(f"cannot read the DWARF of this ELF object: {e}") from None
    big_endian = not elf.little_endian
    return _Converter(dies, big_endian).run()


class _Converter:
    def __init__(self, dies: list[Any], big_endian: bool) -> None:
        self.dies = dies
        self.big_endian = big_endian
        self.ids: dict[int, int] = {}  # DIE offset -> type id
        self.by_id: dict[int, Any] = {}  # type id -> DIE
        self.types: list[Type | None] = []

    def _new_id(self) -> int:
        self.types.append(None)
        return len(self.types)

    def run(self) -> Spec:
        typed = [d for d in self.dies if _kind_of(d.tag)]
        for die in typed:
            self.ids[die.offset] = self._new_id()
            self.by_id[self.ids[die.offset]] = die
        for die in typed:
            self._convert(die)
        return Spec.from_types(list(self.types))

    def _ref(self, die: Any) -> int:
        attr = die.attributes.get("DW_AT_type")
        if attr is None:
            return 0
        offset = attr.value + (die.cu.cu_offset if attr.form != "DW_FORM_ref_addr" else 0)
        return self.ids.get(offset, 0)

    def _put(self, type_id: int, **fields: Any) -> None:
        self.types[type_id - 1] = Type(type_id, **fields)

    def _convert(self, die: Any) -> None:
        type_id, name, attrs = self.ids[die.offset], _name(die), die.attributes
        size = _int_attr(die, "DW_AT_byte_size")
        kind = _kind_of(die.tag)
        if kind == "base":
            enc = _int_attr(die, "DW_AT_encoding")
            if enc == _FLOAT:
                self._put(type_id, kind="float", name=name, size=size)
            else:
                flags = (INT_SIGNED if enc in _SIGNED else 0) | (INT_BOOL if enc == _BOOL else 0)
                self._put(type_id, kind="int", name=name, size=size, encoding=flags,
                          bits=size * 8)
        elif kind in ("typedef", "const", "volatile", "restrict", "ptr"):
            self._put(type_id, kind=kind, name=name if kind == "typedef" else "",
                      type=self._ref(die))
        elif kind == "aggregate":
            union = die.tag == "DW_TAG_union_type"
            if "DW_AT_declaration" in attrs:
                self._put(type_id, kind="fwd", name=name, kind_flag=union)
                return
            members = tuple(self._member(m, union) for m in die.iter_children()
                            if m.tag == "DW_TAG_member")
            self._put(type_id, kind="union" if union else "struct", name=name, size=size,
                      kind_flag=any(m.bitfield_size for m in members), members=members)
        elif kind == "enum":
            values = tuple(Enumerator(_name(e), _int_attr(e, "DW_AT_const_value"))
                           for e in die.iter_children() if e.tag == "DW_TAG_enumerator")
            under = self.by_id.get(self._ref(die))
            signed = any(v.value < 0 for v in values) or bool(
                under is not None and _int_attr(under, "DW_AT_encoding") in _SIGNED)
            self._put(type_id, kind="enum64" if size > 4 else "enum", name=name, size=size,
                      kind_flag=signed, enumerators=values)
        elif kind == "array":
            dims = [_count(s) for s in die.iter_children() if s.tag == "DW_TAG_subrange_type"]
            elem = self._ref(die)
            for n in reversed(dims[1:]):
                inner = self._new_id()
                self._put(inner, kind="array", type=elem, nelems=n)
                elem = inner
            self._put(type_id, kind="array", type=elem, nelems=dims[0] if dims else 0)
        elif kind == "func_proto":
            params = tuple(Param(_name(p), self._ref(p)) if p.tag == "DW_TAG_formal_parameter"
                           else Param("", 0) for p in die.iter_children()
                           if p.tag in ("DW_TAG_formal_parameter",
                                        "DW_TAG_unspecified_parameters"))
            self._put(type_id, kind="func_proto", type=self._ref(die), params=params)

    def _member(self, die: Any, union: bool) -> Member:
        attrs = die.attributes
        byte = 0 if union and "DW_AT_data_member_location" not in attrs else _location(die)
        bits = _int_attr(die, "DW_AT_bit_size")
        if not bits:
            return Member(_name(die), self._ref(die), byte * 8)
        if "DW_AT_data_bit_offset" in attrs:
            bit = _int_attr(die, "DW_AT_data_bit_offset")
        else:  # DWARF 2/3 style: counted from the most significant bit of the storage unit
            from_msb = _int_attr(die, "DW_AT_bit_offset")
            unit = _int_attr(die, "DW_AT_byte_size") or self._sizeof(self._ref(die))
            bit = byte * 8 + (from_msb if self.big_endian else unit * 8 - from_msb - bits)
        return Member(_name(die), self._ref(die), bit, bits)

    def _sizeof(self, type_id: int) -> int:
        """Byte size of a type's DIE, through typedefs and qualifiers."""
        for _ in range(64):
            die = self.by_id.get(type_id)
            if die is None:
                return 0
            if "DW_AT_byte_size" in die.attributes:
                return _int_attr(die, "DW_AT_byte_size")
            type_id = self._ref(die)
        return 0


def _kind_of(tag: str) -> str:
    if tag == "DW_TAG_base_type":
        return "base"
    if tag in _MODIFIERS:
        return _MODIFIERS[tag]
    if tag in _AGGREGATES:
        return "aggregate"
    return {"DW_TAG_enumeration_type": "enum", "DW_TAG_array_type": "array",
            "DW_TAG_subroutine_type": "func_proto"}.get(tag, "")


def _name(die: Any) -> str:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return ""
    value = attr.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int_attr(die: Any, name: str) -> int:
    attr = die.attributes.get(name)
    return int(attr.value) if attr is not None and isinstance(attr.value, int) else 0


def _count(subrange: Any) -> int:
    if "DW_AT_count" in subrange.attributes:
        return _int_attr(subrange, "DW_AT_count")
    if "DW_AT_upper_bound" in subrange.attributes:
        return _int_attr(subrange, "DW_AT_upper_bound") + 1
    return 0  # a flexible array member


def _location(die: Any) -> int:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return 0
    if isinstance(attr.value, int):
        return attr.value
    expr = list(attr.value)  # DW_OP_plus_uconst <uleb128>, as DWARF 2 writes it
    if expr and expr[0] == 0x23:
        value, shift = 0, 0
        for byte in expr[1:]:
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return value
    raise BTFError(f"member {_name(die)!r} has a location expression this reader cannot follow")
