"""Whether bpftrace cells can run here, and the doctor's rows saying so."""

from __future__ import annotations

import ctypes
import os
import time

from ebpf_magic.backend import Diagnostic
from ebpf_magic.bpftrace import process, shim
from ebpf_magic.errors import BPFError
from ebpf_magic.sessions import policy

_GETPPID = {"x86_64": 110, "aarch64": 173}


def can_run() -> tuple[bool, str]:
    """Whether a bpftrace cell runs live here, and if not, why not (what replay says)."""
    ready, why = policy.kernel_ready()
    if not ready:
        return False, why
    try:
        process.binary()
    except BPFError as e:
        return False, e.message
    return True, "live"


def check_installed() -> Diagnostic:
    """bpftrace's presence and version, and how it gets past its uid check here."""
    try:
        path = process.binary()
    except BPFError as e:
        return Diagnostic("bpftrace", "warn", f"{e.message}: %%bpftrace cells replay "
                          "recordings only", process.INSTALL_HINT)
    version = process.version(path) or "of unknown version"
    if not shim.needed():
        how = "runs as root"
    else:
        found = shim.find()
        how = (f"runs as uid {os.geteuid()} with this process's capabilities, its uid check "
               f"answered by {found}" if found else f"runs as uid {os.geteuid()}; the uid "
               "shim is built on first use (needs gcc)")
    return Diagnostic("bpftrace", "ok", f"bpftrace {version} at {path}; {how}")


def check_cells() -> Diagnostic:
    """Run a program counting this process's getppid() calls and compare the count."""
    number = _GETPPID.get(os.uname().machine)
    if number is None:
        return Diagnostic("bpftrace cells", "not checked", "no getppid number known here")
    ok, why = can_run()
    if not ok:
        installed = why != process.MISSING
        return Diagnostic("bpftrace cells", "fail" if installed else "not checked", why,
                          "See the privileges and bpftrace rows." if installed else "")
    from ebpf_magic.bpftrace.program import BpftraceProgram

    start = time.monotonic()
    try:
        with BpftraceProgram(f"tracepoint:syscalls:sys_enter_getppid /pid == {os.getpid()}/ "
                             "{ @calls = count(); }", name="doctor") as prog:
            libc = ctypes.CDLL(None, use_errno=True)
            for _ in range(7):
                libc.syscall(number)
            seen = prog.maps["@calls"].df["count"].sum()
    except BPFError as e:
        return Diagnostic("bpftrace cells", "fail", e.message, e.hint)
    took = time.monotonic() - start
    if seen != 7:
        return Diagnostic("bpftrace cells", "fail", f"counted {seen} of 7 getppid() calls",
                          "Report this: the map read back differs from the calls made.")
    return Diagnostic("bpftrace cells", "ok", f"ran a tracepoint program, read 7 of 7 calls "
                      f"back from its map ({took:.1f} s)")
