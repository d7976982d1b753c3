"""The perf and ring buffers a stream reads, sized as the module doc of
:mod:`ebpf_magic.data.streams` says, and the memory its events may take."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ebpf_magic.data.streams.options import StreamOptionError, StreamWarning, as_dtype
from ebpf_magic.kernel import mapkinds
from ebpf_magic.kernel.perfbuf import PAGE_SIZE, PerfBuffer, lost_format_supported
from ebpf_magic.kernel.reader import Reader
from ebpf_magic.kernel.ringbuf import RingBuffer

PERF_BUDGET = 64 << 20  # bytes of perf rings per stream, split across the CPUs
PERF_FLOOR = 256 << 10  # the least and the most one CPU's ring gets
PERF_CEILING = 16 << 20
READ_BYTES = 512 << 10  # a buffer is read in pieces of this size, which stay in the CPU's cache
STREAM_KINDS = tuple(name for name, kind in mapkinds.KINDS.items() if kind.stream)


def perf_pages(ncpus: int) -> int:
    """Pages per CPU of a perf buffer by default (see the module doc for the formula)."""
    per_cpu = min(max(PERF_BUDGET // ncpus, PERF_FLOOR), PERF_CEILING)
    return 1 << ((per_cpu // PAGE_SIZE).bit_length() - 1)


def open_reader(name: str, handle: Any, lost_fd: int | None, page_cnt: int,
            opts: Mapping[str, Any]) -> Reader:
    """The reader of the perf or ring buffer map ``handle``, with its loss counter if any."""
    if handle.kind == "perf_event_array":
        return _perf_buffer(name, handle.fd, page_cnt, opts["wakeup_bytes"], lost_fd,
                            shrink=opts["page_cnt"] is None)
    return RingBuffer(handle.fd, handle.max_entries, lost_fd)


def _perf_buffer(name: str, map_fd: int, page_cnt: int, wakeup: int | None,
                 lost_fd: int | None, shrink: bool) -> PerfBuffer:
    """A perf buffer of ``page_cnt`` pages per CPU, or, with ``shrink``, as many as allowed.

    Its losses come from the program's counter ``lost_fd``, else from the kernel
    where it can report them (``PERF_FORMAT_LOST``).

    Without CAP_IPC_LOCK the kernel caps the perf ring memory a user may lock
    (``perf_event_mlock_kb`` per CPU, then ``RLIMIT_MEMLOCK``): a default-sized
    buffer then halves until it fits, with a warning.
    """
    wanted = page_cnt
    read_lost = lost_fd is None and lost_format_supported()
    while True:
        try:
            buf = PerfBuffer(map_fd, page_cnt, page_cnt * PAGE_SIZE // 4 if wakeup is None
                             else int(wakeup), read_lost, lost_fd)
        except PermissionError:
            if not shrink or page_cnt == 1:
                raise
            page_cnt //= 2
            continue
        if page_cnt < wanted:
            warnings.warn(f"perf buffer {name!r} has {page_cnt * PAGE_SIZE >> 10:,} KiB per CPU "
                          f"instead of {wanted * PAGE_SIZE >> 10:,} KiB: the locked-memory limit "
                          "(kernel.perf_event_mlock_kb, ulimit -l) allows no more, so fast "
                          "bursts may lose events (counted). Raise the limit, or grant "
                          "CAP_IPC_LOCK.", StreamWarning, stacklevel=5)
        return buf


def check_memory(name: str, layout: np.dtype, max_rows: int) -> None:
    """Refuse ``max_rows`` events of ``layout`` where this machine has not the memory."""
    need = max_rows * (layout.itemsize + 2)
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    if need > ram:
        raise StreamOptionError(
            f"event stream {name!r}: max_rows={max_rows:,} needs {need / 2**30:,.1f} GiB "
            f"({layout.itemsize} bytes per event); this machine has {ram / 2**30:,.1f} GiB",
            "Lower max_rows, or keep more events on disk with spill.")


def learned_layout(compiled: Any, name: str) -> np.dtype | None:
    """The submitted record's dtype from the program, or None if it cannot be learned."""
    layout = compiled.event_dtype(name)
    return as_dtype(layout) if layout is not None else None
