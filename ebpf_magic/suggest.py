"""Hints for probes that failed to attach: what exists instead, and near names."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ebpf_magic import discover
from ebpf_magic.errors import ProbeSpecError
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import kmsg, tracefs
from ebpf_magic.probes import Probe

_SYSCALL_PREFIXES = ("__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__se_sys_", "__do_sys_",
                     "do_sys_", "ksys_", "sys_", "do_")


def tracepoints() -> list[str]:
    """Every tracepoint as ``category:name``, sorted; empty where tracefs cannot be read."""
    try:
        return sorted(tracefs.tracepoints())
    except OSError:
        return []


def raw_tracepoints() -> tuple[str, ...]:
    """Names raw tracepoints attach to: the kernel BTF's ``btf_trace_NAME`` types.

    Without BTF, tracefs's event names outside ``syscalls`` (whose events are
    not raw tracepoints: those are ``sys_enter`` and ``sys_exit``).
    """
    return discover.raw_tracepoints() or tuple(sorted(
        {t.split(":")[1] for t in tracepoints() if not t.startswith("syscalls:")}))


def syscall_tracepoints(function: str, exit: bool) -> list[str]:
    """Syscall tracepoints matching a kernel function such as ``__x64_sys_openat``."""
    name = function
    for prefix in _SYSCALL_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    events = tracepoints()
    name = re.sub(r"\d+$", "", name) if f"syscalls:sys_enter_{name}" not in events else name
    side = "exit" if exit else "enter"
    exact = [t for t in events if t == f"syscalls:sys_{side}_{name}"]
    if exact:
        return exact
    return [t for t in events
            if t.startswith(f"syscalls:sys_{side}_") and name and name in t][:5]


def near(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def attach_hint(probe: Probe, reason: str) -> str:  # noqa: ARG001 - no hint reads it yet
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
        functions = discover.kernel_functions()
        if probe.target not in functions:
            close = near(probe.target, functions)
            return (f"No kernel function {probe.target!r}." +
                    (f" Did you mean: {', '.join(close)}?" if close else ""))
        return "The function may be inlined or blacklisted for kprobes; try a tracepoint."
    if kind == "tracepoint" and probe.target not in (events := tracepoints()):
        close = near(probe.target, events)
        return (f"No tracepoint {probe.target!r} (they are listed under "
                f"{tracefs.root() or '/sys/kernel/tracing'}/events)." +
                (f" Did you mean: {', '.join(close)}?" if close else ""))
    if kind == "rawtracepoint":
        names = raw_tracepoints()
        if probe.target in names:
            return (f"{probe.target} is a raw tracepoint of this kernel, and the kernel refused "
                    "this program for it: a program reading ctx->args[i] beyond the arguments "
                    "the tracepoint passes (its TP_PROTO) is refused with EINVAL.")
        close = [n for n in near(probe.target, names) if n != probe.target]
        return (f"No raw tracepoint {probe.target!r} (raw tracepoints are named without "
                "category, e.g. sched_switch; syscalls are sys_enter and sys_exit)." +
                (f" Did you mean: {', '.join(close)}?" if close else ""))
    if kind in ("uprobe", "uretprobe"):
        path, _, sym = probe.target.partition(":")
        if path.startswith("/") and not Path(path).exists():
            return f"No file {path}. Give a path to a binary or library, or a library name like c."
        held = _uprobe_held_elsewhere(path)
        if held:
            return held
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


# what the BPF back end cannot lower, by the library function LLVM would have called
_LIBCALLS = {
    "__multi3": "a 128-bit multiply",
    "__divti3": "a 128-bit divide", "__udivti3": "a 128-bit divide",
    "__modti3": "a 128-bit remainder", "__umodti3": "a 128-bit remainder",
    "__ashlti3": "a 128-bit shift", "__lshrti3": "a 128-bit shift", "__ashrti3": "a 128-bit shift",
}
_LIBCALL = re.compile(r"built-in function '(\w+)'")


def unsupported_construct(text: str) -> str:
    """Plain words for a construct the BPF back end cannot compile, named in ``text``; or ''."""
    m = _LIBCALL.search(text)
    if not m:
        return ""
    what = _LIBCALLS.get(m.group(1))
    if what is None:
        return (f"a call to the library function {m.group(1)}() is not supported by the BPF "
                "backend (BPF programs cannot call library code): write that computation "
                "without it, or use a BPF helper.")
    return (f"{what} is not supported by the BPF backend: use 64-bit (or narrower) types, e.g. a "
            "32-bit loop counter or __u64 operands; a product or quotient of two 64-bit values "
            "that is kept in an __int128 (or whose high half is used) needs 128 bits.")


@lru_cache(maxsize=1)
def helpers() -> tuple[str, ...]:
    """The names of the kernel's BPF helper functions, from the UAPI header, else empty."""
    for path in ("/usr/include/linux/bpf.h", "/usr/include/x86_64-linux-gnu/linux/bpf.h"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        names = re.findall(r"^\s*FN\((\w+),", text, re.M) or \
            re.findall(r"^\s*FN\((\w+)\)", text, re.M)
        return tuple(sorted("bpf_" + n for n in names if n != "unspec"))
    return ()


def unknown_helper(name: str) -> str:
    """The message for a call to ``name``, which no header declares."""
    close = near(name, helpers(), n=3)
    return (f"{name}() is not a BPF helper (nothing declares it)." +
            (f" Did you mean: {', '.join(close)}?" if close else
             " The helpers are listed in `man bpf-helpers`."))


# verifier rejections by class: the log's words, then what to do
_VERIFIER_HINTS = (
    (r"back-edge from insn|infinite loop detected|jumps is too complex|"
     r"BPF program is too large|too many states|loop is not bounded",
     "The verifier could not prove a loop ends, or followed too many paths through it: give "
     "loops a constant upper bound (for (int i = 0; i < 64 && i < n; i++)), keep them short, or "
     "use bpf_loop()."),
    (r"invalid access to map value|value is outside of the allowed memory range|"
     r"invalid access to packet",
     "An access past the end of a map value (or packet): check the index against the value's "
     "size before using it (if (i >= N) return 0;), with an unsigned index."),
    (r"invalid mem access '\w*_or_null\w*'",
     "A map lookup can return NULL: check the pointer (if (!v) return 0;) before reading or "
     "writing through it."),
    (r"invalid (indirect )?read from stack|uninitialized stack|!read_ok",
     "A read of a stack variable that was never written: initialise it (= {} or = 0, or "
     "__builtin_memset) before use, including structs' padding."),
    (r"pointer arithmetic|math between \w+ pointer|pointer .* prohibited|"
     r"unbounded min value|R\d+ has unknown scalar",
     "Pointer arithmetic with a value the verifier cannot bound: clamp the offset first "
     "(off &= 0xff, or if (off > MAX) return 0;)."),
    (r"invalid mem access 'scalar'|invalid mem access 'inv'",
     "A direct read of memory the program does not own (kernel or user memory): copy it with "
     "bpf_probe_read_kernel() or bpf_probe_read_user() first."),
    (r"unknown func|helper call is not allowed|program of this type cannot use helper",
     "A helper this program type may not call (or that does not exist): see which helpers "
     "each program type allows with `bpftool feature probe`."),
)


# a kernel virtual address as the verifier prints one (a map's, under CAP_SYSLOG or root):
# where the kernel is laid out, which a saved notebook should not carry
_KERNEL_ADDRESS = re.compile(r"\b0x[fF]{4}[0-9a-fA-F]{12}\b")


def verifier_excerpt(lines: Sequence[str]) -> str:
    """The last lines of a verifier log as an error shows them: indented, with kernel
    addresses replaced by ``<kernel address>`` (the comment beside one names its map)."""
    return "\n".join("    " + _KERNEL_ADDRESS.sub("<kernel address>", ln.strip())
                     for ln in lines)


def verifier_hint(log: str) -> str:
    """What to do about a verifier rejection, from the class of its last error in ``log``."""
    lines = [ln for ln in log.strip().splitlines() if not ln.startswith("processed ")]
    tail = "\n".join(lines[-3:])
    for pattern, hint in _VERIFIER_HINTS:
        if re.search(pattern, tail):
            return hint
    return ("The last lines name the instruction it refused and why; the line after '@' is "
            "the C source line of that instruction.")


_REF_CTR_MISMATCH = re.compile(r"ref_ctr_offset mismatch\. inode: 0x([0-9a-f]+) offset: "
                               r"0x([0-9a-f]+) ref_ctr_offset\(old\): 0x([0-9a-f]+)")


def _uprobe_held_elsewhere(target: str) -> str:
    """Why the kernel refused a uprobe on ``target`` if its log says another uprobe at that
    address asks for a different USDT reference counter ("" if it does not say so)."""
    try:
        inode = os.stat(discover.library_path(target)).st_ino
    except (OSError, ProbeSpecError):
        return ""
    for line in reversed(kmsg.recent()):
        m = _REF_CTR_MISMATCH.search(line)
        if m and int(m.group(1), 16) == inode:
            return (f"Another tracer holds a uprobe at this address (file offset "
                    f"0x{m.group(2)}) registered with a USDT reference counter at "
                    f"0x{m.group(3)}; the kernel refuses a second uprobe at one address unless "
                    f"both name the same counter (its log: 'ref_ctr_offset mismatch'). BCC's "
                    f"tools register such uprobes (funclatency, trace, argdist on the same "
                    f"function): stop that tracer, then attach again.")
    return ""
