"""Tracepoints: a PERF_TYPE_TRACEPOINT event per tracepoint, the program set on it."""

from __future__ import annotations

import errno
import fnmatch

from ebpf_magic.kernel import tracefs
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import PERF_TYPE_TRACEPOINT, Link, LinkError, perf_attr, perf_link


def _error(e: OSError, what: str) -> LinkError:
    if isinstance(e, tracefs.NotMounted):
        return LinkError(errno.ENOENT, f"{what}: tracefs is not mounted or not readable",
                         tracefs.MOUNT_HINT)
    return LinkError(e.errno or errno.EIO, f"reading {e.filename} for {what}")


def tracepoint_id(category: str, name: str) -> int:
    """The kernel's id of tracepoint ``category:name`` (tracefs events/CAT/NAME/id)."""
    try:
        return tracefs.tracepoint_id(category, name)
    except OSError as e:
        raise _error(e, f"tracepoint {category}:{name}") from None


def tracepoint(prog_fd: int, category: str, name: str) -> Link:
    """Attach ``prog_fd`` (a tracepoint program) to ``category:name``."""
    probe_events.sweep_once()
    description = f"tracepoint:{category}:{name}"
    attr = perf_attr(PERF_TYPE_TRACEPOINT, tracepoint_id(category, name))
    # One event on CPU 0 for every task: the program runs on whichever CPU fires.
    return perf_link(prog_fd, attr, -1, 0, description)


def tracepoints(pattern: str) -> list[tuple[str, str]]:
    """``(category, name)`` of every tracepoint matching ``CAT:NAME`` with ``*`` wildcards."""
    category, sep, name = pattern.partition(":")
    if not sep:
        raise LinkError(errno.EINVAL, f"tracepoint pattern {pattern!r} is not CATEGORY:NAME")
    try:
        events = tracefs.tracepoints()
    except OSError as e:
        raise _error(e, f"tracepoints matching {pattern}") from None
    found = []
    for event in events:
        cat, _, tp = event.partition(":")
        if fnmatch.fnmatchcase(cat, category) and fnmatch.fnmatchcase(tp, name):
            found.append((cat, tp))
    return sorted(found)
