"""The package's layers, checked from its source: magics -> library -> backends -> kernel I/O.

Each check reads every module's syntax tree (imports inside functions count too) and
lists what breaks the rule; a rule's exceptions are named here, each with its reason.
The layers are those of ``architecture.md``'s picture, bottom first.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import ebpf_magic

ROOT = Path(ebpf_magic.__file__).parent
PACKAGE = "ebpf_magic"

# The layers, bottom first; "" is the package itself (``import ebpf_magic``). A module
# imports from its own layer and those below it; the one way up is a convenience method of
# an object users hold (save(), plot(), live(), browse(), to_perfetto()) importing
# recordings, exports or presentation inside the method (UP_LAZILY).
LAYERS: list[tuple[str, set[str]]] = [
    ("plumbing and the errors users catch", {"internal", "errors"}),
    ("kernel I/O: bpf(2), perf events, readers, links, tracefs, kallsyms, BTF, host facts",
     {"kernel"}),
    ("what this host can do: checks returning findings; backends hand over their probes",
     {"features"}),
    ("attach points, cell text, hints, listings", {"probes", "source", "suggest", "discover"}),
    ("the backend seam and its two backends", {"backend"}),
    ("the read API: Protocols every program implements", {"api"}),
    ("maps, streams, frames, histograms, stacks", {"data"}),
    ("the object model users hold", {"program", "session"}),
    ("frames written for other tools: Perfetto, pprof, speedscope, folded text", {"export"}),
    ("recordings, replay, the recorder", {"sessions"}),
    ("widgets, plots, live views", {"present"}),
    ("other programs behind the read API: bpftrace, many hosts", {"bpftrace", "cluster"}),
    ("ready-made investigations and exercises on the public API", {"tools", "exercises"}),
    ("doctor, kernelspec, launchers", {"setup"}),
    ("the adapters: magics, command line, the package's face, an old kernelspec's entry",
     {"magics", "__main__", "uninstall_kernel", "launcher", ""}),
]
_LAYER = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}
UP_LAZILY = {"sessions", "export", "present"}

# Outside backend/bcc, the names that may mention BCC, and why.
BCC_ALLOWED = {
    # the error for a missing BCC is public API (ebpf_magic.BCCNotFoundError)
    "__init__.py": {"name:BCCNotFoundError"},
    "errors.py": {"name:BCCNotFoundError"},
    # tracefs entries BCC's own tools leave behind (``..._bcc_<pid>``) are recognised as stale
    "kernel/link/probe_events.py": {"name:_BCC"},
    # the registry knows each backend by its module's name, and nothing else of it
    "backend/__init__.py": {"module:ebpf_magic.backend.bcc"},
}
# Outside backend/libbpf, the names that may mention libbpf, and why.
LIBBPF_ALLOWED = {
    # the registry knows each backend by its module's name, and nothing else of it
    "backend/__init__.py": {"module:ebpf_magic.backend.libbpf"},
}
# libbpf's C API: the prefixes of its functions (bpf_object__open, btf__load_vmlinux_btf, ...)
_LIBBPF_API = re.compile(r"^(?:bpf_object|bpf_program|bpf_map|bpf_link|bpf_prog_linfo|btf|"
                         r"btf_dump|ring_buffer|user_ring_buffer|perf_buffer|bpf_tc|bpf_xdp|"
                         r"bpf_linker)__\w+$|^libbpf_\w+$")
# Calls that import a module named by a string, and calls that load a C library by name.
_IMPORT_CALLS = {"import_module", "__import__", "find_spec", "reload"}
_LIBRARY_CALLS = {"CDLL", "PyDLL", "LoadLibrary", "find_library", "dlopen"}
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


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names, relative imports resolved."""
    base = node.module or ""
    if node.level:
        pkg = _package_of(name, path).split(".")
        pkg = pkg[:len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    return base


def _imports_with_scope(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, [imported names], inside a function)`` for every import in ``path``."""
    tree = _tree(path)
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in lazy) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((_resolve(name, path, node), [a.name for a in node.names],
                        id(node) in lazy))
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module, [imported names])`` for every import in ``path``, relative ones resolved."""
    return [(module, names) for module, names, _ in _imports_with_scope(name, path)]


def _targets(module: str, names: list[str]) -> list[str]:
    """The package modules an import reaches: ``from pkg import mod`` reaches ``pkg.mod``."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found or ([module] if module.split(".")[0] == PACKAGE else [])


def _top(module: str) -> str | None:
    """The top-level module or package of ``module`` ("" for the package itself)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr \
        if isinstance(func, ast.Attribute) else ""


def _identifier(node: ast.AST) -> str | None:
    return (node.id if isinstance(node, ast.Name) else
            node.attr if isinstance(node, ast.Attribute) else
            node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                           ast.ClassDef)) else
            node.arg if isinstance(node, ast.arg) else
            node.asname or node.name if isinstance(node, ast.alias) else None)


