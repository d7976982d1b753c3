"""Uprobes: the perf "uprobe" PMU, or a tracefs ``uprobe_events`` entry when that is refused."""

from __future__ import annotations

import ctypes
import errno
import os

from ebpf_magic.kernel.link import probe_events, routes
from ebpf_magic.kernel.link.base import (
    Link,
    LinkError,
    perf_attr,
    perf_link,
    pmu_retprobe_bit,
    pmu_type,
)

REF_CTR_OFFSET_SHIFT = 32  # PERF_UPROBE_REF_CTR_OFFSET_SHIFT
# Tried in order; the tracefs route is used when the PMU is absent or refuses this process.
ROUTES = ("pmu", "tracefs")


def uprobe(prog_fd: int, path: str, offset: int, *, retprobe: bool = False, pid: int = -1,
           ref_ctr_offset: int = 0) -> Link:
    """Attach ``prog_fd`` at file offset ``offset`` of the binary ``path``.

    ``pid`` limits the probe to one process (-1: all). ``ref_ctr_offset`` is the
    file offset of a USDT semaphore the kernel increments while the probe exists.
    """
    probe_events.sweep_once()
    kind = "uretprobe" if retprobe else "uprobe"
    description = f"{kind}:{path}:0x{offset:x}" + (f" pid {pid}" if pid >= 0 else "")
    cpu = 0 if pid < 0 else -1
    target = f"{path}:0x{offset:x}" + (f"(0x{ref_ctr_offset:x})" if ref_ctr_offset else "")
    return routes.first_that_works(
        ROUTES, lambda: _via_pmu(prog_fd, path, offset, retprobe, pid, cpu, ref_ctr_offset,
                                 description),
        lambda: routes.via_tracefs("uprobe", target, retprobe, prog_fd, pid, cpu, description))


def _via_pmu(prog_fd: int, path: str, offset: int, retprobe: bool, pid: int, cpu: int,
             ref_ctr_offset: int, description: str) -> Link:
    ptype = pmu_type("uprobe")
    if ptype is None:
        raise LinkError(errno.EOPNOTSUPP, f"{description}: no uprobe PMU in /sys/bus/event_source")
    config = ref_ctr_offset << REF_CTR_OFFSET_SHIFT
    if retprobe:
        config |= 1 << pmu_retprobe_bit("uprobe")
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = perf_attr(ptype, config, config1=ctypes.addressof(name), config2=offset)
    return perf_link(prog_fd, attr, pid, cpu, description)

