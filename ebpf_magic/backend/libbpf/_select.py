"""Which of an object's programs to load: one variant per event, the best this kernel offers.

libbpf-style files often carry several programs for one event, one per way of hooking
it, because kernels differ in what they offer: ``tp_btf/block_rq_issue`` (typed
arguments from BTF), ``raw_tp/block_rq_issue`` (raw arguments) and
``tracepoint/block/block_rq_issue`` (the tracefs format), or ``fentry/F`` and
``kprobe/F`` (``fexit/F`` and ``kretprobe/F`` on return). Their user space loads one
per kernel. Here the programs of a file are grouped by the event they hook; in each
group the hook first in :data:`PREFERENCE` that this kernel has is chosen, and its
programs are loaded; the other variants are not. Programs with nothing in common
with another are loaded as they are, unless the event they hook does not exist on
this kernel (a syscall another architecture has) while other programs remain: such a
program is left out with a note, as libbpf-tools' user space leaves it out.

What the kernel has is asked of a :class:`Kernel` (BTF, tracefs, kallsyms), so the
choice itself is plain data and testable anywhere. A variant the kernel refuses at
load (the verifier, or a hook the kernel turns down) is excluded by the caller, which
plans again with what :meth:`Plan.refusing` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ebpf_magic.errors import BPFError
from ebpf_magic.suggest import near

# hook (a SEC() prefix) -> (family of equivalent hooks, rank: lower is preferred)
PREFERENCE = {
    "tp_btf": ("tracepoint", 0), "raw_tp": ("tracepoint", 1), "raw_tracepoint": ("tracepoint", 1),
    "tp": ("tracepoint", 2), "tracepoint": ("tracepoint", 2),
    "fentry": ("entry", 0), "kprobe": ("entry", 1),
    "fexit": ("return", 0), "kretprobe": ("return", 1),
}


def event_of(section: str) -> tuple[str, str, str] | None:
    """``(family, event, hook)`` of a SEC() name that hooks a named event, else None.

    ``tracepoint/block/block_rq_issue`` and ``tp_btf/block_rq_issue`` hook the
    same event, ``block_rq_issue``; ``kprobe/F+0x10`` (an offset) hooks no
    function entry that ``fentry/F`` could stand for.
    """
    hook, sep, target = section.partition("/")
    if hook not in PREFERENCE or not sep or not target or "+" in target:
        return None
    family = PREFERENCE[hook][0]
    if family == "tracepoint" and hook in ("tp", "tracepoint"):
        category, slash, target = target.partition("/")
        if not slash or not category or not target:
            return None
    return family, target, hook


@dataclass(frozen=True)
class Availability:
    """Whether a hook on an event can work here; ``absent`` when the event itself is missing."""

    ok: bool
    why: str = ""
    absent: bool = False


class Kernel:
    """What the running kernel offers, for :func:`plan` (each answer computed by the caller)."""

    def __init__(self, check: Callable[[str, str, str], Availability]) -> None:
        self._check = check
        self._memo: dict[tuple[str, str, str], Availability] = {}

    def available(self, hook: str, section: str, event: str) -> Availability:
        key = (hook, section, event)
        if key not in self._memo:
            self._memo[key] = self._check(hook, section, event)
        return self._memo[key]


@dataclass
class Plan:
    """The programs to load, and what was chosen or left out, in words."""

    load: list[str]
    notes: list[str] = field(default_factory=list)
    # event -> the hooks of its variants not refused yet, best first
    groups: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    excluded: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def refusing(self, program: str, sections: Mapping[str, str],
                 why: str) -> dict[tuple[str, str], dict[str, str]] | None:
        """The ``excluded`` of a new plan without ``program``'s variant, which the kernel
        refused for ``why``; None when its event has no other variant left to try."""
        found = event_of(sections.get(program, ""))
        if found is None:
            return None
        key, hook = (found[0], found[1]), found[2]
        if not [h for h in self.groups.get(key, []) if h != hook]:
            return None
        out = {k: dict(v) for k, v in self.excluded.items()}
        out.setdefault(key, {})[hook] = why
        return out


def plan(sections: Mapping[str, str], kernel: Kernel, *,
         explicit: Sequence[str] | None = None,
         excluded: Mapping[tuple[str, str], Mapping[str, str]] | None = None) -> Plan:
    """The programs of ``sections`` (``{program: SEC() name}``, in file order) to load.

    ``explicit`` names them instead (libbpf's autoload: exactly those, nothing chosen);
    ``excluded`` are variants refused at an earlier load, ``{group: {hook: why}}``.
    Raises :class:`~ebpf_magic.errors.BPFError` for an unknown name in ``explicit``.
    """
    names = list(sections)
    if explicit is not None:
        unknown = [p for p in explicit if p not in sections]
        if unknown:
            close = near(unknown[0], names)
            listed = close + [n for n in names if n not in close]
            raise BPFError(f"no program {unknown[0]!r} in the cell",
                           f"Its programs: {', '.join(listed)}." if names else
                           "The cell defines no SEC() programs.")
        return Plan([p for p in names if p in set(explicit)])
    excluded = {k: dict(v) for k, v in (excluded or {}).items()}
    groups: dict[tuple[str, str], dict[str, list[str]]] = {}
    for prog, section in sections.items():
        found = event_of(section)
        if found is not None:
            family, event, hook = found
            groups.setdefault((family, event), {}).setdefault(hook, []).append(prog)
    chosen: dict[str, bool] = {}
    notes: list[str] = []
    hooks_left: dict[tuple[str, str], list[str]] = {}
    missing: dict[tuple[str, str], str] = {}  # groups whose event this kernel does not have
    for key, by_hook in groups.items():
        event = key[1]
        hooks = sorted(by_hook, key=lambda h: PREFERENCE[h][1])
        refused = excluded.get(key, {})
        candidates = [h for h in hooks if h not in refused]
        hooks_left[key] = candidates
        why_not = [f"{h}: {refused[h]}" for h in hooks if h in refused]
        usable, absent = [], bool(candidates)
        for h in candidates:
            got = kernel.available(h, sections[by_hook[h][0]], event)
            absent &= got.absent
            if got.ok:
                usable.append(h)
            else:
                why_not.append(f"{h}: {got.why}")
        if not usable and absent:
            missing[key] = "; ".join(why_not)
        # none can work here: the preferred one is loaded, and its failure names the cause
        pick = usable[0] if usable else (candidates or hooks)[0]
        for h in hooks:
            for p in by_hook[h]:
                chosen[p] = h == pick
        if len(hooks) > 1 and key not in missing:
            others = [h for h in hooks if h != pick]
            notes.append(f"{event}: the {pick} variant loaded ({', '.join(by_hook[pick])}), "
                         f"not {_names(by_hook, others)}" +
                         (f" ({'; '.join(why_not)})" if why_not and usable else ""))
    others_remain = any(chosen.get(p, True) and _group(sections[p]) not in missing
                        for p in names)
    if others_remain:  # leave out what hooks events this kernel lacks, as libbpf-tools do
        for key, why in missing.items():
            progs = [p for p in names if _group(sections[p]) == key]
            for p in progs:
                chosen[p] = False
            notes.append(f"{', '.join(progs)} not loaded: {key[1]} does not exist on this "
                         f"kernel ({why})")
    load = [p for p in names if chosen.get(p, True)]
    return Plan(load, notes, hooks_left, excluded)


def _group(section: str) -> tuple[str, str] | None:
    found = event_of(section)
    return (found[0], found[1]) if found else None


def _names(by_hook: Mapping[str, list[str]], hooks: Sequence[str]) -> str:
    return ", ".join(f"{p} ({h})" for h in hooks for p in by_hook[h])
