"""What this kernel offers tracing: its release, BTF, tracefs, debugfs, run statistics."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ebpf_magic.features.finding import FAIL, OK, WARN, Finding
from ebpf_magic.kernel import host, runstats, tracefs
from ebpf_magic.kernel.link import stale_probe_events


def check_kernel() -> Finding:
    """The kernel's release and machine."""
    return Finding("kernel", OK, f"Linux {host.release()} ({platform.machine()})")


def check_btf() -> Finding:
    """Whether the kernel describes its own types (BTF)."""
    if host.btf_available():
        return Finding("BTF", OK, "/sys/kernel/btf/vmlinux: the kernel's own type information "
                       "(needed by fentry programs and by CO-RE reads of kernel structs)")
    return Finding("BTF", WARN, "no /sys/kernel/btf/vmlinux: fentry/fexit and LSM programs and "
                   "CO-RE reads of kernel structs cannot be used", "Use a kernel built with "
                   "CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2021).")


def mounted(fstype: str) -> list[str]:
    """Mount points of file systems of type ``fstype``."""
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    return [m[1] for m in mounts if len(m) > 2 and m[2] == fstype]


def check_tracefs() -> Finding:
    """Whether tracefs is mounted and readable (mounting it where it is not and may be)."""
    try:
        before = tracefs.root()
        after = tracefs.ensure()
    except PermissionError:
        where = ", ".join(mounted("tracefs")) or "tracefs"
        return Finding("tracefs", WARN, f"{where}: not readable by uid {os.geteuid()}, so "
                       "tracepoints cannot be looked up",
                       "Run with the rights named under privileges.")
    if after is None:
        return Finding("tracefs", FAIL, "tracefs is not mounted: tracepoints cannot be found",
                       "As root: `mount -t tracefs tracefs /sys/kernel/tracing`.")
    if before is None:
        return Finding("tracefs", OK, f"was not mounted; doctor mounted it at {after}")
    return Finding("tracefs", OK, f"mounted at {after}")


def check_debugfs() -> Finding:
    """Whether debugfs is mounted, where older tools look for tracing files."""
    where = mounted("debugfs")
    if where:
        return Finding("debugfs", OK, f"mounted at {where[0]}")
    return Finding("debugfs", WARN, "not mounted: some tracing tools look for "
                   "/sys/kernel/debug/tracing",
                   "As root: `mount -t debugfs debugfs /sys/kernel/debug`.")


def check_probe_events() -> Finding:
    """Whether processes that exited left uprobe/kprobe events in tracefs."""
    stale = stale_probe_events()
    if not stale:
        return Finding("stale probe events", OK, "none left in tracefs by processes that exited")
    shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    return Finding("stale probe events", WARN, f"{len(stale)} uprobe/kprobe events left in "
                   f"tracefs by processes that exited: {shown}",
                   "ebpf_magic removes them at its first attach; now: `python -c 'from "
                   "ebpf_magic.kernel import link; link.remove_stale_probe_events()'`.")


def check_run_stats() -> Finding:
    """Whether the kernel counts programs' runs (what ``NAME.overhead`` and ``%bpf top``
    show), taking this process's descriptor first as its programs would."""
    runstats.acquire()
    status = runstats.status()
    if status.counting:
        return Finding("run statistics", OK, f"{status.detail}; programs' costs are shown "
                       f"(every BPF program on the machine pays {runstats.PRICE} meanwhile: "
                       "`%bpf stats off` or EBPF_MAGIC_BPF_STATS=off turns that off)")
    return Finding("run statistics", WARN, f"{status.detail}: what programs cost cannot be "
                   "shown (NAME.overhead, %bpf list, %bpf top)", status.hint)
