"""What the C text of a libbpf program says: probes in SEC() names, submitted record types.

These are readings of the source, not of the compiled object: the record
type a perf or ring buffer receives is the declared type of the variable
passed to ``bpf_perf_event_output``/``bpf_ringbuf_output`` (or reserved with
``bpf_ringbuf_reserve``), found by name in the same text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ebpf_magic.internal.ctext import mask_code, matching_brace, matching_paren
from ebpf_magic.probes import MAP_ITERATORS, SECTIONS, Probe

# SEC() names newer libbpf releases know and the installed 1.1 does not: (program type,
# expected attach type) set before load. 3 is BPF_PROG_TYPE_SCHED_CLS; 46 and 47 are
# BPF_TCX_INGRESS and BPF_TCX_EGRESS.
NEWER_SECTIONS = {"tcx/ingress": (3, 46), "tcx/egress": (3, 47), "tc/ingress": (3, 46),
                  "tc/egress": (3, 47)}
_OUTPUT = re.compile(r"\b(bpf_perf_event_output|bpf_ringbuf_output|bpf_ringbuf_reserve)\s*\(")
_SIZEOF_TYPE = re.compile(r"^\s*sizeof\s*\(\s*((?:struct|union)\s+\w+|\w+)\s*\)\s*$")
_SIZEOF_DEREF = re.compile(r"^\s*sizeof\s*\(\s*\*\s*(\w+)\s*\)\s*$")


def section_probe(section: str, function: str) -> Probe | None:
    """The probe a SEC() name implies, bound to ``function``; None if it names no target."""
    prefix, sep, target = section.partition("/")
    kind = SECTIONS.get(prefix)
    if kind is None or not sep or not target:
        return None
    if kind == "iter" and target in MAP_ITERATORS:
        return None
    if kind in ("uprobe", "uretprobe") and ":" not in target:
        return None  # a function without its binary (uprobe/readline): -a names the binary
    if kind == "tracepoint":
        target = target.replace("/", ":", 1)
    elif prefix in ("ksyscall", "kretsyscall"):
        target = f"sys_{target}"
    return Probe(kind, target, function)


def tc_direction(section: str) -> str:
    """``ingress`` or ``egress`` where the SEC() name says (``tcx/ingress``), else ""."""
    hook, _, direction = section.partition("/")
    return direction if hook in ("tc", "tcx") and direction in ("ingress", "egress") else ""


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
        ctype = _record_type(code, text, data_at, size_at, m.start())
        if ctype is not None:
            types.setdefault(target, ctype)
    return types, flags_zero


def _record_type(code: str, args: list[str], data_at: int | None, size_at: int,
                 before: int) -> str | None:
    """The C type of the record an output call writes: from ``sizeof(T)``, ``sizeof(*p)``,
    or the declared type of the data argument."""
    ctype = None
    size = _SIZEOF_TYPE.match(args[size_at])
    if size and size.group(1) not in ("int", "long", "char", "short"):
        name = size.group(1)
        ctype = name if name.startswith(("struct ", "union ")) or not name.isidentifier() \
            or _declared_type(code, name, before) is None \
            else _declared_type(code, name, before)
    deref = _SIZEOF_DEREF.match(args[size_at])
    if ctype is None and deref:
        ctype = _declared_type(code, deref.group(1), before)
    if ctype is None and data_at is not None:
        var = args[data_at].lstrip("&").strip()
        if var.isidentifier():
            ctype = _declared_type(code, var, before)
    return re.sub(r"\s+", " ", ctype) if ctype is not None else None


_SEQ_WRITE = re.compile(r"\bbpf_seq_write\s*\(")
_SEQ_TEXT = re.compile(r"\b(?:BPF_SEQ_PRINTF|bpf_seq_printf|bpf_seq_printf_btf)\s*\(")


def function_body(code: str, name: str) -> tuple[int, int] | None:
    """The span of the body of function ``name`` in masked ``code`` (also when a macro such as
    ``BPF_PROG(name, ...)`` defines it); None where it is not found."""
    for m in re.finditer(rf"\b{re.escape(name)}\b", code):
        close = _enclosing_call_end(code, m.start())
        if close < 0:
            continue
        rest = code[close + 1:]
        start = close + 1 + len(rest) - len(rest.lstrip())
        end = matching_brace(code, start) if code[start:start + 1] == "{" else -1
        if end >= 0:
            return start, end + 1
    return None


def _enclosing_call_end(code: str, at: int) -> int:
    """The ``)`` closing the parameter list ``at`` names or sits in: ``f(...)``, ``M(f, ...)``."""
    after = code[at:].split("(", 1)
    if len(after) == 2 and after[0].strip().isidentifier():  # name(
        return matching_paren(code, at + len(after[0]))
    opener = code.rfind("(", 0, at)
    if opener < 0 or code[opener + 1:at].strip():  # not the macro's first argument
        return -1
    return matching_paren(code, opener)


def iterator_record(source: str, function: str) -> str | None:
    """The C type iterator ``function`` writes with ``bpf_seq_write``, or None for text.

    Looked up in the function's own body, then in the whole cell when the cell
    writes one type only and prints no text (the writes may sit in a helper).
    """
    code = mask_code(source)
    body = function_body(code, function)
    spans = [body] if body is not None else []
    spans.append((0, len(code)))
    for lo, hi in spans:
        part = code[lo:hi]
        types = set()
        for m in _SEQ_WRITE.finditer(code, lo, hi):
            args = [source[a:b].strip() for a, b in _args(code, m.end() - 1)]
            if len(args) >= 3:
                types.add(_record_type(code, args, 1, 2, m.start()))
        if _SEQ_TEXT.search(part) or len(types) > 1 or None in types:
            return None
        if types:
            return types.pop()
    return None


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
