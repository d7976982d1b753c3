"""Attach points in bpftrace's probe syntax.

``Probe.parse("tracepoint:syscalls:sys_enter_write=count")`` gives a probe bound
to the C function ``count``; :func:`bind_explicit` binds specs written without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ebpf_magic.errors import ProbeSpecError

if TYPE_CHECKING:
    import pandas as pd

# bpftrace's long names and their short aliases
KINDS = {
    "kprobe": "kprobe", "k": "kprobe",
    "kretprobe": "kretprobe", "kr": "kretprobe",
    "tracepoint": "tracepoint", "t": "tracepoint",
    "rawtracepoint": "rawtracepoint", "rt": "rawtracepoint",
    "uprobe": "uprobe", "u": "uprobe",
    "uretprobe": "uretprobe", "ur": "uretprobe",
    "usdt": "usdt", "U": "usdt",
    "profile": "profile", "p": "profile",
    "software": "software", "s": "software",
    "hardware": "hardware", "h": "hardware",
    "xdp": "xdp",
    "kfunc": "kfunc", "fentry": "kfunc", "f": "kfunc",
    "kretfunc": "kretfunc", "fexit": "kretfunc", "fr": "kretfunc",
    "lsm": "lsm",
    "tc": "tc", "socket": "socket", "iter": "iter",
}

SOFTWARE_EVENTS = {
    "cpu-clock": 0, "cpu": 0, "task-clock": 1, "page-faults": 2, "faults": 2,
    "context-switches": 3, "cs": 3, "cpu-migrations": 4, "migrations": 4,
    "minor-faults": 5, "major-faults": 6, "alignment-faults": 7, "emulation-faults": 8,
    "dummy": 9,
}
HARDWARE_EVENTS = {
    "cpu-cycles": 0, "cycles": 0, "instructions": 1, "cache-references": 2,
    "cache-misses": 3, "branch-instructions": 4, "branches": 4, "branch-misses": 5,
    "bus-cycles": 6, "stalled-cycles-frontend": 7, "stalled-cycles-backend": 8,
    "ref-cycles": 9,
}
DEFAULT_PERIOD = {"software": 1_000_000, "hardware": 1_000_000}

# The SEC() names of BPF C in libbpf's convention: prefix -> probe kind; the rest of the
# name is the target (tracepoint/CATEGORY/NAME, kprobe/FUNCTION, uprobe/PATH:FUNCTION...)
SECTIONS = {
    "tracepoint": "tracepoint", "tp": "tracepoint",
    "raw_tracepoint": "rawtracepoint", "raw_tp": "rawtracepoint", "tp_btf": "rawtracepoint",
    "raw_tracepoint.w": "rawtracepoint", "raw_tp.w": "rawtracepoint",
    "kprobe": "kprobe", "kretprobe": "kretprobe", "uprobe": "uprobe", "uretprobe": "uretprobe",
    "uprobe.s": "uprobe", "uretprobe.s": "uretprobe", "usdt": "usdt",
    "fentry": "kfunc", "fexit": "kretfunc", "fentry.s": "kfunc", "fexit.s": "kretfunc",
    "lsm": "lsm", "lsm.s": "lsm", "ksyscall": "kprobe", "kretsyscall": "kretprobe",
    "iter": "iter", "iter.s": "iter",
}
# iterators over one map's elements: which map is a choice of the attach spec, not the SEC()
MAP_ITERATORS = ("bpf_map_elem", "bpf_sk_storage_map", "sockmap")
# Every SEC() form the libbpf backend loads and attaches, and how (for completion, help)
SECTION_FORMS = {
    "tracepoint/CATEGORY/NAME": "tracepoint (its tracefs format as context); also tp/",
    "raw_tp/NAME": "raw tracepoint (arguments as a u64 array); also raw_tracepoint/",
    "tp_btf/NAME": "raw tracepoint with typed arguments from BTF (BPF_PROG)",
    "uprobe/PATH:FUNCTION": "user function entry; SEC(\"uprobe\") with -a uprobe:LIB:FUNCTION",
    "uretprobe/PATH:FUNCTION": "user function return; SEC(\"uretprobe\") with -a",
    "usdt/PATH:PROVIDER:NAME": "USDT probe; SEC(\"usdt\") with -a usdt:PATH:PROVIDER:NAME",
    "kprobe/FUNCTION": "kernel function entry (needs CONFIG_KPROBES); kretprobe/ on return",
    "ksyscall/NAME": "system call entry through kprobes; kretsyscall/ on return",
    "fentry/FUNCTION": "kernel function entry through a BPF trampoline; fexit/ on return",
    "lsm/HOOK": "LSM hook (needs the bpf LSM)",
    "perf_event": "perf event sampling, with -a profile:hz:N or software:EVENT",
    "xdp": "XDP on a device, with -a xdp:DEVICE",
    "tc": "traffic control classifier, with -a tc:DEVICE:ingress or egress",
    "tcx/ingress": "traffic control on ingress, with -a tc:DEVICE; tcx/egress on egress",
    "socket": "socket filter, with -a socket:FD (a socket's fileno())",
    "iter/TARGET": "BPF iterator (task, task_file, tcp, udp, bpf_map...), read as "
                   "NAME.iter[FUNCTION].df",
}


USAGE = """\
kprobe:FUNC  kretprobe:FUNC  tracepoint:CATEGORY:NAME  rawtracepoint:NAME
uprobe:BINARY_OR_LIB:SYMBOL  uretprobe:BINARY_OR_LIB:SYMBOL  usdt:BINARY:[PROVIDER:]PROBE
profile:hz:N  software:EVENT[:PERIOD]  hardware:EVENT[:PERIOD]  xdp:DEVICE
kfunc:FUNC  kretfunc:FUNC  lsm:HOOK
libbpf programs also: tc:DEVICE:ingress|egress  socket:FD  iter:TARGET[:MAP]"""


@dataclass(frozen=True)
class Probe:
    """One attach point, bound (or not yet) to the C function that handles it.

    ``target`` is the kind-specific part: ``CATEGORY:NAME`` for tracepoints,
    ``BINARY:SYMBOL`` for uprobes, ``hz:N`` for profile, the device for xdp.
    """

    kind: str
    target: str
    function: str = ""
    pid: int | None = None

    @classmethod
    def parse(cls, spec: str, pid: int | None = None) -> Probe:
        """Parse ``KIND:TARGET[=FUNCTION]`` in bpftrace's syntax."""
        text, _, function = spec.strip().partition("=")
        kind_text, sep, target = text.partition(":")
        kind = KINDS.get(kind_text)
        if kind is None or not sep or not target:
            raise ProbeSpecError(f"cannot parse attach spec {spec!r}",
                                 f"Use one of:\n{USAGE}")
        probe = cls(kind, target, function.strip(), pid)
        probe._validate(spec)
        return probe

    def _validate(self, spec: str) -> None:
        parts = self.target.split(":")
        want = {"tracepoint": (2, 2), "uprobe": (2, 2), "uretprobe": (2, 2), "usdt": (2, 3),
                "profile": (2, 2), "software": (1, 2), "hardware": (1, 2), "tc": (1, 2),
                "iter": (1, 2)}
        lo, hi = want.get(self.kind, (1, 1))
        if self.kind in ("uprobe", "uretprobe", "usdt") and parts[0] == "" :
            raise ProbeSpecError(f"{spec!r}: the binary or library is missing",
                                 f"Write {self.kind}:/path/to/binary:... or {self.kind}:c:... "
                                 "for libc.")
        if not lo <= len(parts) <= hi or not all(parts[-1:]):
            raise ProbeSpecError(f"{spec!r} does not have the form of a {self.kind} probe",
                                 f"Use one of:\n{USAGE}")
        if self.kind == "profile":
            unit, n = parts
            if unit not in ("hz", "s", "ms", "us") or not n.isdigit() or int(n) <= 0:
                raise ProbeSpecError(f"{spec!r}: profile wants hz:N (samples per second "
                                     "per CPU), or s/ms/us:N for a period",
                                     "Example: profile:hz:99")
        if self.kind == "tc" and len(parts) == 2 and parts[1] not in ("ingress", "egress"):
            raise ProbeSpecError(f"{spec!r}: a tc probe is tc:DEVICE:ingress or "
                                 "tc:DEVICE:egress", "Example: tc:eth0:ingress")
        if self.kind == "socket" and not self.target.isdigit():
            raise ProbeSpecError(f"{spec!r}: a socket probe names a socket's file descriptor",
                                 "Example: -a socket:$fd with fd = sock.fileno()")
        if self.kind in ("software", "hardware"):
            table = SOFTWARE_EVENTS if self.kind == "software" else HARDWARE_EVENTS
            if parts[0] not in table:
                raise ProbeSpecError(f"{spec!r}: unknown {self.kind} event {parts[0]!r}",
                                     f"Known events: {', '.join(sorted(table))}")
            if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) <= 0):
                raise ProbeSpecError(f"{spec!r}: the period must be a positive integer")

    def bind(self, function: str) -> Probe:
        """This probe handled by ``function``."""
        return replace(self, function=function)

    @property
    def spec(self) -> str:
        """The bpftrace-style text of this probe, without the function."""
        return f"{self.kind}:{self.target}"

    def __str__(self) -> str:
        text = self.spec if self.pid is None else f"{self.spec} (pid {self.pid})"
        return f"{text}={self.function}" if self.function else text

    @property
    def perf_event(self) -> tuple[int, int, dict[str, int]]:
        """(perf type, config, sample_period or sample_freq) of a sampling probe."""
        parts = self.target.split(":")
        if self.kind == "profile":
            unit, n = parts[0], int(parts[1])
            if unit == "hz":
                return 1, 0, {"sample_freq": n}
            scale = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000}[unit]
            return 1, 0, {"sample_period": n * scale}
        table = SOFTWARE_EVENTS if self.kind == "software" else HARDWARE_EVENTS
        period = int(parts[1]) if len(parts) == 2 else DEFAULT_PERIOD[self.kind]
        return (1 if self.kind == "software" else 0), table[parts[0]], {"sample_period": period}

    @property
    def wildcard(self) -> bool:
        return "*" in self.target or "?" in self.target

    def target_regex(self) -> str:
        """The target as an anchored regular expression (for wildcards)."""
        return "^" + re.escape(self.target).replace(r"\*", ".*").replace(r"\?", ".") + "$"


