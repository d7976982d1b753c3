"""The one interface through which event streams read a kernel buffer, perf or ring.

A perf buffer (:class:`~ebpf_magic.kernel.perfbuf.PerfBuffer`: one ring per CPU) and
a ring buffer (:class:`~ebpf_magic.kernel.ringbuf.RingBuffer`: one ring all CPUs
share) both implement :class:`Reader`, so a consumer waits on :attr:`Reader.fds`,
takes batches with :meth:`Reader.read` and asks :meth:`Reader.lost` without asking
which kind it holds.

Losses are counted in the first of these that exists: the program's own count of
failed submissions (a per-CPU array map whose descriptor the reader is given and
does not own), the kernel's count (perf events opened with ``PERF_FORMAT_LOST``),
or the perf ring's ``PERF_RECORD_LOST`` records read so far.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from ebpf_magic.kernel import sysbpf


@runtime_checkable
class Reader(Protocol):
    """The consumer side of one kernel event buffer."""

    @property
    def fds(self) -> list[int]:
        """Descriptors that become readable when records wait (to register with epoll)."""

    @property
    def buffer_bytes(self) -> int:
        """Bytes of kernel buffer behind this reader (every CPU's ring together)."""

    def read(self, max_bytes: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Take the records waiting now, in pieces of at most ``max_bytes`` per ring.

        Yields ``(cpu, blocks)``: ``blocks`` are 2-D uint8 arrays, one row per
        record's payload, of records written on ``cpu`` (0 where one ring serves
        every CPU). At most about one buffer's worth is taken per call, so a
        producer faster than the reader cannot keep it in one call.
        """

    def discard(self) -> int:
        """Hand every complete record waiting back to the kernel unread; return how many.

        For when :meth:`read` fails: it walks only the record headers, so the
        records it skips can still be counted.
        """

    def lost(self) -> dict[int, int]:
        """Records the kernel could not place in the buffer so far, by CPU (zeros left out)."""

    def close(self) -> None:
        """Unmap the buffer and close what the reader opened (not the map itself)."""


def program_losses(counter_fd: int) -> dict[int, int]:
    """The per-CPU u64 at index 0 of the array map ``counter_fd``, by CPU (zeros left out).

    This is where a program instrumented to count its failed submissions keeps the count.
    """
    values = np.zeros(sysbpf.possible_cpus(), np.uint64)
    sysbpf.map_lookup(counter_fd, ctypes.c_uint32(0), values)
    return {cpu: int(v) for cpu, v in enumerate(values) if v}
