"""Kernel types as tables: a struct's fields, offsets, sizes and C types, and its C definition.

``struct("task_struct")`` lists ``struct task_struct``; ``struct("task_struct.se")`` follows
the member ``se`` into ``struct sched_entity`` (offsets still from the start of
``task_struct``); a pointer member (``task_struct.mm``) is followed to the type it points to,
whose offsets then start again at 0.
"""

from __future__ import annotations

import pandas as pd

from ebpf_magic.kernel.btf.dtypes import c_decl, type_fields
from ebpf_magic.kernel.btf.spec import BTFError, Spec, Type, vmlinux

COLUMNS = ["field", "offset", "size", "c_type", "bits"]


def lookup(path: str, spec: Spec | None = None) -> tuple[Type, int, str]:
    """(struct or union type, byte offset of its start, C spelling) named by ``NAME[.FIELD...]``."""
    spec = spec or vmlinux()
    name, *fields = path.strip().removeprefix("struct ").removeprefix("union ").split(".")
    found = [t for t in spec.find(name) if t.kind in ("struct", "union")]
    if not found:
        raise BTFError(f"no struct or union {name!r} in the kernel's BTF",
                       "Check the spelling, without 'struct '; list types with "
                       "bpftool btf dump file /sys/kernel/btf/vmlinux.")
    t, base, walked = found[0], 0, name
    for field in fields:
        rows = {f.field: f for f in type_fields(spec, t)}
        if field not in rows:
            raise BTFError(f"{walked} has no member {field!r}",
                           f"Its members: {', '.join(list(rows)[:40])}")
        member_type = _member_type(spec, t, field)
        inner = spec.resolve(member_type)
        base += rows[field].offset
        if inner.kind == "ptr":
            inner, base = spec.resolve(inner.type), 0
        while inner.kind == "array":
            inner = spec.resolve(inner.type)
        if inner.kind not in ("struct", "union"):
            raise BTFError(f"{walked}.{field} is {rows[field].c_type}, not a struct or union",
                           f"%bpf struct {walked} shows it with its offset and size.")
        t, walked = inner, f"{walked}.{field}"
    return t, base, f"{t.kind} {t.name or '{...}'}"


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
    """
    spec = spec or vmlinux()
    t, base, _ = lookup(path, spec)
    rows = [(f.field, base + f.offset, f.size, f.c_type, f.bits) for f in type_fields(spec, t)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs["type"] = path
    return frame


def definition(path: str, spec: Spec | None = None) -> str:
    """The C definition of kernel struct or union ``NAME[.FIELD...]``, offsets in comments."""
    spec = spec or vmlinux()
    t, base, spelling = lookup(path, spec)
    lines = [f"{spelling} {{"]
    for m in t.members:
        decl = c_decl(spec, m.type, m.name)
        if m.bitfield_size:
            decl += f" : {m.bitfield_size}"
        lines.append(f"\t{decl};".ljust(48) + f"/* {base + m.bit_offset // 8} */")
    lines.append("};")
    return "\n".join(lines)
