"""The link object every hook returns, and the perf-event plumbing hooks share.

A :class:`Link` owns the file descriptors that keep one attachment alive and,
for tracefs-defined probes, the probe event to remove afterwards. Closing the
link (or dropping the last reference to it) detaches the program. Process exit
closes the fds too but leaves tracefs probe events behind; ``probe_events``
finds and removes those.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ebpf_magic.kernel import sysbpf

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FREQ = 1 << 10  # attr.flags bit: sample_period holds a frequency
IOC_ENABLE = 0x2400
IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
BPF_PERF_EVENT = 41  # enum bpf_attach_type: a BPF link to a perf event (kernel >= 5.15)
# link_create's answers where BPF perf links do not exist for this event or kernel
_NO_PERF_LINK = (errno.EINVAL, errno.EOPNOTSUPP, 524)  # 524: the kernel's ENOTSUPP


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

    ``detach_fds`` are closed first and detach the program (a BPF link, or a
    perf event the program was set on directly). ``release_fds`` hold only what is
    inert once those are closed (the perf event under a BPF perf link): the
    kernel may take an RCU grace period to free each, so :func:`close_all` may
    release them in the background. ``undo`` runs last (tracefs probe events
    are removed there). ``close()`` is idempotent, thread-safe and never raises
    for an object the kernel has already dropped.
    """

    def __init__(self, description: str, detach_fds: Sequence[int],
                 undo: Callable[[], None] | None = None, *,
                 release_fds: Sequence[int] = ()) -> None:
        self.description = description
        self._fds: list[int] = list(detach_fds)
        self._release_fds: list[int] = list(release_fds)
        self._undo = undo
        self._lock = threading.Lock()

    @property
    def fds(self) -> tuple[int, ...]:
        """Every descriptor this link holds open (empty once closed)."""
        return (*self._fds, *self._release_fds)

    @property
    def closed(self) -> bool:
        """True once close() (or close_all) has taken everything the link held."""
        return not self._fds and not self._release_fds and self._undo is None

    def _take(self) -> tuple[list[int], list[int], Callable[[], None] | None]:
        with self._lock:
            taken = self._fds, self._release_fds, self._undo
            self._fds, self._release_fds, self._undo = [], [], None
        return taken

    def close(self) -> None:
        """Detach, then release: close every fd, then undo any tracefs entry."""
        fds, release_fds, undo = self._take()
        _release(fds + release_fds, undo)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fds={list(self.fds)}"
        return f"<Link {self.description} {state}>"


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _release(fds: Sequence[int], undo: Callable[[], None] | None) -> None:
    for fd in fds:
        _close(fd)
    if undo is not None:
        with contextlib.suppress(OSError):
            undo()


_MAX_CLOSERS = 128


def _close_parallel(fds: Sequence[int]) -> None:
    """Close ``fds`` from many threads: the RCU grace periods their release waits for overlap."""
    if len(fds) < 2:
        for fd in fds:
            _close(fd)
        return
    with ThreadPoolExecutor(min(len(fds), _MAX_CLOSERS), "ebpf-magic-detach") as pool:
        list(pool.map(_close, fds))


class _Releaser:
    """Releases detached links' remaining fds in one background thread, started on demand.

    The kernel frees a tracepoint's perf event under a global mutex, one RCU grace
    period at a time (about 40 ms each on a small VM); nothing in user space shortens
    that, so it happens after detaching rather than before it returns. The thread
    ends when the queue is empty; at interpreter exit the queue is drained first,
    so tracefs probe events are removed.
    """

    def __init__(self) -> None:
        self._queue: deque[tuple[list[int], Callable[[], None] | None]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._atexit = False

    def submit(self, items: list[tuple[list[int], Callable[[], None] | None]]) -> None:
        with self._cond:
            self._queue.extend(items)
            if not self._atexit:
                atexit.register(self.wait)
                self._atexit = True
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._run, name="ebpf-magic-release", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    return
                fds, undo = self._queue.popleft()
            _release(fds, undo)

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)


_releaser = _Releaser()


def close_all(links: Iterable[Link], *, wait: bool = False) -> None:
    """Detach many links at once: when this returns, none of their programs runs.

    Detaching fds are closed from parallel threads. What remains open (perf events
    under BPF perf links, then tracefs entries) is released by a background thread
    unless ``wait`` is true; :func:`wait_released` waits for it.
    """
    taken = [link._take() for link in links]
    _close_parallel([fd for fds, _, _ in taken for fd in fds])
    rest = [(release_fds, undo) for _, release_fds, undo in taken if release_fds or undo]
    if wait:
        for fds, undo in rest:
            _release(fds, undo)
    elif rest:
        _releaser.submit(rest)


def wait_released(timeout: float | None = None) -> bool:
    """Wait until links detached by :func:`close_all` are fully released; False on timeout."""
    return _releaser.wait(timeout)


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


def attach_to_perf_event(prog_fd: int, perf_fd: int, what: str) -> int | None:
    """Run ``prog_fd`` on the perf event and enable it.

    Returns the fd of the BPF perf link whose close detaches the program, or None
    where the kernel has no such links and the program was set on the event
    itself (then closing the event detaches).
    """
    link_fd = None
    try:
        link_fd = sysbpf.link_create(prog_fd, perf_fd, BPF_PERF_EVENT)
    except OSError as e:
        if e.errno not in _NO_PERF_LINK:
            raise LinkError(e.errno, f"BPF_LINK_CREATE of program fd {prog_fd} on {what}") \
                from None
        try:
            sysbpf.ioctl(perf_fd, IOC_SET_BPF, prog_fd)
        except OSError as e2:
            raise LinkError(e2.errno, f"PERF_EVENT_IOC_SET_BPF of program fd {prog_fd} on "
                            f"{what}") from None
    try:
        sysbpf.ioctl(perf_fd, IOC_ENABLE)
    except OSError as e:
        if link_fd is not None:
            os.close(link_fd)
        raise LinkError(e.errno, f"PERF_EVENT_IOC_ENABLE on {what}") from None
    return link_fd


def perf_event_with(prog_fd: int, attr: sysbpf.PerfEventAttr, pid: int, cpu: int,
                    what: str) -> tuple[int, int | None]:
    """Open one perf event running ``prog_fd``: ``(fd that detaches, inert fd or None)``.

    Under a BPF perf link the link's fd detaches and the event's is inert after
    it; without one the event's own fd does both.
    """
    fd = open_perf_event(attr, pid, cpu, what)
    try:
        link_fd = attach_to_perf_event(prog_fd, fd, what)
    except BaseException:
        os.close(fd)
        raise
    return (fd, None) if link_fd is None else (link_fd, fd)


def perf_link(prog_fd: int, attr: sysbpf.PerfEventAttr, pid: int, cpu: int, description: str,
              undo: Callable[[], None] | None = None) -> Link:
    """Open one perf event, attach ``prog_fd``, and return the owning link."""
    detach, inert = perf_event_with(prog_fd, attr, pid, cpu, description)
    return Link(description, [detach], undo, release_fds=[] if inert is None else [inert])


def device_index(device: str) -> int:
    """The index of network device ``device``; :class:`LinkError` naming the devices there are."""
    try:
        return int(Path(f"/sys/class/net/{device}/ifindex").read_text())
    except (OSError, ValueError):
        net = Path("/sys/class/net")
        devices = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
        raise LinkError(errno.ENODEV, f"no network device {device!r}",
                        f"Devices here: {', '.join(devices)}") from None


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
