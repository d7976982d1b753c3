"""Attaching loaded BPF programs by file descriptor, one module per kind of hook.

Every hook returns a :class:`Link`; closing it detaches. Nothing here needs the
compiler backend that loaded the program: a program fd is enough.
:func:`close_all` detaches many links at once and leaves the slow part of the
kernel's cleanup to a background thread; :func:`wait_released` waits for it.
"""

from .base import Link, LinkError, close_all, wait_released
from .kprobe import kprobe
from .perf_event import perf_event
from .probe_events import remove_stale_probe_events, stale_probe_events
from .raw_tracepoint import raw_tracepoint
from .tracepoint import tracepoint, tracepoints
from .uprobe import uprobe
from .xdp import device as xdp_device
from .xdp import xdp

__all__ = ["Link", "LinkError", "close_all", "kprobe", "perf_event", "raw_tracepoint",
           "remove_stale_probe_events", "stale_probe_events", "tracepoint", "tracepoints",
           "uprobe", "wait_released", "xdp", "xdp_device"]
