"""Another process's BPF objects, by descriptor: listed from ``/proc/PID/fdinfo``, and
duplicated into this process with ``pidfd_getfd(2)``.

A program run by a child process (bpftrace) keeps its maps in descriptors of its own. A
copy of such a descriptor reads the map with the same system calls as any other
(:mod:`.sysbpf`), and keeps it alive until the copy is closed. Taking one needs what
``ptrace(2)`` would need: the same user, and no capability the caller lacks, which holds
for a child started by this process with its own rights.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from ebpf_magic.kernel import sysbpf

_NR_PIDFD_GETFD = 438  # the same on every architecture (asm-generic numbering since 5.1)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class ObjectFd:
    """One BPF object a process holds: its descriptor there and what fdinfo says of it."""

    fd: int
    kind: str  # "map" or "prog"
    id: int  # the kernel's id (map_id, prog_id)
    info: dict[str, str]  # every fdinfo field, as text


def bpf_objects(pid: int) -> list[ObjectFd]:
    """The BPF maps and programs process ``pid`` holds, in descriptor order.

    Descriptors closed while being listed are skipped; OSError if the process is gone
    or its descriptors cannot be read.
    """
    out = []
    names = os.listdir(f"/proc/{pid}/fd")
    for name in sorted(names, key=int):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target not in ("anon_inode:bpf-map", "anon_inode:bpf-prog"):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        kind = "map" if target.endswith("map") else "prog"
        ident = info.get("map_id" if kind == "map" else "prog_id", "0")
        out.append(ObjectFd(int(name), kind, int(ident), info))
    return out


def open_pidfd(pid: int) -> int:
    """A pidfd of process ``pid`` (close it when done); OSError if it is gone."""
    return os.pidfd_open(pid)


def take(pidfd: int, fd: int) -> int:
    """A copy, in this process, of descriptor ``fd`` of the process behind ``pidfd``.

    The copy is close-on-exec. OSError (EPERM, EBADF, ESRCH...) when it cannot be taken.
    """
    copy = _libc.syscall(_NR_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(fd),
                         ctypes.c_uint(0))
    if copy < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    return int(copy)


def map_name(fd: int) -> str:
    """The name the kernel keeps for the map behind ``fd`` (at most 15 characters)."""
    return sysbpf.map_info(fd).name.decode("ascii", "replace")
