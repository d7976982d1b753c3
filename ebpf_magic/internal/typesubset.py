"""The part of a generated ``vmlinux.h`` that one C program needs.

``vmlinux.h`` (bpftool's C dump of the kernel's BTF) declares every kernel type in
2.8 MB, and parsing it is most of what compiling a small program costs. A program uses
a few dozen of those types, so :class:`Index` cuts the header down to them:

* the declarations are bpftool's own text, in bpftool's order (each type before the
  types that hold it by value); preprocessor lines are all kept, with what the
  declarations among them need (a block of kfunc prototypes, say);
* a declaration is kept when a kept one holds its type by value, names it as a typedef
  or enum, or when the program's text names it (a tag, a typedef, an enumerator);
* a struct or union reached only through pointers is declared, not defined, so a program
  that dereferences it fails to compile with "incomplete definition of type 'struct X'"
  and :func:`missing` reads the names to add from clang's diagnostics.

A program that compiles against the cut header means the same as against the whole one:
its declarations are a subset, in the same order, of the same text, and what a missing
declaration would quietly change (a typedef taken for an implicitly declared function or
an implicit ``int``) is made an error by :data:`STRICT` while trying. The callers fall
back to the whole header when the names clang reports cannot be found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from ebpf_magic.internal.ctext import mask_code

FORMAT = 2  # of the index: another is built anew
# Made errors while compiling against a cut header: a missing typedef could otherwise
# be read as an implicit int or an implicitly declared function.
STRICT = ("-Werror=implicit-int", "-Werror=implicit-function-declaration")
_TAG_KINDS = ("struct", "union", "enum")
_NAME = re.compile(r"\b(?:(struct|union|enum)\s+)?([A-Za-z_]\w*)")
_REF = re.compile(r"\b(?:(struct|union|enum)\s+([A-Za-z_]\w*)(\s*(?:const\s*)?\*)?|"
                  r"([A-Za-z_]\w*))")
_TAG_DEF = re.compile(r"^(struct|union|enum)\s+([A-Za-z_]\w*)\s*\{")
_FWD = re.compile(r"^(struct|union)\s+([A-Za-z_]\w*)\s*;$")
_FN_PTR = re.compile(r"\(\s*\*\s*(?:(?:const|volatile)\s+)*([A-Za-z_]\w*)")
_BODY = re.compile(r"\{[^{}]*\}")
_ATTRIBUTE = re.compile(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)")
_KEYWORDS = frozenset((
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch",
    "typedef", "union", "unsigned", "void", "volatile", "while", "_Bool", "__attribute__",
    "typeof", "__typeof__", "__ksym", "__weak"))
# what clang's diagnostics say a program lacks
_MISSING = re.compile(
    r"(?:incomplete (?:definition of |element |result |return )?type|unknown type name|"
    r"undeclared identifier|implicit declaration of function|declaration of|"
    r"incomplete type) '((?:struct |union |enum )?[A-Za-z_]\w*)'"
    r"(?: \(aka '((?:struct |union |enum )?[A-Za-z_]\w*)'\))?")
_DIAGNOSTIC = re.compile(r": (?:fatal )?error: (.*)$")


def names_in(text: str) -> set[str]:
    """The names C ``text`` uses (comments and strings aside): ``struct X``, ``union X``,
    ``enum X`` for tags, plain identifiers for the rest."""
    return {f"{m.group(1)} {m.group(2)}" if m.group(1) else m.group(2)
            for m in _NAME.finditer(mask_code(text))}


def missing(log: str) -> set[str]:
    """Names clang's diagnostics in ``log`` say are undeclared or incomplete, and the
    names on the source line of an error that names none (an implicit ``int``)."""
    out: set[str] = set()
    lines = log.splitlines()
    for n, line in enumerate(lines):
        named = [m for m in _MISSING.finditer(line)]
        for m in named:
            out.update(x for x in m.groups() if x)
        diag = _DIAGNOSTIC.search(line)
        if diag and not named and n + 1 < len(lines) and "type specifier missing" in diag.group(1):
            out |= names_in(lines[n + 1])
    return out


class Index:
    """The declarations of one ``vmlinux.h``, by the names they define and use."""

    def __init__(self, data: dict, text: str) -> None:
        self.text = text
        self._spans: list[tuple[int, int]] = data["spans"]
        self._names: list[str] = data["names"]
        self._id = {name: i for i, name in enumerate(self._names)}
        self._defines: dict[int, int] = {int(k): v for k, v in data["defines"].items()}
        self._needs: list[list[int]] = data["needs"]  # names each declaration needs complete
        self._tags: list[list[int]] = data["tags"]  # struct/union tags each one mentions
        self._always: list[int] = data["always"]  # preprocessor lines and the unknown
        self.macros: dict[str, list[str]] = data.get("macros", {})

    @classmethod
    def build(cls, text: str, macros: str = "") -> Index:
        """The index of vmlinux.h ``text`` and, optionally, of a header of ``#define`` lines
        whose bodies may name its types (see :meth:`seeds`)."""
        names: dict[str, int] = {}

        def nid(name: str) -> int:
            return names.setdefault(name, len(names))

        spans, defines, needs, tags, always = [], {}, [], [], []
        pos = 0
        for chunk in text.split("\n\n"):
            start, end = pos, pos + len(chunk)
            pos = end + 2
            body = chunk.strip()
            if not body:
                continue
            index = len(spans)
            spans.append((start, end))
            need: set[int] = set()
            mentioned: set[int] = set()
            if _FWD.match(body):
                needs.append([])
                tags.append([])
                continue
            for name in _defined(body):
                defines.setdefault(nid(name), index)
            own = set(_defined(body))
            for m in _REF.finditer(_ATTRIBUTE.sub(" ", body)):
                if m.group(1):
                    tag = f"{m.group(1)} {m.group(2)}"
                    if tag in own:
                        continue
                    if m.group(1) != "enum":
                        mentioned.add(nid(tag))
                    if m.group(1) == "enum" or not m.group(3):
                        need.add(nid(tag))
                elif m.group(4) not in _KEYWORDS and m.group(4) not in own:
                    need.add(nid(m.group(4)))
            if not own or body.startswith("#"):  # preprocessor lines, and the unknown
                always.append(index)
            needs.append(sorted(need))
            tags.append(sorted(mentioned))
        data = {"format": FORMAT, "length": len(text), "spans": spans, "names": list(names),
                "defines": {str(k): v for k, v in defines.items()}, "needs": needs,
                "tags": tags, "always": always, "macros": _macro_names(macros)}
        return cls(data, text)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "length": len(self.text), "spans": self._spans,
                           "names": self._names,
                           "defines": {str(k): v for k, v in self._defines.items()},
                           "needs": self._needs, "tags": self._tags, "always": self._always,
                           "macros": self.macros}, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str, text: str) -> Index | None:
        """The index :meth:`to_json` wrote for vmlinux.h ``text``; None if it is not one."""
        try:
            found = json.loads(data)
        except ValueError:
            return None
        if not isinstance(found, dict) or found.get("format") != FORMAT \
                or found.get("length") != len(text):
            return None
        return cls(found, text)

    @classmethod
    def load(cls, index: Path, header: Path) -> Index | None:
        """The index saved at ``index`` for ``header``; None if missing or not for it."""
        try:
            return cls.from_json(index.read_text(), header.read_text())
        except OSError:
            return None

    def known(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` some declaration here defines."""
        return {n for n in names if self._id.get(n) in self._defines}

    def links(self, names: Iterable[str]) -> bool:
        """Whether a struct or union among ``names`` points to other structs or unions: a
        compiler describing it in debug information describes those too, and theirs."""
        for name in names:
            i = self._id.get(name)
            if i is not None and i in self._defines and name.startswith(("struct ", "union ")):
                c = self._defines[i]
                if set(self._tags[c]) - set(self._needs[c]) - {i}:
                    return True
        return False

    def seeds(self, text: str) -> set[str]:
        """The names ``text`` uses, with those the bodies of the indexed macros it uses
        name (transitively)."""
        found = names_in(text)
        todo = [n for n in found if n in self.macros]
        while todo:
            for n in self.macros.get(todo.pop(), ()):
                if n not in found:
                    found.add(n)
                    if n in self.macros:
                        todo.append(n)
        return found

    def header(self, names: Iterable[str]) -> str:
        """vmlinux.h with what ``names`` need, and declarations of the tags it mentions."""
        keep: set[int] = set()
        todo = list(self._always) + [self._defines[i] for i in (self._id.get(n) for n in names)
                                     if i is not None and i in self._defines]
        while todo:
            c = todo.pop()
            if c in keep:
                continue
            keep.add(c)
            todo += [self._defines[i] for i in self._needs[c]
                     if i in self._defines and self._defines[i] not in keep]
        tags = {t for c in keep for t in self._tags[c]}
        tags |= {self._id[n] for n in names if n.startswith(("struct ", "union "))
                 and n in self._id}
        order = sorted(keep)
        first = next((i for i, c in enumerate(order) if c not in self._always), len(order))
        parts = [self.text[slice(*self._spans[c])] for c in order]
        parts.insert(first, "".join(f"{self._names[t]};\n" for t in sorted(tags)))
        return "\n\n".join(parts) + "\n"


