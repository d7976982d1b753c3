"""Source rewriting done before compilation, for event-stream bookkeeping.

Two additions, both invisible to the user, and one reading:

* Ring-buffer losses are counted in the kernel. For every
  ``BPF_RINGBUF_OUTPUT(name, pages)`` table, each ``name.ringbuf_output(...)``
  and ``name.ringbuf_reserve(...)`` call is wrapped so that a failed submission
  (buffer full) increments a hidden per-CPU counter ``__ebpf_magic_lost_<name>``.
  BCC rewrites these method calls itself later, so the wrapped call stays the
  user's own text. With ``count_perf``, every ``BPF_PERF_OUTPUT(name)`` table's
  ``name.perf_submit(...)`` and ``name.perf_submit_skb(...)`` calls are wrapped
  the same way, for kernels whose perf events cannot report their own losses
  (``PERF_FORMAT_LOST``, Linux 6.0).
* Every struct defined at file scope gets a hidden one-entry array
  ``__ebpf_magic_type_<tag>``, and every file-scope ``typedef`` of a struct or
  union one named ``__ebpf_magic_typedef_<name>``, so the compiler describes
  their full layout (nested structs, arrays) and events holding them can be
  decoded.
* Each ``BPF_HISTOGRAM`` is read as log2 or linear depending on what its
  ``increment()`` calls count: a value passed through ``bpf_log2``/``bpf_log2l``
  (directly, or assigned to the variable or key field that is incremented)
  makes it log2; anything else makes it linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ebpf_magic.internal.ctext import mask_code, matching_paren

LOST_PREFIX = "__ebpf_magic_lost_"
TYPE_PREFIX = "__ebpf_magic_type_"
TYPEDEF_PREFIX = "__ebpf_magic_typedef_"


@dataclass
class Prepared:
    """The text to compile, and the maps the rewrite added (hidden from the user).

    ``lost_maps`` names the loss counter of each ring buffer (and perf buffer,
    when counted in the program); ``type_maps`` the
    hidden map describing each type (``struct tag`` or a typedef name);
    ``reserved`` the type a ring buffer's ``ringbuf_reserve(sizeof(struct X))``
    calls submit, where visible.
    """

    text: str
    hidden: set[str] = field(default_factory=set)
    lost_maps: dict[str, str] = field(default_factory=dict)
    type_maps: dict[str, str] = field(default_factory=dict)
    reserved: dict[str, str] = field(default_factory=dict)
    hist_kinds: dict[str, str] = field(default_factory=dict)


_RINGBUF_DECL = re.compile(r"\bBPF_RINGBUF_OUTPUT\s*\(\s*(\w+)\s*,[^;]*;")
_PERF_DECL = re.compile(r"\bBPF_PERF_OUTPUT\s*\(\s*(\w+)\s*\)[^;]*;")
# the method calls that submit to each kind of table
_SUBMITS = {"ring": "ringbuf_output|ringbuf_reserve", "perf": "perf_submit|perf_submit_skb"}
_STRUCT_DEF = re.compile(r"\bstruct\s+(\w+)\s*\{")
# at file scope, with struct bodies blanked: "typedef struct [tag] [{ }] name;"
_TYPEDEF = re.compile(r"\btypedef\s+(struct|union)\s+(\w+\s*)?(\{\s*\}\s*)?(\w+)\s*;")
_SIZEOF_STRUCT = re.compile(r"sizeof\s*\(\s*struct\s+(\w+)\s*\)")
_HISTOGRAM_DECL = re.compile(r"\bBPF_HISTOGRAM\s*\(\s*(\w+)")
_LOG2 = re.compile(r"\bbpf_log2l?\s*\(|\blog2l?\s*\(")


def _counter(lost_map: str) -> str:
    return (f"{{ int __em_k = 0; u64 *__em_v = {lost_map}.lookup(&__em_k); "
            f"if (__em_v) (*__em_v)++; }}")


def _wrap_calls(text: str, code: str, name: str, lost_map: str, reserved: dict[str, str],
                kind: str = "ring") -> list[tuple[int, int, str]]:
    edits = []
    pattern = re.compile(rf"\b{re.escape(name)}\s*\.\s*({_SUBMITS[kind]})\s*\(")
    for m in pattern.finditer(code):
        close = matching_paren(code, m.end() - 1)
        if close < 0:
            continue
        call = text[m.start():close + 1]
        if m.group(1) != "ringbuf_reserve":  # returns 0 or a negative error
            new = (f"({{ int __em_r = {call}; if (__em_r) {_counter(lost_map)} __em_r; }})")
        else:
            tag = _SIZEOF_STRUCT.search(code[m.end():close])
            if tag:
                reserved.setdefault(name, f"struct {tag.group(1)}")
            new = (f"({{ void *__em_p = {call}; if (!__em_p) {_counter(lost_map)} __em_p; }})")
        edits.append((m.start(), close + 1, new))
    return edits


def _file_scope(code: str) -> str:
    """Masked ``code`` keeping only file-scope text outside preprocessor conditionals.

    Everything between a file-scope ``{`` and its ``}`` is blanked (the braces
    stay), as are directives and conditional regions; the length is unchanged.
    """
    out, depth, cond = [], 0, 0
    for line in code.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("#"):
            directive = stripped[1:].strip()
            if directive.startswith("if"):
                cond += 1
            elif directive.startswith("endif"):
                cond -= 1
            out.append("".join(c if c == "\n" else " " for c in line))
            continue
        for c in line:
            if c == "}":
                depth -= 1
            out.append(c if (cond == 0 and depth == 0) or c == "\n" else " ")
            if c == "{":
                depth += 1
    return "".join(out)


def _types(code: str) -> dict[str, str]:
    """``{C type: hidden map}`` for file-scope struct tags and struct/union typedefs.

    A typedef without a body names a struct defined elsewhere; it is described
    only when that struct is defined here (a forward declaration is incomplete).
    """
    top = _file_scope(code)
    types = {f"struct {m.group(1)}": TYPE_PREFIX + m.group(1) for m in _STRUCT_DEF.finditer(top)
             if not _empty_body(code, m.end() - 1)}
    for m in _TYPEDEF.finditer(top):
        kind, tag, body, name = m.groups()
        if body and _empty_body(code, m.start(3)):
            continue
        if body or (kind == "struct" and tag and f"struct {tag.strip()}" in types):
            types[name] = TYPEDEF_PREFIX + name
    return types


def _empty_body(code: str, brace: int) -> bool:
    """Whether the ``{`` at ``brace`` in masked ``code`` closes with nothing inside.

    An empty struct has size 0, and a map cannot have a value of size 0.
    """
    close = code.find("}", brace)
    return close > 0 and not code[brace + 1:close].strip()


def histogram_kinds(code: str) -> dict[str, str]:
    """``{histogram: "log2" | "linear"}`` from masked ``code`` (see the module doc)."""
    kinds = {}
    for decl in _HISTOGRAM_DECL.finditer(code):
        name = decl.group(1)
        calls = re.compile(rf"\b{re.escape(name)}\s*\.\s*(?:atomic_)?increment\s*\(")
        found = []
        for m in calls.finditer(code):
            close = matching_paren(code, m.end() - 1)
            arg = code[m.end():close].split(",")[0].strip() if close > 0 else ""
            if _LOG2.search(arg):
                found.append("log2")
            elif arg.isidentifier():  # a variable or key struct filled elsewhere
                fed = re.compile(rf"\b{re.escape(arg)}\s*(?:\.\s*\w+\s*)?=(?!=)([^;]*);")
                logged = any(_LOG2.search(a.group(1)) for a in fed.finditer(code))
                found.append("log2" if logged else "linear")
            elif arg:
                found.append("linear")
        kinds[name] = "log2" if not found or "log2" in found else "linear"
    return kinds


def prepare(source: str, count_perf: bool = False) -> Prepared:
    """Rewrite ``source`` for compilation (see the module doc)."""
    code = mask_code(source)
    prepared = Prepared(source, hist_kinds=histogram_kinds(code))
    edits: list[tuple[int, int, str]] = []
    decls = [("ring", d) for d in _RINGBUF_DECL.finditer(code)]
    if count_perf:
        decls += [("perf", d) for d in _PERF_DECL.finditer(code)]
    for kind, decl in decls:
        name = decl.group(1)
        lost_map = LOST_PREFIX + name
        prepared.lost_maps[name] = lost_map
        prepared.hidden.add(lost_map)
        edits.append((decl.end(), decl.end(), f" BPF_PERCPU_ARRAY({lost_map}, u64, 1);"))
        edits += _wrap_calls(source, code, name, lost_map, prepared.reserved, kind)
    text = source
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    tail = []
    for ctype, type_map in _types(code).items():
        prepared.type_maps[ctype] = type_map
        prepared.hidden.add(type_map)
        tail.append(f"BPF_ARRAY({type_map}, {ctype}, 1);")
    if tail:
        text += "\n" + "\n".join(tail) + "\n"
    prepared.text = text
    return prepared
