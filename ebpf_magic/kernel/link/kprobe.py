"""Kprobes: the perf "kprobe" PMU, or a tracefs ``kprobe_events`` entry when that is refused."""

from __future__ import annotations

import ctypes
import errno

from ebpf_magic.kernel.link import probe_events, routes
from ebpf_magic.kernel.link.base import (
    Link,
    LinkError,
    perf_attr,
    perf_link,
    pmu_retprobe_bit,
    pmu_type,
)

# Tried in order; the tracefs route is used when the PMU is absent or refuses this process.
ROUTES = ("pmu", "tracefs")


def kprobe(prog_fd: int, function: str, *, retprobe: bool = False, offset: int = 0) -> Link:
    """Attach ``prog_fd`` to kernel function ``function`` (plus ``offset`` bytes)."""
    probe_events.sweep_once()
    kind = "kretprobe" if retprobe else "kprobe"
    description = f"{kind}:{function}" + (f"+0x{offset:x}" if offset else "")
    target = f"{function}+{offset}" if offset else function
    return routes.first_that_works(
        ROUTES, lambda: _via_pmu(prog_fd, function, offset, retprobe, description),
        lambda: routes.via_tracefs("kprobe", target, retprobe, prog_fd, -1, 0, description))


def _via_pmu(prog_fd: int, function: str, offset: int, retprobe: bool,
             description: str) -> Link:
    ptype = pmu_type("kprobe")
    if ptype is None:
        raise LinkError(errno.EOPNOTSUPP, f"{description}: no kprobe PMU in /sys/bus/event_source",
                        "This kernel was built without kprobes (CONFIG_KPROBES).")
    config = 1 << pmu_retprobe_bit("kprobe") if retprobe else 0
    name = ctypes.create_string_buffer(function.encode())
    attr = perf_attr(ptype, config, config1=ctypes.addressof(name), config2=offset)
    return perf_link(prog_fd, attr, -1, 0, description)

