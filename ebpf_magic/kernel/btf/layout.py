"""Kernel types as tables: a struct's fields, offsets, sizes and C types, and its C definition.

``struct("task_struct")`` lists ``struct task_struct``; ``struct("task_struct.se")`` follows
the member ``se`` into ``struct sched_entity`` (offsets still from the start of
``task_struct``); a pointer member (``task_struct.mm``) is followed to the type it points to,
whose offsets then start again at 0.
"""

from __future__ import annotations

import pandas as pd

from ebpf_magic.internal.tables import Listing
from ebpf_magic.kernel.btf.dtypes import StructField, c_decl, type_fields
from ebpf_magic.kernel.btf.spec import BTFError, Spec, Type, vmlinux

COLUMNS = ["field", "offset", "size", "c_type", "bits"]


def lookup(path: str, spec: Spec | None = None) -> tuple[Type, int, str, StructField | None]:
    """Follow ``NAME[.FIELD...]`` through members and pointers.

    Returns (the struct or union reached, the byte offset of its start, its C spelling,
    None); when the last FIELD is neither struct nor union, the struct holding it and,
    last, that field's row with its offset from the start of ``NAME``.
    """
    spec = spec or vmlinux()
    name, *fields = path.strip().removeprefix("struct ").removeprefix("union ").split(".")
    found = [t for t in spec.find(name) if t.kind in ("struct", "union")]
    if not found:
        raise BTFError(f"no struct or union {name!r} in the kernel's BTF",
                       "Check the spelling, without 'struct '; list types with "
                       "bpftool btf dump file /sys/kernel/btf/vmlinux.")
    t, base, walked = found[0], 0, name
    for i, field in enumerate(fields):
        rows = {f.field: f for f in type_fields(spec, t)}
        if field not in rows:
            raise BTFError(f"{walked} has no member {field!r}",
                           f"Its members: {', '.join(list(rows)[:40])}")
        row = rows[field]
        inner, start = spec.resolve(_member_type(spec, t, field)), base + row.offset
        if inner.kind == "ptr":
            inner, start = spec.resolve(inner.type), 0
        while inner.kind == "array":
            inner = spec.resolve(inner.type)
        if inner.kind not in ("struct", "union"):
            if i + 1 < len(fields):
                raise BTFError(f"{walked}.{field} is {row.c_type}, not a struct or union, so it "
                               f"has no member {fields[i + 1]!r}",
                               f"%bpf struct {walked}.{field} shows its offset and size.")
            return t, base, f"{t.kind} {t.name or '{...}'}", \
                row._replace(offset=base + row.offset)
        t, base, walked = inner, start, f"{walked}.{field}"
    return t, base, f"{t.kind} {t.name or '{...}'}", None


def _member_type(spec: Spec, t: Type, field: str) -> int:
    for m in t.members:
        if m.name == field:
            return m.type
        inner = spec.resolve(m.type)
        if not m.name and inner.kind in ("struct", "union"):
            found = _member_type(spec, inner, field)
            if found:
                return found
    return 0


def struct(path: str, spec: Spec | None = None) -> pd.DataFrame:
    """The fields of kernel struct or union ``NAME[.FIELD...]`` as a DataFrame.

    Columns: ``field``, ``offset`` (bytes), ``size`` (bytes), ``c_type``, ``bits`` (a
    bitfield's width, else 0; its bit offset is ``offset * 8`` plus ``bit_offset``).
    A path ending at a field that is no struct or union (``task_struct.tgid``) gives
    that field's own row. Offsets count from the start of ``NAME``, or of the struct
    a pointer member leads to.
    """
    spec = spec or vmlinux()
    t, base, _, field = lookup(path, spec)
    fields = [field] if field is not None else [
        f._replace(offset=base + f.offset) for f in type_fields(spec, t)]
    frame = Listing([(f.field, f.offset, f.size, f.c_type, f.bits) for f in fields],
                    columns=COLUMNS)
    frame.attrs["type"] = path
    return frame


def definition(path: str, spec: Spec | None = None) -> str:
    """The C definition of kernel struct or union ``NAME[.FIELD...]``, offsets in comments;
    for a path ending at a field that is no struct or union, that field's declaration."""
    spec = spec or vmlinux()
    t, base, spelling, field = lookup(path, spec)
    members = [m for m in t.members if field is None or m.name == field.field]
    if field is not None and not members:  # a member of an anonymous struct or union
        return f"\t{field.c_type} {field.field};".replace("* ", "*").ljust(48) + \
            f"/* {field.offset} */"
    lines = [f"{spelling} {{"] if field is None else []
    for m in members:
        decl = c_decl(spec, m.type, m.name)
        if m.bitfield_size:
            decl += f" : {m.bitfield_size}"
        lines.append(f"\t{decl};".ljust(48) + f"/* {base + m.bit_offset // 8} */")
    if field is None:
        lines.append("};")
    return "\n".join(lines)
