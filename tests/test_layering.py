"""The package's layers, checked from its source: magics -> library -> backends -> kernel I/O.

Each check reads every module's syntax tree (imports inside functions count too) and
lists what breaks the rule; a rule's exceptions are named here, each with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ebpf_magic

ROOT = Path(ebpf_magic.__file__).parent
PACKAGE = "ebpf_magic"

# Outside backend/bcc, what may name BCC, and why.
BCC_ALLOWED = {
    # the error for a missing BCC is public API (ebpf_magic.BCCNotFoundError)
    "__init__.py": {"name:BCCNotFoundError"},
    "errors.py": {"name:BCCNotFoundError"},
    # the doctor's attach checks compile BCC-dialect programs: a missing BCC stops them all
    "setup/doctor.py": {"name:BCCNotFoundError"},
    # tracefs entries BCC's own tools leave behind (``..._bcc_<pid>``) are recognised as stale
    "kernel/link/probe_events.py": {"name:_BCC", "text:_bcc_"},
}
_BCC_TEXT = re.compile(r"libbcc|\bBPF\(|import bcc|BCC_KERNEL_SOURCE|_bcc_")
_LIBBPF_API = re.compile(r"\bbpf_object__|\bbpf_program__|\bbpf_map__|\bbpf_link__|libbpf\.so")
# A data object's lazy plot()/live()/browse() reaches up into presentation, and its
# to_perfetto() into the exports: the one way up.
PRESENTATION = {"present", "export"}
# Today's exceptions to "no private names across modules", each with its reason.
PRIVATE_ALLOWED: dict[str, set[str]] = {}
# Today's import cycles, each broken by an import inside a function, with its reason.
CYCLES_ALLOWED = [
    # Probe's listing of attach points is discover's search over probes' own tables
    ["discover", "probes"],
]


def _modules() -> dict[str, Path]:
    """``{dotted name: path}`` of every module in the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module, [imported names])`` for every import in ``path``, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(name, path).split(".")
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def _targets(module: str, names: list[str]) -> list[str]:
    """The package modules an import reaches: ``from pkg import mod`` reaches ``pkg.mod``."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found or ([module] if module.split(".")[0] == PACKAGE else [])


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def bcc_mentions(name: str, path: Path) -> set[str]:
    """How ``path`` names BCC in code: imports, identifiers, BCC's API in strings."""
    found = set()
    for module, names in imports(name, path):
        for target in [module, *_targets(module, names)]:
            if target.split(".")[0] == "bcc" or ".backend.bcc" in target:
                found.add(f"import:{target}")
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        ident = (node.id if isinstance(node, ast.Name) else
                 node.attr if isinstance(node, ast.Attribute) else
                 node.name if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                 node.asname or node.name if isinstance(node, ast.alias) else None)
        if ident and "bcc" in ident.lower():
            found.add(f"name:{ident}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs:
            found |= {f"text:{m}" for m in _BCC_TEXT.findall(node.value)}
    return found


def test_only_the_bcc_backend_names_bcc():
    bad = []
    for name, path in MODULES.items():
        rel = _rel(path)
        if rel.startswith("backend/bcc/"):
            continue
        extra = bcc_mentions(name, path) - BCC_ALLOWED.get(rel, set())
        bad += [f"{rel}: {m}" for m in sorted(extra)]
    assert not bad, "BCC named outside backend/bcc:\n" + "\n".join(bad)


def test_only_the_libbpf_backend_names_libbpf_api():
    bad = []
    for path in MODULES.values():
        rel = _rel(path)
        if not rel.startswith("backend/libbpf/"):
            bad += [f"{rel}: {m}" for m in sorted(set(_LIBBPF_API.findall(path.read_text())))]
    assert not bad, "libbpf's C API named outside backend/libbpf:\n" + "\n".join(bad)


def private_uses(name: str, path: Path) -> list[str]:
    """Another module's private names that ``path`` imports or reads as attributes."""
    own = _package_of(name, path)
    bad = []
    bound: dict[str, str] = {}  # local name -> package module it refers to
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            [(module, names)] = imports_of(name, path, node)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in MODULES:
                    bound[alias.asname or alias.name] = full
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                # a package's own private submodules are its own business
                if private and module.startswith(PACKAGE) and not (
                        full in MODULES and module == own):
                    bad.append(f"from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in bound and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            target = bound[node.value.id]
            if not (f"{target}.{node.attr}" in MODULES and target == own):
                bad.append(f"{node.value.id}.{node.attr} ({target})")
    return bad


def imports_of(name: str, path: Path, node: ast.ImportFrom) -> list[tuple[str, list[str]]]:
    base = node.module or ""
    if node.level:
        pkg = _package_of(name, path).split(".")
        pkg = pkg[:len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    return [(base, [a.name for a in node.names])]


def test_no_module_uses_another_modules_private_names():
    bad = [f"{_rel(path)}: {use}" for name, path in MODULES.items()
           for use in private_uses(name, path)
           if use not in PRIVATE_ALLOWED.get(_rel(path), set())]
    assert not bad, "private names used from outside their module:\n" + "\n".join(bad)


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE else ""


def top_level_graph() -> dict[str, set[str]]:
    """``{top-level module: top-level modules it imports}``, presentation reached lazily aside,
    and the recordings reached lazily by a convenience (``save()``) of a layer below them."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        src = _top(name)
        if not src:
            continue
        edges = graph.setdefault(src, set())
        for module, names, lazy in _imports_with_scope(name, path):
            for target in _targets(module, names):
                dst = _top(target)
                if dst and dst != src and not (dst in PRESENTATION and src not in PRESENTATION
                                               and src != "magics") \
                        and not (lazy and dst in UP_LAZILY and _LAYER[dst] > _LAYER[src]):
                    edges.add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_top_level_modules():
    found = [c for c in cycles(top_level_graph()) if c not in CYCLES_ALLOWED]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_in_the_library_imports_the_magics():
    bad = []
    for name, path in MODULES.items():
        if _top(name) == "magics" or name == PACKAGE:
            continue
        bad += [f"{_rel(path)}: {m}" for module, names in imports(name, path)
                for m in _targets(module, names) if _top(m) == "magics"]
    assert not bad, "the library imports the magics:\n" + "\n".join(bad)


# The layers, bottom first. A module imports from its own layer and those below it; the
# one way up is a convenience method of an object users hold (save(), plot(), live(),
# browse(), to_perfetto()) importing sessions, exports or presentation inside the method.
LAYERS = [
    {"errors", "moved", "internal"},  # the errors users catch, old names, plumbing
    {"kernel"},  # bpf(2), perf events, readers, links, tracefs, kallsyms, BTF, host facts
    {"probes", "source", "suggest", "discover"},  # attach points, cell text, hints, listings
    {"backend"},  # the backend seam and its two backends
    {"data", "api"},  # maps, streams, frames; the read API
    {"program", "session"},  # the object model users hold
    {"sessions", "cluster", "bpftrace"},  # recordings, replay, many hosts, bpftrace programs
    {"export"},  # frames written for other tools: Perfetto, pprof, speedscope, folded text
    {"exercises"},  # a learner's answer checked against ground truth, through the read API
    {"present"},  # widgets, plots, live views
    {"tools"},  # ready-made investigations, declared on the public API
    {"setup"},  # doctor, kernelspec, launcher
    {"magics", "__main__", "uninstall_kernel"},  # the adapters
]
_LAYER = {top: i for i, tops in enumerate(LAYERS) for top in tops}
UP_LAZILY = {"sessions", "export", "present"}


def _imports_with_scope(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """Like :func:`imports`, with whether each import sits inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in lazy) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            [(module, names)] = imports_of(name, path, node)
            out.append((module, names, id(node) in lazy))
    return out


def test_every_module_sits_in_a_layer():
    unplaced = sorted({_top(n) for n in MODULES if _top(n)} - set(_LAYER))
    assert not unplaced, f"not in LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    bad = []
    for name, path in MODULES.items():
        src = _top(name)
        if not src or src not in _LAYER:
            continue
        for module, names, lazy in _imports_with_scope(name, path):
            for target in _targets(module, names):
                dst = _top(target)
                if dst in _LAYER and _LAYER[dst] > _LAYER[src] \
                        and not (lazy and dst in UP_LAZILY):
                    bad.append(f"{_rel(path)} ({src}) imports {target} ({dst})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


# The recording reader's modules, bottom first: each imports only from the layers below it.
READER = "ebpf_magic.sessions.reader"
READER_LAYERS = [
    {"budget", "thrift"},  # what a recording may still cost; Thrift's compact protocol
    {"archive", "manifest", "columns"},  # the zip; the manifest's fields; Arrow to pandas
    {"parquet"},  # Parquet members bounded from their footers and page headers
    {""},  # the package: a recording read, frame by frame
]


def test_every_reader_module_sits_in_a_reader_layer():
    placed = {f"{READER}.{name}".rstrip(".") for layer in READER_LAYERS for name in layer}
    found = {name for name in MODULES if name == READER or name.startswith(f"{READER}.")}
    assert found == placed, f"not in READER_LAYERS: {sorted(found - placed)}"


def test_reader_modules_import_down_their_layers():
    layer = {f"{READER}.{name}".rstrip("."): i for i, names in enumerate(READER_LAYERS)
             for name in names}
    bad = []
    for name, i in layer.items():
        for module, names in imports(name, MODULES[name]):
            for target in _targets(module, names):
                if target in layer and target != name and layer[target] >= i:
                    bad.append(f"{name} imports {target}")
    assert not bad, "reader imports not pointing down:\n" + "\n".join(bad)


def module_graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, the lazy conveniences up the layers aside."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, set())
        for module, names, lazy in _imports_with_scope(name, path):
            for target in _targets(module, names):
                if target in MODULES and target != name and not (
                        lazy and _top(target) in UP_LAZILY and _top(name) not in UP_LAZILY):
                    edges.add(target)
    return graph


def test_no_import_cycles_among_modules():
    found = [c for c in cycles(module_graph())
             if [_top(m) for m in c] not in CYCLES_ALLOWED and c != [PACKAGE]]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


# The objects users hold: what presentation shows, never what it is imported by.
OBJECTS = {"program", "session", "sessions", "cluster", "bpftrace"}


def full_graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}``, imports inside functions included."""
    return {name: {t for module, names, _ in _imports_with_scope(name, path)
                   for t in _targets(module, names) if t in MODULES and t != name}
            for name, path in MODULES.items()}


def test_the_objects_never_import_presentation():
    """browse() is written once, in api's ProgramBase, and returns the browser presentation
    registered: no program class, nor the read API, imports presentation, so no loop of
    imports runs through both (``present.widgets -> program -> sessions -> ... ->
    present.widgets`` was one)."""
    bad = [f"{name} imports {t}" for name, targets in full_graph().items()
           if _top(name) in OBJECTS | {"api"} for t in targets if _top(t) == "present"]
    assert not bad, "objects importing presentation:\n" + "\n".join(bad)

