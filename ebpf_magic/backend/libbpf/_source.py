"""What the C text of a libbpf program says: probes in SEC() names, submitted record types.

These are readings of the source, not of the compiled object: the record
type a perf or ring buffer receives is the declared type of the variable
passed to ``bpf_perf_event_output``/``bpf_ringbuf_output`` (or reserved with
``bpf_ringbuf_reserve``), found by name in the same text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ebpf_magic.internal.ctext import mask_code, matching_paren
from ebpf_magic.probes import Probe

# SEC() prefix -> probe kind; the rest of the section name is the target
_SECTIONS = {
    "tracepoint": "tracepoint", "tp": "tracepoint",
    "raw_tracepoint": "rawtracepoint", "raw_tp": "rawtracepoint", "tp_btf": "rawtracepoint",
    "raw_tracepoint.w": "rawtracepoint", "raw_tp.w": "rawtracepoint",
    "kprobe": "kprobe", "kretprobe": "kretprobe", "uprobe": "uprobe", "uretprobe": "uretprobe",
    "uprobe.s": "uprobe", "uretprobe.s": "uretprobe", "usdt": "usdt",
    "fentry": "kfunc", "fexit": "kretfunc", "fentry.s": "kfunc", "fexit.s": "kretfunc",
    "lsm": "lsm", "lsm.s": "lsm", "ksyscall": "kprobe", "kretsyscall": "kretprobe",
}
_OUTPUT = re.compile(r"\b(bpf_perf_event_output|bpf_ringbuf_output|bpf_ringbuf_reserve)\s*\(")
_SIZEOF_TYPE = re.compile(r"^\s*sizeof\s*\(\s*((?:struct|union)\s+\w+|\w+)\s*\)\s*$")
_SIZEOF_DEREF = re.compile(r"^\s*sizeof\s*\(\s*\*\s*(\w+)\s*\)\s*$")


def section_probe(section: str, function: str) -> Probe | None:
    """The probe a SEC() name implies, bound to ``function``; None if it names no target."""
    prefix, sep, target = section.partition("/")
    kind = _SECTIONS.get(prefix)
    if kind is None or not sep or not target:
        return None
    if kind == "tracepoint":
        target = target.replace("/", ":", 1)
    elif prefix in ("ksyscall", "kretsyscall"):
        target = f"sys_{target}"
    return Probe(kind, target, function)


def _args(code: str, open_at: int) -> list[tuple[int, int]]:
    """Spans of the top-level arguments of the call whose ``(`` is at ``open_at``."""
    close = matching_paren(code, open_at)
    if close < 0:
        return []
    spans, depth, start = [], 0, open_at + 1
    for i in range(open_at + 1, close):
        c = code[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            spans.append((start, i))
            start = i + 1
    spans.append((start, close))
    return spans


def _declared_type(code: str, var: str, before: int) -> str | None:
    """The C type of variable ``var`` as declared before ``before`` (``struct X``, ``T``)."""
    pattern = re.compile(
        rf"\b(?:(struct|union)\s+(\w+)\s*(?:\{{[^{{}}]*\}})?|(\w+))[\s*]+(?:const\s+)?"
        rf"{re.escape(var)}\s*(?:[;=,\[)])")
    found = None
    for m in pattern.finditer(code, 0, before):
        if m.group(3) in ("return", "sizeof", "else"):
            continue
        found = f"{m.group(1)} {m.group(2)}" if m.group(1) else m.group(3)
    return found


def submissions(source: str) -> tuple[dict[str, str], list[str]]:
    """``({map: C type submitted}, [maps written by bpf_perf_event_output with flags 0])``."""
    code = mask_code(source)
    types: dict[str, str] = {}
    flags_zero: list[str] = []
    for m in _OUTPUT.finditer(code):
        spans = _args(code, m.end() - 1)
        text = [source[a:b].strip() for a, b in spans]
        call = m.group(1)
        map_at, data_at, size_at = {"bpf_perf_event_output": (1, 3, 4),
                                    "bpf_ringbuf_output": (0, 1, 2),
                                    "bpf_ringbuf_reserve": (0, None, 1)}[call]
        if len(text) <= max(map_at, size_at):
            continue
        target = text[map_at].lstrip("&").strip()
        if not target.isidentifier():
            continue
        if call == "bpf_perf_event_output" and text[2] in ("0", "0UL", "0ULL", "0LL"):
            flags_zero.append(target)
        ctype = None
        size = _SIZEOF_TYPE.match(text[size_at])
        if size and size.group(1) not in ("int", "long", "char", "short"):
            name = size.group(1)
            ctype = name if name.startswith(("struct ", "union ")) or not name.isidentifier() \
                or _declared_type(code, name, m.start()) is None \
                else _declared_type(code, name, m.start())
        deref = _SIZEOF_DEREF.match(text[size_at])
        if ctype is None and deref:
            ctype = _declared_type(code, deref.group(1), m.start())
        if ctype is None and data_at is not None:
            var = text[data_at].lstrip("&").strip()
            if var.isidentifier():
                ctype = _declared_type(code, var, m.start())
        if ctype is not None:
            types.setdefault(target, re.sub(r"\s+", " ", ctype))
    return types, flags_zero


class Submission(NamedTuple):
    """An output call in the text: its span, the map it writes, what its record is."""

    start: int  # the call, from its name to its closing parenthesis (exclusive end)
    end: int
    map: str
    record: str  # what ``__typeof__()`` takes to name the record's type: a type or expression


_SIZEOF = re.compile(r"\s*sizeof\s*\(")
_DIRECTIVE = re.compile(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", re.M)


def submission_sites(source: str) -> list[Submission]:
    """Each ``bpf_perf_event_output``/``bpf_ringbuf_output``/``bpf_ringbuf_reserve`` call
    whose record can be named, in order; calls in preprocessor directives are left out.

    The record is what the size argument measures (``sizeof(*e)`` -> ``*e``,
    ``sizeof(struct event)`` -> ``struct event``), else the data argument's target
    (``&data`` -> ``data``).
    """
    code = mask_code(source)
    directives = [(m.start(), m.end()) for m in _DIRECTIVE.finditer(code)]
    out = []
    for m in _OUTPUT.finditer(code):
        if any(a <= m.start() < b for a, b in directives):
            continue
        close = matching_paren(code, m.end() - 1)
        spans = _args(code, m.end() - 1)
        map_at, data_at, size_at = {"bpf_perf_event_output": (1, 3, 4),
                                    "bpf_ringbuf_output": (0, 1, 2),
                                    "bpf_ringbuf_reserve": (0, None, 1)}[m.group(1)]
        if close < 0 or len(spans) <= max(map_at, size_at):
            continue
        target = source[slice(*spans[map_at])].strip().lstrip("&").strip()
        if not target.isidentifier():
            continue
        record = _measured(code, source, spans[size_at])
        if record is None and data_at is not None:
            data = source[slice(*spans[data_at])].strip()
            if data.startswith("&") and data[1:].strip().isidentifier():
                record = data[1:].strip()
        if record is not None:
            out.append(Submission(m.start(), close + 1, target, record))
    return out


def _measured(code: str, source: str, span: tuple[int, int]) -> str | None:
    """What ``sizeof(...)`` measures when the argument at ``span`` is exactly one."""
    start, end = span
    m = _SIZEOF.match(code, start)
    if not m:
        return None
    close = matching_paren(code, m.end() - 1)
    if close < 0 or code[close + 1:end].strip():
        return None
    inner = source[m.end():close].strip()
    return inner or None