def _defined(body: str) -> list[str]:
    """The names a declaration of vmlinux.h defines."""
    m = _TAG_DEF.match(body)
    if m:
        out = [f"{m.group(1)} {m.group(2)}"]
        if m.group(1) == "enum":
            out += _enumerators(body)
        return out
    if body.startswith("enum") and "{" in body:
        return _enumerators(body)
    if body.startswith("typedef"):
        name = _typedef_name(body)
        return [name] if name else []
    m = re.search(r"\b([A-Za-z_]\w*)\s*\(", _ATTRIBUTE.sub(" ", body))
    if body.startswith("extern") and m:  # a kfunc prototype
        return [m.group(1)]
    return []


def _enumerators(body: str) -> list[str]:
    inner = body[body.index("{") + 1:body.rindex("}")]
    return [p.split("=")[0].strip() for p in inner.split(",") if p.split("=")[0].strip()]


def _typedef_name(body: str) -> str:
    flat = _ATTRIBUTE.sub(" ", body[len("typedef"):])
    while True:
        shorter = _BODY.sub(" ", flat)
        if shorter == flat:
            break
        flat = shorter
    m = _FN_PTR.search(flat)
    if m:
        return m.group(1)
    if flat.rstrip().endswith(");"):  # a function type: the name stands before its "("
        m = re.search(r"([A-Za-z_]\w*)\s*\(", flat)
        return m.group(1) if m else ""
    m = re.search(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*;\s*$", flat)
    return m.group(1) if m else ""


def _macro_names(text: str) -> dict[str, list[str]]:
    """``{macro: names its body uses}`` of the ``#define`` lines of ``text``."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"#define ([A-Za-z_]\w*)(\([^)]*\))?\s*(.*)$", line)
        if m and m.group(3):
            used = sorted(names_in(m.group(3)) - {m.group(1)})
            if used:
                out[m.group(1)] = used
    return out
