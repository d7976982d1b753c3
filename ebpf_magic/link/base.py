"""The link object every hook returns, and the perf-event plumbing hooks share.

A :class:`Link` owns the file descriptors that keep one attachment alive and,
for tracefs-defined probes, the probe event to remove afterwards. Closing the
link detaches the program; nothing else does, except process exit (which
closes the fds but leaves tracefs probe events behind, see ``probe_events``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from .. import sysbpf

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FREQ = 1 << 10  # attr.flags bit: sample_period holds a frequency
IOC_ENABLE = 0x2400
IOC_DISABLE = 0x2401
IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)


class LinkError(OSError):
    """An attach or detach step failed; ``errno`` is the kernel's, the message says what."""

    def __init__(self, err: int, what: str, hint: str = "") -> None:
        super().__init__(err, os.strerror(err) if err else "failed")
        self.what = what
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.what}: {self.strerror}"
        return f"{text}\n{self.hint}" if self.hint else text


class Link:
    """One attachment: closing it detaches the program and releases what it held.

    ``close()`` is idempotent, thread-safe and never raises for an object the
    kernel has already dropped. ``undo`` runs after the fds are closed (tracefs
    probe events are removed there).
    """

    def __init__(self, description: str, fds: Sequence[int],
                 undo: Callable[[], None] | None = None) -> None:
        self.description = description
        self._fds: list[int] = list(fds)
        self._undo = undo
        self._lock = threading.Lock()

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors this link holds open (empty once closed)."""
        return tuple(self._fds)

    @property
    def closed(self) -> bool:
        return not self._fds and self._undo is None

    def close(self) -> None:
        """Detach: close every fd, then undo any tracefs entry."""
        with self._lock:
            fds, self._fds = self._fds, []
            undo, self._undo = self._undo, None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if undo is not None:
            with contextlib.suppress(OSError):
                undo()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fds={self._fds}"
        return f"<Link {self.description} {state}>"


def close_all(links: Iterable[Link]) -> None:
    """Close many links; returns when every one is detached."""
    for link in links:
        link.close()


def perf_attr(ev_type: int, config: int, *, sample_period: int = 1, sample_freq: int = 0,
              config1: int = 0, config2: int = 0) -> sysbpf.PerfEventAttr:
    """A perf_event_attr for an event a BPF program will run on."""
    attr = sysbpf.PerfEventAttr(type=ev_type, size=ctypes.sizeof(sysbpf.PerfEventAttr),
                                config=config,
                                sample_type=PERF_SAMPLE_RAW, wakeup=1,
                                config1=config1, config2=config2)
    if sample_freq:
        attr.sample_period = sample_freq
        attr.flags |= PERF_FLAG_FREQ
    else:
        attr.sample_period = sample_period
    return attr


def open_perf_event(attr: sysbpf.PerfEventAttr, pid: int, cpu: int, what: str) -> int:
    """perf_event_open with close-on-exec; LinkError naming ``what`` on failure."""
    try:
        return sysbpf.perf_event_open(attr, pid, cpu, -1, sysbpf.PERF_FLAG_FD_CLOEXEC)
    except OSError as e:
        raise LinkError(e.errno, f"perf_event_open for {what}") from None


def attach_to_perf_event(prog_fd: int, perf_fd: int, what: str) -> None:
    """Run ``prog_fd`` on the perf event and enable it; the event's close detaches."""
    try:
        sysbpf.ioctl(perf_fd, IOC_SET_BPF, prog_fd)
    except OSError as e:
        raise LinkError(e.errno, f"PERF_EVENT_IOC_SET_BPF of program fd {prog_fd} on {what}") \
            from None
    try:
        sysbpf.ioctl(perf_fd, IOC_ENABLE)
    except OSError as e:
        raise LinkError(e.errno, f"PERF_EVENT_IOC_ENABLE on {what}") from None


def perf_link(prog_fd: int, attr: sysbpf.PerfEventAttr, pid: int, cpu: int, description: str,
              undo: Callable[[], None] | None = None) -> Link:
    """Open one perf event, attach ``prog_fd``, and return the owning link."""
    fd = open_perf_event(attr, pid, cpu, description)
    try:
        attach_to_perf_event(prog_fd, fd, description)
    except BaseException:
        os.close(fd)
        raise
    return Link(description, [fd], undo)


def pmu_type(pmu: str) -> int | None:
    """The perf type number of dynamic PMU ``pmu`` ("uprobe", "kprobe"), None if absent."""
    try:
        with open(f"/sys/bus/event_source/devices/{pmu}/type") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def pmu_retprobe_bit(pmu: str) -> int:
    """The config bit that makes a probe PMU event a return probe (its format/retprobe)."""
    try:
        with open(f"/sys/bus/event_source/devices/{pmu}/format/retprobe") as f:
            return int(f.read().strip().partition(":")[2])
    except (OSError, ValueError):
        return 0
