"""The errors of the libbpf backend: an object libbpf cannot open, a load the kernel refuses,
an attachment that fails; each says what to do."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ebpf_magic.backend.libbpf import _lib
from ebpf_magic.errors import AttachError, BPFError, NotPrivilegedError, VerifierError
from ebpf_magic.kernel import host as kernel
from ebpf_magic.probes import Probe
from ebpf_magic.suggest import (
    helpers,
    near,
    syscall_tracepoints,
    unknown_helper,
    verifier_excerpt,
    verifier_hint,
)

_EXTERN = re.compile(r"failed to find BTF for extern '(\w+)'")
_PROG_FAILED = re.compile(r"prog '(\w+)': (?:BPF program load failed|failed to load)")
VERIFIER_LOG = "-- BEGIN PROG LOAD LOG --"  # libbpf's log has it where the verifier ran
# SEC() hooks attached through BPF trampolines (BTF-typed, refused where trampolines are)
_TRAMPOLINE_HOOKS = {"fentry", "fexit", "fmod_ret", "fentry.s", "fexit.s", "fmod_ret.s", "lsm",
                     "lsm.s", "lsm_cgroup", "freplace"}
_KPROBE_HOOKS = {"kprobe", "kretprobe", "ksyscall", "kretsyscall", "kprobe.multi",
                 "kretprobe.multi"}


def open_failure(err: int, log: list[str]) -> BPFError:
    """The error for a compiled object libbpf could not open (``err``: its errno)."""
    extern = next((m.group(1) for m in map(_EXTERN.search, log) if m), None)
    if extern and near(extern, helpers(), n=1):  # a misspelt helper
        return BPFError(unknown_helper(extern),
                        "Call one of the kernel's helpers (`man bpf-helpers`) or define "
                        "the function in the cell (static inline).")
    if extern:
        return BPFError(f"{extern} is used but defined nowhere: not in the cell, not a "
                        "BPF helper, not in libbpf's headers.",
                        "Define it, or include the header that does (a cell without "
                        "#include gets vmlinux.h and libbpf's bpf_helpers.h, "
                        "bpf_tracing.h, bpf_core_read.h and bpf_endian.h).")
    return BPFError(f"libbpf could not open the compiled object: {_lib.strerror(err)}",
                    "\n".join(log[-8:]))


def attach_failure(probe: Probe, where: str, err: int, log: list[str]) -> AttachError:
    """The error for attaching ``probe`` (``where``, in words) that failed with ``err``."""
    detail = next((ln.strip() for ln in reversed(log) if ln.strip()), "")
    message = f"cannot attach {where}: {_lib.strerror(err)}" + (
        f" ({detail})" if detail else "")
    hint = ""
    if probe.kind in ("kprobe", "kretprobe") and not kernel.kprobes_supported():
        found = syscall_tracepoints(probe.target, exit=probe.kind == "kretprobe")
        hint = "This kernel is built without kprobes (CONFIG_KPROBES is off)."
        if found:
            category, _, name = found[0].partition(":")
            hint += (f' Use the tracepoint instead: SEC("tracepoint/{category}/{name}") '
                     f"(or -a tracepoint:{found[0]}).")
        else:
            hint += ' Use a tracepoint instead: SEC("tracepoint/CATEGORY/NAME").'
    return AttachError(message, hint, probe=str(probe))


def load_failure(err: int, log: list[str], sections: Mapping[str, str] | None = None,
                 loaded: Sequence[str] = ()) -> BPFError:
    """The error for a failed ``bpf_object__load``: ``sections`` are every program's SEC()
    names, ``loaded`` the programs that were to load."""
    if err in (1, 13) and not kernel.has_bpf_rights():
        return NotPrivilegedError("Not allowed to load BPF programs: " +
                                  kernel.rights_summary(), kernel.rights_hint())
    text = "\n".join(log)
    function = next((m.group(1) for m in map(_PROG_FAILED.search, log) if m), "")
    section = (sections or {}).get(function, "")
    hook = section.partition("/")[0]
    if hook in _TRAMPOLINE_HOOKS and VERIFIER_LOG not in text:
        kprobes = kernel.kprobes_supported()
        others = [p for p in loaded if p != function and
                  (sections or {}).get(p, "").partition("/")[0] not in _TRAMPOLINE_HOOKS and
                  (kprobes or (sections or {}).get(p, "").partition("/")[0] not in _KPROBE_HOOKS)]
        return VerifierError(
            f'This kernel refuses SEC("{section}") {function}(): it loads no {hook} programs '
            f"({_lib.strerror(err)}, with the rights to load BPF).",
            "fentry, fexit and LSM programs need BPF trampolines this kernel does not offer "
            "them. Hook the same event with a tracepoint or raw tracepoint (%bpf probes "
            "'tracepoint:*NAME*')" + (f"; or run the cell's other programs without it: "
                                      f"--programs {','.join(others)}" if others else "") + ".",
            log=text, function=function)
    if "missing BPF prog type" in text:
        return BPFError(f"{function or 'A function'}() has no SEC() name, so libbpf cannot tell "
                        "what kind of program it is.",
                        'Put SEC("tracepoint/CATEGORY/NAME") (or SEC("kprobe/FUNC"), '
                        'SEC("uprobe"), SEC("perf_event")...) before it; a SEC() without a target '
                        "is attached with -a SPEC=FUNCTION.")
    verifier = [ln for ln in log if ln.strip() and not ln.startswith("libbpf:")
                and not ln.startswith(("processed ", "-- BEGIN", "-- END"))]
    if function or VERIFIER_LOG in text:
        tail = verifier_excerpt((verifier or log)[-12:])
        return VerifierError(
            f"The kernel's verifier rejected {function or 'a program'}() "
            f"({_lib.strerror(err)}). The end of its log:\n{tail}",
            verifier_hint("\n".join(verifier or log)), log=text, function=function)
    detail = "\n".join(ln.strip() for ln in log[-6:])
    return BPFError(f"libbpf could not load the program: {_lib.strerror(err)}", detail)
