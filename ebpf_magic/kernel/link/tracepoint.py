"""Tracepoints: a PERF_TYPE_TRACEPOINT event per tracepoint, the program set on it."""

from __future__ import annotations

import errno
import fnmatch
from pathlib import Path

from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import PERF_TYPE_TRACEPOINT, Link, LinkError, perf_attr, perf_link


def _tracefs(what: str) -> Path:
    root = kernel.tracefs()
    if root is None:
        raise LinkError(errno.ENOENT, f"{what}: tracefs is not mounted or not readable",
                        "Mount it: `mount -t tracefs tracefs /sys/kernel/tracing`.")
    return root


def tracepoint_id(category: str, name: str) -> int:
    """The kernel's id of tracepoint ``category:name`` (tracefs events/CAT/NAME/id)."""
    what = f"tracepoint {category}:{name}"
    path = _tracefs(what) / "events" / category / name / "id"
    try:
        return int(path.read_text())
    except OSError as e:
        raise LinkError(e.errno or errno.ENOENT, f"reading {path} for {what}") from None


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
    root = _tracefs(f"tracepoints matching {pattern}")
    try:
        lines = (root / "available_events").read_text().split()
    except OSError as e:
        raise LinkError(e.errno or errno.EIO, f"reading {root / 'available_events'}") from None
    found = []
    for line in lines:
        cat, _, tp = line.partition(":")
        if fnmatch.fnmatchcase(cat, category) and fnmatch.fnmatchcase(tp, name):
            found.append((cat, tp))
    return sorted(found)
