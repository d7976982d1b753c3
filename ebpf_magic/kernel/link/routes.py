"""Kprobes and uprobes alike: the perf PMU first, a tracefs probe event when it is refused."""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import PERF_TYPE_TRACEPOINT, Link, LinkError, perf_attr, perf_link
from ebpf_magic.kernel.link.tracepoint import tracepoint_id

# the PMU is missing (EOPNOTSUPP, raised by the caller) or refuses this process (EACCES, EPERM)
FALLBACK_ERRNOS = (errno.EACCES, errno.EPERM, errno.EOPNOTSUPP)


def first_that_works(routes: Sequence[str], via_pmu: Callable[[], Link],
                     via_tracefs: Callable[[], Link]) -> Link:
    """Try ``routes`` (``"pmu"``, ``"tracefs"``) in order; a refusal moves on to the next.

    Raises the last refusal when every route is refused, any other error at once.
    """
    error: LinkError | None = None
    for route in routes:
        try:
            return via_pmu() if route == "pmu" else via_tracefs()
        except LinkError as e:
            if e.errno not in FALLBACK_ERRNOS:
                raise
            error = e
    assert error is not None
    raise error


def via_tracefs(kind: str, target: str, retprobe: bool, prog_fd: int, pid: int, cpu: int,
                description: str) -> Link:
    """A ``kind`` ("kprobe"/"uprobe") tracefs probe event on ``target``, opened as a
    tracepoint and linked to ``prog_fd``; closing the link removes the event."""
    grp, event = probe_events.add(kind, target, retprobe=retprobe)

    def undo() -> None:
        probe_events.remove(kind, grp, event, busy_timeout=probe_events.BUSY_TIMEOUT)

    try:
        attr = perf_attr(PERF_TYPE_TRACEPOINT, tracepoint_id(grp, event))
        return perf_link(prog_fd, attr, pid, cpu, f"{description} ({grp}/{event})", undo)
    except BaseException:
        undo()
        raise
