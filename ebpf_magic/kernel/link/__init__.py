"""Attaching loaded BPF programs by file descriptor, one module per kind of hook.

Every hook returns a :class:`Link`; closing it detaches. Nothing here needs the
compiler backend that loaded the program: a program fd is enough.
:func:`close_all` detaches many links at once and leaves the slow part of the
kernel's cleanup to a background thread; :func:`wait_released` waits for it.
"""

from ebpf_magic.kernel.link.base import Link, LinkError, close_all, device_index, wait_released
from ebpf_magic.kernel.link.iter import IterLink, iterator
from ebpf_magic.kernel.link.kprobe import kprobe
from ebpf_magic.kernel.link.perf_event import perf_event
from ebpf_magic.kernel.link.probe_events import remove_stale_probe_events, stale_probe_events
from ebpf_magic.kernel.link.raw_tracepoint import raw_tracepoint
from ebpf_magic.kernel.link.socket_filter import socket_filter
from ebpf_magic.kernel.link.tc import tc
from ebpf_magic.kernel.link.tracepoint import tracepoint, tracepoints
from ebpf_magic.kernel.link.uprobe import uprobe
from ebpf_magic.kernel.link.xdp import device as xdp_device
from ebpf_magic.kernel.link.xdp import xdp

__all__ = ["IterLink", "Link", "LinkError", "close_all", "device_index", "iterator", "kprobe",
           "perf_event", "raw_tracepoint", "remove_stale_probe_events", "socket_filter",
           "stale_probe_events", "tc", "tracepoint", "tracepoints", "uprobe", "wait_released",
           "xdp", "xdp_device"]
