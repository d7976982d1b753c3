"""Tab completion for ``%%bpf`` first lines, ``%bpf`` subcommands and programs' map names.

One matcher joins IPython's completer (``Completer.custom_matchers``), so the terminal and
every Jupyter front end get the same completions: option names, ``-a`` probe specs kind by
kind (``tracepoint:sch`` -> categories, then events; ``uprobe:c:`` -> libc's functions;
``xdp:`` and ``tc:`` -> network devices; ``iter:`` -> iterator targets), running programs'
names, subcommands and their arguments, ``prog.maps["`` / ``prog.events["`` /
``prog.iter["`` of the session's programs, in a ``%%bpf`` cell's body the SEC() names
the libbpf backend accepts (``SEC("tp_btf/sch`` -> raw tracepoints), and in a
``%%bpftrace`` cell its options and, in its program, the same probe specs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from IPython.core.completer import (
    CompletionContext,
    SimpleCompletion,
    SimpleMatcherResult,
    context_matcher,
)

from ebpf_magic import discover
from ebpf_magic.errors import BPFError
from ebpf_magic.probes import HARDWARE_EVENTS, SECTION_FORMS, SOFTWARE_EVENTS

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

LIMIT = 500  # completions offered at once
# the -a kinds offered, by bpftrace's long names
KINDS = ("tracepoint", "rawtracepoint", "kprobe", "kretprobe", "kfunc", "kretfunc", "uprobe",
         "uretprobe", "usdt", "profile", "software", "hardware", "xdp", "lsm", "tc", "socket",
         "iter")
# SEC("... at the end of a line of a %%bpf cell's body
_SECTION = re.compile(r"\bSEC\s*\(\s*\"(?P<name>[^\"]*)$")
# subcommands whose positional arguments are program names
_PROGRAM_ARGS = ("stop", "save", "browse")
# PROG.maps["KEY, PROG.events['KEY or PROG.iter["KEY at the end of the line
_KEY = re.compile(r"(?<![\w.])(?P<prog>[A-Za-z_]\w*)\.(?P<what>maps|events|iter)"
                  r"\[[\"'](?P<key>\w*)$")


def register(ipython: InteractiveShell) -> None:
    """Add the matcher to ``ipython``'s completer (once)."""
    matchers = ipython.Completer.custom_matchers
    if bpf_matcher not in matchers:
        matchers.append(bpf_matcher)


def unregister(ipython: InteractiveShell) -> None:
    with contextlib.suppress(ValueError):
        ipython.Completer.custom_matchers.remove(bpf_matcher)


@context_matcher()
def bpf_matcher(context: CompletionContext) -> SimpleMatcherResult:
    """Completions on a ``%%bpf`` line or a ``%bpf`` line; nothing elsewhere."""
    line = context.text_until_cursor
    keys = _KEY.search(line)
    if keys is not None:
        return _key_matches(keys)
    magic = context.full_text.lstrip().split(maxsplit=1)[0] if context.full_text.strip() else ""
    in_section = _SECTION.search(line)
    if in_section is not None and context.cursor_line > 0 and magic == "%%bpf":
        return _section_matches(in_section.group("name"))
    words = line.split(" ")
    head = words[0].lstrip()
    if magic == "%%bpftrace" and context.cursor_line > 0:
        word = re.split(r"[\s,{}/]", line.rsplit("\n", 1)[-1])[-1]
        found = probe_specs(word) if word and (":" in word or any(
            k.startswith(word) for k in KINDS)) else None
    elif head in ("%%bpf", "%%bpftrace") and context.cursor_line == 0 and len(words) > 1:
        word = words[-1]
        found = _cell_line(word, [w for w in words[1:-1] if w], _programs(_shell()),
                           head[2:])
    elif head == "%bpf" and len(words) > 1:
        word = words[-1]
        found = _subcommand_line(word, [w for w in words[1:-1] if w], _programs(_shell()))
    else:
        found = None
    if found is None:  # not ours to complete (a file name, a value)
        return {"completions": [], "suppress": False}
    token = context.token
    if not word.endswith(token):
        token = re.split(r"[\s:=/\[\]\"']", word)[-1]
    cut = len(word) - len(token)
    texts = sorted({c[cut:] for c in found if c.startswith(word)})[:LIMIT]
    return {"completions": [SimpleCompletion(t, type="bpf") for t in texts],
            "matched_fragment": token, "suppress": True, "ordered": True}