def bind_explicit(probes: list[Probe], functions: list[str]) -> list[Probe]:
    """Give each probe without ``=FUNCTION`` the one C function no probe handles.

    Functions with probes of their own (a backend's implied probes) belong in ``probes``.

    Raises :class:`ProbeSpecError` naming the candidates when that is ambiguous.
    """
    taken = {p.function for p in probes if p.function}
    unknown = sorted(taken - set(functions))
    if unknown:
        raise ProbeSpecError(f"no C function named {', '.join(unknown)} in this cell",
                             f"Functions in the cell: {', '.join(functions) or 'none'}")
    free = [f for f in functions if f not in taken]
    unbound = [p for p in probes if not p.function]
    if not unbound:
        return probes
    if len(free) != 1:
        specs = ", ".join(p.spec for p in unbound)
        if not free:
            raise ProbeSpecError(f"no unattached C function left for {specs}",
                                 "Write the function to attach as SPEC=FUNCTION.")
        raise ProbeSpecError(f"{specs}: which function should be attached? "
                             f"Candidates: {', '.join(free)}",
                             f"Write it as {unbound[0].spec}=FUNCTION.")
    return [p if p.function else p.bind(free[0]) for p in probes]


def section(probe: Probe) -> str:
    """The SEC() name of a libbpf-style program for ``probe``'s kind and target.

    Kinds whose target a SEC() name cannot carry (sampling, devices, sockets) give the
    bare name, attached with ``-a``.
    """
    kind, target = probe.kind, probe.target
    if kind == "tracepoint":
        return "tracepoint/" + target.replace(":", "/", 1)
    simple = {"rawtracepoint": "tp_btf", "kprobe": "kprobe", "kretprobe": "kretprobe",
              "kfunc": "fentry", "kretfunc": "fexit", "uprobe": "uprobe",
              "uretprobe": "uretprobe", "usdt": "usdt", "lsm": "lsm", "iter": "iter"}
    if kind in simple:
        if kind == "iter":
            target = target.split(":")[0]
        return f"{simple[kind]}/{target}"
    return {"profile": "perf_event", "software": "perf_event", "hardware": "perf_event",
            "xdp": "xdp", "tc": "tc", "socket": "socket"}.get(kind, "")


def find(pattern: str = "", verbose: bool = False,
         attachable_only: bool = False) -> pd.DataFrame:
    """Probes matching ``pattern`` as a DataFrame; see :func:`ebpf_magic.discover.find`."""
    from ebpf_magic.discover import find as listing  # discover builds on this module's tables

    return listing(pattern, verbose, attachable_only)
