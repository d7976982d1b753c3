"""What a bpftrace program holds, from bpftrace's own type checker.

``bpftrace -d`` (a dry run: nothing is loaded) prints the program's syntax tree after
each pass; after the semantic pass every node carries its type. :func:`parse` reads that
tree into a :class:`Semantics`: each map with the types and names of its key parts and its
value (``count``, ``hist``, ``lhist`` with its range...), each ``printf`` with its format
and arguments, the probes, and which other outputs the program prints. The IR it prints
after that tells the ids bpftrace gives the ``probe`` builtin's values.

Written for bpftrace 0.17's printer (one node per line, indented by depth, ``NAME ::
type[TYPE, ctx: N]``); :data:`SEMANTIC` names the pass whose tree is read.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

SEMANTIC = "Semantic"
_PASS = re.compile(r"^AST after: (.+)$")
_TYPE = re.compile(r"^(?P<label>.*?) :: type\[(?P<type>.*?), ctx: \d(?:, AS\(\w+\))?\]$")
_DEFINE = re.compile(r'^define \S+ @(?:"(?P<quoted>[^"]+)"|(?P<plain>[\w.$]+))\(')
# calls whose output bpftrace prints as a line of its own kind (``{"type": KIND, ...}``)
OUTPUT_CALLS = {"time": "time", "cat": "cat", "system": "syscall", "join": "join"}
STACKS = ("kstack", "ustack")
INT_TYPE = re.compile(r"(unsigned )?int(8|16|32|64)")  # an integer type, as printed
STRING_TYPE = re.compile(r"string\[(\d+)\]")  # a string of N bytes (its NUL included)
DEFAULT_STACK_LIMIT = 127  # bpftrace's frames per stack unless kstack(N)/ustack(N)
# conversion functions whose column is best named after their argument
_NAMED_BY_ARG = {"str", "buf", "ntop", "ksym", "usym", "kaddr", "uaddr", "macaddr",
                 "strerror", "path", "bswap"}


@dataclass
class Node:
    """One node of the printed tree: its label, its type (None where none is printed)."""

    label: str
    type: str | None
    children: list[Node] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The node's kind: ``map``, ``builtin``, ``call``, ``int``, ``variable``... or the
        label itself for operators, casts and field accesses."""
        head, sep, _ = self.label.partition(": ")
        return head if sep else self.label

    @property
    def value(self) -> str:
        """What follows the kind: a map's or builtin's name, a call's function, an int."""
        return self.label.partition(": ")[2]


@dataclass
class Part:
    """One key part of a map, or one argument of a ``printf``: name and bpftrace type.

    ``type`` is None where bpftrace's printer shows none (a struct field); ``limit`` is a
    stack's frame count and ``mode`` its format (``bpftrace`` or ``perf``); ``literal`` is
    True for a constant written in the program (``printf("%s", "PID")``).
    """

    name: str | None
    type: str | None
    limit: int = DEFAULT_STACK_LIMIT
    mode: str = "bpftrace"
    literal: bool = False


@dataclass
class MapInfo:
    """A map as the program uses it: ``value`` is its value type (``count``, ``hist``,
    ``lhist``, ``stats``, ``unsigned int64``, ``string[16]``...), ``keys`` its key parts,
    ``lhist`` the ``(min, max, step)`` of an ``lhist()`` map, ``printed`` whether the
    program ``print()``s it."""

    name: str
    value: str
    keys: list[Part]
    lhist: tuple[int, int, int] | None = None
    printed: bool = False


@dataclass
class Printf:
    """One ``printf`` call: its format as bpftrace read it (escapes resolved), arguments."""

    format: str
    args: list[Part]


@dataclass
class Semantics:
    """Everything read from one ``bpftrace -d`` run."""

    probes: list[list[str]]  # each probe's attach points, as written
    maps: dict[str, MapInfo]
    printfs: list[Printf]
    outputs: set[str]  # other line kinds the program prints: "time", "value", "cat"...
    probe_ids: list[str]  # the ``probe`` builtin's value i is probe_ids[i]


