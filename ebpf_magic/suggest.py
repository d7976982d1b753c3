"""Hints for probes that failed to attach: what exists instead, and near names."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from . import kernel
from .probes import Probe

_SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__se_sys_", "__do_sys_",
                     "do_sys_", "ksys_", "sys_", "do_")


@lru_cache(maxsize=1)
def tracepoints() -> tuple[str, ...]:
    """Every tracepoint as ``category:name``."""
    root = kernel.tracefs()
    if root is None:
        return ()
    events = root / "events"
    return tuple(sorted(f"{c.name}:{e.name}" for c in events.iterdir() if c.is_dir()
                        for e in c.iterdir() if (e / "id").exists()))


@lru_cache(maxsize=1)
def kernel_symbols() -> tuple[str, ...]:
    """Function names from /proc/kallsyms."""
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    names.add(parts[2])
    except OSError:
        pass
    return tuple(sorted(names))


def syscall_tracepoints(function: str, exit: bool) -> list[str]:
    """Syscall tracepoints matching a kernel function such as ``__x64_sys_openat``."""
    name = function
    for prefix in _SYSCALL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    name = re.sub(r"\d+$", "", name) if f"syscalls:sys_enter_{name}" not in tracepoints() \
        else name
    side = "exit" if exit else "enter"
    exact = [t for t in tracepoints() if t == f"syscalls:sys_{side}_{name}"]
    if exact:
        return exact
    return [t for t in tracepoints()
            if t.startswith(f"syscalls:sys_{side}_") and name and name in t][:5]


def near(name: str, candidates: tuple[str, ...] | list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def attach_hint(probe: Probe, reason: str) -> str:
    """What to try instead of ``probe``, given why it failed."""
    kind = probe.kind
    if kind in ("kprobe", "kretprobe"):
        if not kernel.kprobes_supported():
            tps = syscall_tracepoints(probe.target, exit=kind == "kretprobe")
            also = [t for t in tracepoints() if probe.target in t.split(":")[1]][:3]
            found = tps + [t for t in also if t not in tps]
            alt = (f" Try the tracepoint instead: {', '.join('tracepoint:' + t for t in found)}."
                   if found else " Use a tracepoint (`tracepoint:CATEGORY:NAME`) instead.")
            return "This kernel is built without kprobes (CONFIG_KPROBES is off)." + alt
        if probe.target not in kernel_symbols():
            close = near(probe.target, kernel_symbols())
            return (f"No kernel function {probe.target!r}." +
                    (f" Did you mean: {', '.join(close)}?" if close else ""))
        return "The function may be inlined or blacklisted for kprobes; try a tracepoint."
    if kind == "tracepoint" and probe.target not in tracepoints():
        close = near(probe.target, tracepoints())
        return (f"No tracepoint {probe.target!r} (they are listed under "
                f"{kernel.tracefs() or '/sys/kernel/tracing'}/events)." +
                (f" Did you mean: {', '.join(close)}?" if close else ""))
    if kind == "rawtracepoint":
        names = tuple(sorted({t.split(":")[1] for t in tracepoints()}))
        close = near(probe.target, names)
        return ("Raw tracepoints are named without category (e.g. sched_switch)." +
                (f" Did you mean: {', '.join(close)}?" if close else ""))
    if kind in ("uprobe", "uretprobe"):
        path, _, sym = probe.target.partition(":")
        if path.startswith("/") and not Path(path).exists():
            return f"No file {path}. Give a path to a binary or library, or a library name like c."
        return (f"Check that {sym!r} is a function symbol of {path} (`nm -D {path}`); "
                "stripped binaries have no symbols to attach to.")
    if kind in ("kfunc", "kretfunc", "lsm"):
        return ("fentry/fexit and LSM programs need BTF and trampoline support (x86-64 or arm64, "
                "kernel >= 5.5, CONFIG_DEBUG_INFO_BTF); this kernel refused them. Use a "
                "tracepoint or raw tracepoint instead.")
    if kind == "hardware":
        return ("Hardware counters are not available here (virtual machines often hide the "
                "CPU's performance counters). Use software:cpu-clock:PERIOD or profile:hz:99.")
    if kind in ("profile", "software"):
        return "perf_event_open failed; check /proc/sys/kernel/perf_event_paranoid and CAP_PERFMON."
    return ""
