"""Kprobes: the perf "kprobe" PMU, or a tracefs ``kprobe_events`` entry when that is refused."""

from __future__ import annotations

import ctypes
import errno

from . import probe_events
from .base import (
    PERF_TYPE_TRACEPOINT,
    Link,
    LinkError,
    perf_attr,
    perf_link,
    pmu_retprobe_bit,
    pmu_type,
)
from .tracepoint import tracepoint_id

# Tried in order; the tracefs route is used when the PMU is absent or refuses this process.
ROUTES = ("pmu", "tracefs")
# the PMU is missing (EOPNOTSUPP, raised here) or refuses this process (EACCES, EPERM)
_FALLBACK_ERRNOS = (errno.EACCES, errno.EPERM, errno.EOPNOTSUPP)


def kprobe(prog_fd: int, function: str, *, retprobe: bool = False, offset: int = 0) -> Link:
    """Attach ``prog_fd`` to kernel function ``function`` (plus ``offset`` bytes)."""
    probe_events.sweep_once()
    kind = "kretprobe" if retprobe else "kprobe"
    description = f"{kind}:{function}" + (f"+0x{offset:x}" if offset else "")
    error: LinkError | None = None
    for route in ROUTES:
        try:
            if route == "pmu":
                return _via_pmu(prog_fd, function, offset, retprobe, description)
            return _via_tracefs(prog_fd, function, offset, retprobe, description)
        except LinkError as e:
            if e.errno not in _FALLBACK_ERRNOS:
                raise
            error = e
    assert error is not None
    raise error


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


def _via_tracefs(prog_fd: int, function: str, offset: int, retprobe: bool,
                 description: str) -> Link:
    target = f"{function}+{offset}" if offset else function
    grp, event = probe_events.add("kprobe", target, retprobe=retprobe)

    def undo() -> None:
        probe_events.remove("kprobe", grp, event, busy_timeout=probe_events.BUSY_TIMEOUT)

    try:
        attr = perf_attr(PERF_TYPE_TRACEPOINT, tracepoint_id(grp, event))
        return perf_link(prog_fd, attr, -1, 0, f"{description} ({grp}/{event})", undo)
    except BaseException:
        undo()
        raise