def _key_matches(found: re.Match) -> SimpleMatcherResult:
    """``PROG.maps["`` / ``PROG.events["`` / ``PROG.iter["`` of a session program.

    IPython's own key completion does not evaluate properties (``Program.events`` is one),
    so the session's programs are asked directly.
    """
    name, what, typed = found.group("prog", "what", "key")
    magics = getattr(_shell(), "_ebpf_magics", None)
    prog = magics.session.programs.get(name) if magics is not None else None
    if prog is None:
        return {"completions": [], "suppress": False}
    named = {"maps": prog.maps, "events": prog.events, "iter": prog.iter}[what]
    names = sorted(n for n in named if n.startswith(typed))
    return {"completions": [SimpleCompletion(n, type="bpf") for n in names],
            "matched_fragment": typed, "suppress": True, "ordered": True}


def _section_matches(typed: str) -> SimpleMatcherResult:
    """SEC() names the libbpf backend accepts that continue ``typed`` (inside the quotes)."""
    names = [n for n in section_names(typed) if n.startswith(typed)][:LIMIT]
    return {"completions": [SimpleCompletion(n, type="bpf") for n in sorted(names)],
            "matched_fragment": typed, "suppress": True, "ordered": True}


def section_names(typed: str) -> list[str]:
    """SEC() names continuing ``typed``: the forms first, then each form's targets."""
    prefix, sep, rest = typed.partition("/")
    if not sep:
        return sorted({form.split("/")[0] + ("/" if "/" in form else "")
                       for form in SECTION_FORMS} | {"tp/", "raw_tracepoint/", "kretprobe/",
                                                     "fexit/", "uretprobe/", "kretsyscall/"})
    try:
        if prefix in ("tracepoint", "tp"):
            events = discover.tracepoints()
            if "/" not in rest:
                return sorted({f"{prefix}/{e.split(':')[0]}/" for e in events})
            return [f"{prefix}/{e.replace(':', '/', 1)}" for e in events]
        if prefix in ("tp_btf", "raw_tp", "raw_tracepoint"):
            return [f"{prefix}/{n}" for n in discover.raw_tracepoints()]
        if prefix in ("kprobe", "kretprobe"):
            return [f"{prefix}/{n}" for n in _prefixed(discover.kernel_functions(), rest)]
        if prefix in ("fentry", "fexit", "fentry.s", "fexit.s"):
            return [f"{prefix}/{n}" for n in _prefixed(discover.btf_functions(), rest)]
        if prefix in ("iter", "iter.s"):
            return [f"{prefix}/{n}" for n in discover.iterator_targets()]
        if prefix == "tcx":
            return ["tcx/ingress", "tcx/egress"]
    except BPFError:
        return []
    return []


def _shell() -> InteractiveShell | None:
    from IPython import get_ipython

    return get_ipython()


def _programs(ipython: InteractiveShell | None) -> list[str]:
    magics = getattr(ipython, "_ebpf_magics", None)
    return list(magics.session.programs) if magics is not None else []


def _cell_line(word: str, before: list[str], programs: list[str], magic: str = "bpf"
               ) -> list[str] | None:
    from ebpf_magic.magics import bpftrace, cell

    if before and before[-1] in ("-a", "--attach") and magic == "bpf":
        return probe_specs(word)
    if word.startswith("-"):
        parser = cell.PARSER if magic == "bpf" else bpftrace.PARSER
        return re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", parser.format_help())
    if not before:
        return programs
    return None