def references(name: str, path: Path) -> set[str]:
    """What ``path`` names, read from its syntax tree.

    ``module:M`` for each module it imports (``from pkg import mod`` gives ``pkg.mod``) or
    names in a string that looks like a dotted module name or is given to an import call
    (``importlib.import_module("bcc")``); ``library:L`` for each C library it loads by
    name (``ctypes.CDLL("libbpf.so.1")``, ``find_library("bpf")``); ``name:N`` for each
    identifier it binds, reads or imports, and each string given to ``getattr``/``hasattr``.
    """
    found = set()
    for module, names in imports(name, path):
        found |= {f"module:{m}" for m in [module, *_targets(module, names)]}
    tree = _tree(path)
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        ident = _identifier(node)
        if ident:
            found.add(f"name:{ident}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs and re.fullmatch(r"\w+(\.\w+)+", node.value) \
                and node.value.split(".")[0] in ("bcc", PACKAGE):
            found.add(f"module:{node.value}")
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            call, arg = _call_name(node), node.args[0].value
            if call in _IMPORT_CALLS:
                found.add(f"module:{arg}")
            elif call in _LIBRARY_CALLS:
                found.add(f"library:{arg}")
            elif call in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant):
                found.add(f"name:{node.args[1].value}")
    return found


def _is_module(ref: str, module: str) -> bool:
    kind, _, value = ref.partition(":")
    return kind == "module" and (value == module or value.startswith(module + "."))


def bcc_mentions(name: str, path: Path) -> set[str]:
    """How ``path`` names BCC: its Python module, our BCC backend, libbcc, or an identifier."""
    return {r for r in references(name, path)
            if _is_module(r, "bcc") or _is_module(r, f"{PACKAGE}.backend.bcc")
            or (r.startswith("library:") and "bcc" in r)
            or (r.startswith("name:") and "bcc" in r.lower())}


def libbpf_mentions(name: str, path: Path) -> set[str]:
    """How ``path`` names libbpf: its C library, its C API, our libbpf backend, an identifier."""
    return {r for r in references(name, path)
            if _is_module(r, f"{PACKAGE}.backend.libbpf")
            or (r.startswith("library:") and re.search(r"(?:^|lib)bpf(?:\.so|$)", r[8:]))
            or (r.startswith("name:") and ("libbpf" in r.lower() or _LIBBPF_API.match(r[5:])))}


def _outside(prefix: str, allowed: dict[str, set[str]], mentions) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        rel = _rel(path)
        if rel.startswith(prefix):
            continue
        extra = mentions(name, path) - allowed.get(rel, set())
        bad += [f"{rel}: {m}" for m in sorted(extra)]
    return bad


def test_only_the_bcc_backend_names_bcc():
    bad = _outside("backend/bcc/", BCC_ALLOWED, bcc_mentions)
    assert not bad, "BCC named outside backend/bcc:\n" + "\n".join(bad)


def test_only_the_libbpf_backend_names_libbpf():
    bad = _outside("backend/libbpf/", LIBBPF_ALLOWED, libbpf_mentions)
    assert not bad, "libbpf named outside backend/libbpf:\n" + "\n".join(bad)


def _backend_names_other(name: str, path: Path, other: str) -> set[str]:
    """What of backend ``other`` a module names: its module, its name, its library."""
    mentions = bcc_mentions if other == "bcc" else libbpf_mentions
    found = set(mentions(name, path))
    tree = _tree(path)
    docs = _docstrings(tree)
    # the other backend's registry name as a value: registry.get("libbpf"), == "bcc"
    found |= {f"text:{n.value}" for n in ast.walk(tree) if isinstance(n, ast.Constant)
              and n.value == other and id(n) not in docs}
    return found


def test_the_two_backends_do_not_know_each_other():
    bad = []
    for own, other in (("bcc", "libbpf"), ("libbpf", "bcc")):
        for name, path in MODULES.items():
            if name.startswith(f"{PACKAGE}.backend.{own}"):
                bad += [f"{_rel(path)}: {m}" for m in sorted(_backend_names_other(name, path,
                                                                                  other))]
    assert not bad, "one backend names the other:\n" + "\n".join(bad)


_REGEX_CALLS = {"compile", "match", "search", "fullmatch", "findall", "finditer", "sub",
                "subn", "split"}


