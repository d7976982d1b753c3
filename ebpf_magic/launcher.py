"""Start an IPython kernel that holds the capabilities BPF needs and no others.

A Jupyter kernelspec runs ``python -m ebpf_magic.launcher -f {connection_file}``.
The launcher narrows its own capabilities to :func:`wanted` (those it holds of
them: a root process holds all, a file-capability interpreter holds what
``setcap`` granted), removes every other capability from the bounding set so
that nothing the kernel later runs can regain it, raises the kept ones as
ambient capabilities so they survive ``execve``, lifts ``RLIMIT_MEMLOCK``, and
then replaces itself with ``python -m ipykernel_launcher``.

Run ``python -m ebpf_magic.launcher --show`` to print the set it would keep.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from pathlib import Path

from . import kernel
from .kernel import (
    CAP_BPF,
    CAP_DAC_OVERRIDE,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_RESOURCE,
    CAP_SYSLOG,
)

CAP_SETPCAP = 8

NAMES = {CAP_DAC_OVERRIDE: "dac_override", CAP_SETPCAP: "setpcap",
         CAP_NET_ADMIN: "net_admin", CAP_SYS_ADMIN: "sys_admin",
         CAP_SYS_RESOURCE: "sys_resource", CAP_SYSLOG: "syslog", CAP_PERFMON: "perfmon",
         CAP_BPF: "bpf"}

PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def wanted(version: tuple[int, int] | None = None, uid: int | None = None) -> set[int]:
    """The capabilities the kernel process needs on this host.

    CAP_BPF and CAP_PERFMON load and attach tracing programs (kernel >= 5.8;
    CAP_SYS_ADMIN before that), CAP_NET_ADMIN attaches XDP and tc programs,
    CAP_SYSLOG makes /proc/kallsyms show the addresses that kernel stacks are
    symbolized with, CAP_SYS_RESOURCE lifts the locked-memory limit BPF maps
    are charged to before 5.11. A non-root user also needs CAP_DAC_OVERRIDE:
    tracefs is root's alone, and a non-root process may not create uprobes
    through the perf "uprobe" PMU, so BCC writes tracefs's uprobe_events.
    """
    version = kernel.version_tuple() if version is None else version
    uid = os.getuid() if uid is None else uid
    caps = {CAP_BPF, CAP_PERFMON} if version >= (5, 8) else {CAP_SYS_ADMIN}
    caps |= {CAP_NET_ADMIN, CAP_SYSLOG}
    if version < (5, 11):
        caps.add(CAP_SYS_RESOURCE)
    if uid != 0:
        caps.add(CAP_DAC_OVERRIDE)
    return caps


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAP_BPF


def mask(caps: set[int]) -> int:
    return sum(1 << c for c in caps)


def names(bits: int) -> list[str]:
    """``cap_*`` names of the bits set in a capability mask."""
    return [f"cap_{NAMES.get(c, str(c))}" for c in range(64) if bits >> c & 1]


def _capget() -> tuple[int, int, int]:
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    join = lambda field: getattr(data[0], field) | getattr(data[1], field) << 32  # noqa: E731
    return join("effective"), join("permitted"), join("inheritable")


def _capset(bits: int) -> None:
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    for i, part in enumerate((bits & 0xFFFFFFFF, bits >> 32)):
        data[i].effective = data[i].permitted = data[i].inheritable = part
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _prctl(*args: int) -> None:
    if _libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl{args} failed: {os.strerror(err)}")


def _raise_memlock() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def restrict(caps: set[int]) -> int:
    """Keep only ``caps`` (of those held) in every capability set; return the kept mask."""
    effective, permitted, _ = _capget()
    known = mask({c for c in caps if c <= last_cap()})
    keep = known & permitted
    _raise_memlock()
    if effective >> CAP_SETPCAP & 1:
        for cap in range(last_cap() + 1):
            if not keep >> cap & 1:
                _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    elif os.geteuid() == 0:
        print("ebpf_magic.launcher: no CAP_SETPCAP, so the bounding set stays as it is and "
              "programs the kernel runs may regain root's capabilities", file=sys.stderr)
    _capset(keep)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(last_cap() + 1):
        if keep >> cap & 1:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    missing = known & ~keep
    if missing:
        print(f"ebpf_magic.launcher: this process lacks {', '.join(names(missing))}; "
              "the kernel runs without them", file=sys.stderr)
    return keep


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--show"]:
        print(",".join(names(mask(wanted()))))
        return 0
    restrict(wanted())
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])
    return 1  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