def _subcommand_line(word: str, before: list[str], programs: list[str]) -> list[str] | None:
    from ebpf_magic.magics.args import SUBCOMMANDS, subcommand

    if not before:
        return list(SUBCOMMANDS)
    sub = before[0]
    if sub not in SUBCOMMANDS:
        return None
    if sub == "tool":
        return subcommand(sub).completions(word, before)
    if word.startswith("-"):
        return subcommand(sub).PARSER.options()
    if sub == "probes":
        return probe_specs(word)
    if sub == "struct":
        return struct_names(word)
    if sub == "stats" and len(before) == 1:
        return ["off", "on"]
    if sub in _PROGRAM_ARGS and (sub == "stop" or len(before) == 1):
        if sub == "browse" and "/" in word:
            return _map_targets(word.split("/", 1)[0])
        return programs
    return None


def _map_targets(name: str) -> list[str]:
    magics = getattr(_shell(), "_ebpf_magics", None)
    prog = magics.session.programs.get(name) if magics is not None else None
    return [f"{name}/{m}" for m in prog.maps] if prog is not None else []


def struct_names(word: str) -> list[str]:
    """Kernel struct names starting with ``word``, from BTF."""
    if "." in word:
        path, _, _ = word.rpartition(".")
        try:
            return [f"{path}.{f}" for f in _btf_fields(path)]
        except BPFError:
            return []
    spec = discover.kernel_btf()
    if spec is None:
        return []
    return sorted({n for n in spec.names("struct") if n.startswith(word)})


def _btf_fields(path: str) -> list[str]:
    from ebpf_magic.kernel import btf

    return list(btf.struct(path)["field"])


def probe_specs(word: str) -> list[str]:
    """Probe specs that continue ``word``: kinds, then each kind's next part."""
    kind, sep, rest = word.partition(":")
    if not sep:
        return [f"{k}:" for k in KINDS]
    try:
        return [f"{kind}:{t}" for t in _targets(kind, rest)]
    except BPFError:
        return []


def _targets(kind: str, rest: str) -> list[str]:
    if kind == "tracepoint":
        events = discover.tracepoints()
        if ":" not in rest:
            return sorted({e.split(":")[0] + ":" for e in events})
        return events
    if kind == "rawtracepoint":
        return list(discover.raw_tracepoints())
    if kind in ("kprobe", "kretprobe"):
        return _prefixed(discover.kernel_functions(), rest)
    if kind in ("kfunc", "kretfunc"):
        return _prefixed(discover.btf_functions(), rest)
    if kind in ("uprobe", "uretprobe", "usdt"):
        target, sep, symbol = rest.rpartition(":") if kind != "usdt" else rest.partition(":")
        if kind != "usdt" and not sep:
            return [f"{lib}:" for lib in discover.libraries()]
        if kind == "usdt" and not sep:
            return []  # a path or PID: file completion is more use
        if kind == "usdt":
            return [f"{target}:{n.provider}:{n.name}"
                    for n in discover.usdt_notes(discover.library_path(target))]
        return [f"{target}:{s}" for s in
                _prefixed(discover.elf_functions(discover.library_path(target)), symbol)]
    if kind == "software":
        return list(SOFTWARE_EVENTS)
    if kind == "hardware":
        return list(HARDWARE_EVENTS)
    if kind == "profile":
        return ["hz:", "s:", "ms:", "us:"] if ":" not in rest else [rest]
    if kind == "xdp":
        return discover.network_devices()
    if kind == "tc":
        if ":" not in rest:
            return [f"{d}:" for d in discover.network_devices()]
        device = rest.split(":")[0]
        return [f"{device}:ingress", f"{device}:egress"]
    if kind == "iter":
        return list(discover.iterator_targets())
    return []


def _prefixed(names: Iterable[str], prefix: str) -> list[str]:
    return [n for n in names if n.startswith(prefix)]
