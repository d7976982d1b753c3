"""What this process may do: load BPF programs, lock memory."""

from __future__ import annotations

import resource

from ebpf_magic.features.finding import FAIL, OK, WARN, Finding
from ebpf_magic.kernel import host


def check_privileges() -> Finding:
    """Whether this process may load tracing programs, with how to get the rights."""
    if host.has_bpf_rights():
        return Finding("privileges", OK, host.rights_summary())
    return Finding("privileges", FAIL, "not allowed to load BPF programs: " +
                   host.rights_summary(), host.rights_hint())


def check_process() -> Finding:
    """This process's user and capabilities."""
    return Finding("process", OK, host.identity())


def check_memlock() -> Finding:
    """Whether the locked-memory limit lets maps load (kernels before 5.11 charge it)."""
    limit = host.memlock()
    if host.version_tuple() >= (5, 11):
        return Finding("memlock", OK, f"{limit}; not used: kernels >= 5.11 charge BPF memory "
                       "to the memory cgroup instead")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= 64 << 20:
        return Finding("memlock", OK, f"{limit} (this kernel charges BPF memory to it)")
    if "CAP_SYS_RESOURCE" in host.capabilities():
        return Finding("memlock", OK, f"{limit}; raised when a program needs more "
                       "(CAP_SYS_RESOURCE held)")
    return Finding("memlock", WARN, f"{limit}: this kernel charges BPF maps to the "
                   "locked-memory limit, so larger maps fail to load with EPERM",
                   "Raise it: `ulimit -l unlimited` in the shell that starts Python, or "
                   "LimitMEMLOCK=infinity in a systemd unit.")