def _regexes(path: Path) -> list[ast.Constant]:
    """The regular expressions ``path`` gives to ``re`` as constants."""
    return [node.args[0] for node in ast.walk(_tree(path))
            if isinstance(node, ast.Call) and _call_name(node) in _REGEX_CALLS and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


def _messages(path: Path) -> list[str]:
    """The text ``path`` writes: its string constants (f-strings' literal parts among
    them) but its docstrings and regular expressions."""
    skip = _docstrings(_tree(path)) | {id(n) for n in _regexes(path)}
    return [n.value for n in ast.walk(_tree(path))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def _literal_runs(pattern: str) -> list[str]:
    """The phrases of plain text in a regular expression, escapes of plain characters undone."""
    plain = re.sub(r"\\([^\w\s])", r"\1", pattern)
    plain = re.sub(r"\(\?P<\w+>|\(\?[:!=<]+|\\[a-zA-Z]|\[[^\]]*\][*+?]?|[.^$|()*+?{}]", "\0",
                   plain)
    return [run for run in plain.split("\0") if len(run.split()) >= 4]  # a phrase, not a term


def parsed_backend_texts(name: str, path: Path, backend_texts: list[str]) -> list[str]:
    """The regular expressions of ``path`` that match a backend's own message text."""
    return [f"regex over {run!r}" for regex in _regexes(path)
            for run in _literal_runs(regex.value) if any(run in text for text in backend_texts)]


def test_no_module_parses_a_backends_messages():
    """What a backend tells the rest of the house is data (a kind, a key, text to show),
    never text another layer takes apart with a regular expression."""
    bad = []
    for own in ("bcc", "libbpf"):
        prefix = f"{PACKAGE}.backend.{own}"
        texts = [t for name, path in MODULES.items() if name.startswith(prefix)
                 for t in _messages(path)]
        bad += [f"{_rel(path)}: {use} (text of backend/{own})"
                for name, path in MODULES.items() if not name.startswith(prefix)
                for use in parsed_backend_texts(name, path, texts)]
    assert not bad, "backends' messages parsed as text:\n" + "\n".join(bad)


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_uses(name: str, path: Path) -> list[str]:
    """Another module's private names that ``path`` imports, reads as attributes of a
    module it imported, or asks ``getattr`` for. A package's private submodules are its
    own business: its modules may import them."""
    own = _package_of(name, path)

    def foreign(module: str, attr: str) -> bool:
        """Whether ``module.attr`` is private to a module other than ``path``'s."""
        full = f"{module}.{attr}"
        return _private(attr) and not (full in MODULES and module == own) and full != name

    bad = []
    bound: dict[str, str] = {}  # local name -> package module it refers to
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(name, path, node)
            if _top(module) is None:
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in MODULES:
                    bound[alias.asname or alias.name] = full
                if foreign(module, alias.name):
                    bad.append(f"from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) is None:
                    continue
                parts = alias.name.split(".")
                bad += [f"import {alias.name}" for i in range(1, len(parts))
                        if foreign(".".join(parts[:i]), parts[i])]
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[parts[0]] = parts[0]
    for node in ast.walk(tree):
        chain: list[str] = []
        if isinstance(node, ast.Attribute):
            inner: ast.AST = node
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if not (isinstance(inner, ast.Name) and inner.id in bound):
                continue
            root, label = bound[inner.id], inner.id
        elif isinstance(node, ast.Call) and _call_name(node) in ("getattr", "hasattr") \
                and len(node.args) > 1 and isinstance(node.args[0], ast.Name) \
                and node.args[0].id in bound and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            root, label, chain = bound[node.args[0].id], node.args[0].id, [node.args[1].value]
        else:
            continue
        module = root
        for attr in chain:  # follow submodules; the first name that is not one is checked
            if f"{module}.{attr}" in MODULES and not foreign(module, attr):
                module = f"{module}.{attr}"
                continue
            if foreign(module, attr):
                bad.append(f"{label}.{'.'.join(chain[:chain.index(attr) + 1])} ({module})")
            break
    return sorted(set(bad))


def test_no_module_uses_another_modules_private_names():
    bad = [f"{_rel(path)}: {use}" for name, path in MODULES.items()
           for use in private_uses(name, path)
           if use not in PRIVATE_ALLOWED.get(_rel(path), set())]
    assert not bad, "private names used from outside their module:\n" + "\n".join(bad)


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
                if dst and dst != src and not (lazy and dst in UP_LAZILY):
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
        if _LAYER.get(_top(name)) == len(LAYERS) - 1:
            continue
        bad += [f"{_rel(path)}: {m}" for module, names in imports(name, path)
                for m in _targets(module, names) if _top(m) == "magics"]
    assert not bad, "the library imports the magics:\n" + "\n".join(bad)


def test_every_module_sits_in_a_layer():
    unplaced = sorted(name for name in MODULES if _top(name) not in _LAYER)
    assert not unplaced, f"modules of no layer (add their package to LAYERS): {unplaced}"


def test_imports_point_down_the_layers():
    bad = []
    for name, path in MODULES.items():
        src = _top(name)
        if src not in _LAYER:
            continue  # test_every_module_sits_in_a_layer names it
        for module, names, lazy in _imports_with_scope(name, path):
            for target in _targets(module, names):
                dst = _top(target)
                if dst is None or dst == src:
                    continue
                if dst not in _LAYER:
                    bad.append(f"{_rel(path)} imports {target}, of no layer")
                elif _LAYER[dst] > _LAYER[src] and not (lazy and dst in UP_LAZILY):
                    bad.append(f"{_rel(path)} ({LAYERS[_LAYER[src]][0]}) imports {target} "
                               f"({LAYERS[_LAYER[dst]][0]})")
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