def passes(text: str) -> dict[str, list[str]]:
    """The tree each pass printed, by pass name: its lines from ``Program`` on (the C
    definitions printed before it left out)."""
    out: dict[str, list[str]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _PASS.match(lines[i])
        i += 1
        if not m:
            continue
        while i < len(lines) and lines[i] != "Program" and not _PASS.match(lines[i]):
            i += 1
        if i == len(lines) or lines[i] != "Program":
            continue
        body = [lines[i]]
        i += 1
        while i < len(lines) and lines[i].startswith(" "):
            body.append(lines[i])
            i += 1
        out[m.group(1)] = body
    return out


def tree(lines: list[str]) -> Node:
    """The tree of indented ``lines`` (each node's children are the deeper lines after it)."""
    root = Node("", None)
    stack: list[tuple[int, Node]] = [(-1, root)]
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        text = line.strip()
        m = _TYPE.match(text)
        node = Node(m.group("label"), m.group("type")) if m else Node(text, None)
        while stack[-1][0] >= depth:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((depth, node))
    return root.children[0] if root.children else root


def unescape(text: str) -> str:
    """A string as bpftrace's printer escaped it, back to its characters."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 3 < len(text) + 1:
                out.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every node below it, depth first."""
    yield node
    for child in node.children:
        yield from walk(child)


def name_of(node: Node) -> str | None:
    """A column name for an expression, where it has a natural one: a builtin's name
    (``comm``), a field's (``args->filename`` -> ``filename``), a variable's or map's
    without its sigil, a conversion's argument (``str(args->filename)`` -> ``filename``),
    a stack call's name (``ustack(5)`` -> ``ustack``); None for literals and arithmetic."""
    kind = node.kind
    if kind in ("builtin", "variable", "map"):
        return node.value.lstrip("$@") or None
    if kind == ".":
        leaf = node.children[-1] if node.children else None
        return leaf.label if leaf is not None and not leaf.children and \
            re.fullmatch(r"[A-Za-z_]\w*", leaf.label) else None
    if kind == "call":
        if node.value in _NAMED_BY_ARG and node.children:
            return name_of(node.children[0]) or node.value
        return node.value
    if node.label.startswith("(") and node.label.endswith(")") and node.children:
        return name_of(node.children[0])  # a cast
    return None


def type_of(node: Node) -> str | None:
    """The bpftrace type of an expression: as printed, a cast's target, else None."""
    if node.type is not None:
        return node.type
    label = node.label
    if label.startswith("(") and label.endswith(")") and not label.endswith("*)"):
        inner = label[1:-1]
        m = re.fullmatch(r"(u?)int(8|16|32|64)", inner)
        if m:
            return f"{'unsigned ' if m.group(1) else ''}int{m.group(2)}"
    return None


def part(node: Node) -> Part:
    """A key part or argument: its name, type, and a stack's frame count and format."""
    p = Part(name_of(node), type_of(node), literal=node.kind in ("int", "string"))
    if p.type in STACKS:
        for child in node.children:
            if child.kind == "int":
                p.limit = int(child.value)
            elif child.kind == "stack_mode":
                p.mode = child.value
    return p


def _is_key(node: Node) -> bool:
    return node.label not in ("++", "--")


def _maps(program: Node) -> dict[str, MapInfo]:
    maps: dict[str, MapInfo] = {}
    names: dict[str, list[list[str | None]]] = {}
    for node in walk(program):
        if node.kind == "=" and node.children and node.children[0].kind == "map":
            target, value = node.children[0], node.children[1] if len(node.children) > 1 \
                else None
            info = _map_info(maps, target)
            names.setdefault(info.name, []).append(
                [name_of(k) for k in target.children if _is_key(k)])
            if value is not None and value.kind == "call" and value.value == "lhist":
                ints = [int(c.value) for c in value.children[1:] if c.kind == "int"]
                if len(ints) == 3:
                    info.lhist = (ints[0], ints[1], ints[2])
        elif node.kind == "map":
            _map_info(maps, node)
        elif node.kind == "call" and node.value == "print" and node.children and \
                node.children[0].kind == "map":
            _map_info(maps, node.children[0]).printed = True
    for name, info in maps.items():
        _name_keys(info, names.get(name, []))
    return maps


def _map_info(maps: dict[str, MapInfo], node: Node) -> MapInfo:
    name = node.value
    keys = [part(k) for k in node.children if _is_key(k)]
    info = maps.get(name)
    if info is None:
        info = maps[name] = MapInfo(name, node.type or "none", keys)
    elif len(keys) == len(info.keys):  # a use that knows a key part's type fills it in
        for old, new in zip(info.keys, keys, strict=True):
            old.type = old.type or new.type
    if info.value == "none" and node.type:
        info.value = node.type
    return info


def _name_keys(info: MapInfo, assigned: list[list[str | None]]) -> None:
    """Key part ``i`` is named after its expression when every assignment agrees on a
    name and no other part has it; else ``key<i>``."""
    n = len(info.keys)
    chosen: list[str | None] = []
    for i in range(n):
        seen = {row[i] for row in assigned if len(row) == n} or {info.keys[i].name}
        chosen.append(seen.pop() if len(seen) == 1 else None)
    for i, name in enumerate(chosen):
        clash = name is None or chosen.count(name) > 1 or name in value_columns(info)
        info.keys[i].name = f"key{i}" if clash else name


def value_columns(info: MapInfo) -> list[str]:
    """The value columns of a map's frame: its aggregation's name, ``count``/``average``/
    ``total`` for ``stats()``, bucket columns for histograms, ``value`` otherwise."""
    kind = info.value
    if kind == "stats":
        return ["count", "average", "total"]
    if kind in ("hist", "lhist"):
        return ["slot", "low", "high", "count"]
    if kind in ("count", "sum", "min", "max", "avg"):
        return [kind]
    return ["value"]


def _printfs(program: Node) -> list[Printf]:
    out = []
    for node in walk(program):
        if node.kind == "call" and node.value == "printf" and node.children and \
                node.children[0].kind == "string":
            args = [part(a) for a in node.children[1:]]
            out.append(Printf(unescape(node.children[0].value), args))
    return out


def _outputs(program: Node) -> set[str]:
    out = set()
    for node in walk(program):
        if node.kind == "call" and node.value in OUTPUT_CALLS:
            out.add(OUTPUT_CALLS[node.value])
        elif node.kind == "call" and node.value == "print" and node.children and \
                node.children[0].kind != "map":
            out.add("value")
    return out


def _probes(program: Node) -> list[tuple[list[str], Node]]:
    """Each probe: its attach points and the node holding its statements."""
    out, pending = [], []
    for node in program.children:
        pending.append(node.label)
        if node.children:
            out.append((pending, node))
            pending = []
    if pending:
        out.append((pending, Node("", None)))
    return out


def probe_ids(probes: list[tuple[list[str], Node]], ir: str) -> list[str]:
    """The names bpftrace gives the ``probe`` builtin's values, in id order.

    bpftrace numbers the full names of the probes that use ``probe`` in the order it
    generates their code; its IR defines one function per such probe (a wildcard expanded
    into one per match), named after it.
    """
    uses = [any(n.kind == "builtin" and n.value == "probe" for n in walk(body))
            for _, body in probes]
    ids: list[str] = []
    at = 0
    for line in ir.splitlines():
        m = _DEFINE.match(line)
        if not m:
            continue
        name = m.group("quoted") or m.group("plain")
        while at < len(probes) and not _matches(name, probes[at][0]):
            at += 1
        if at == len(probes):
            break
        if uses[at] and name not in ids:
            ids.append(name)
    return ids


def _matches(name: str, attach_points: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, ap) for ap in attach_points)


def parse(text: str) -> Semantics:
    """The program ``bpftrace -d`` described in ``text`` (its standard output).

    ValueError if the output holds no tree after the semantic pass.
    """
    trees = passes(text)
    if SEMANTIC not in trees:
        raise ValueError("bpftrace -d printed no tree after its semantic pass")
    program = tree(trees[SEMANTIC])
    probes = _probes(program)
    return Semantics(probes=[aps for aps, _ in probes], maps=_maps(program),
                     printfs=_printfs(program), outputs=_outputs(program),
                     probe_ids=probe_ids(probes, text))
