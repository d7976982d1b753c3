"""Reading a ``BPF_RINGBUF_OUTPUT`` table straight from its mmap'ed pages.

The kernel maps a ring buffer as a consumer page (read-write), then a
producer page and the data area mapped twice in a row (read-only), so a record
that wraps around the end is still contiguous. Records are an 8-byte header
(length with BUSY and DISCARD bits, page offset) and the payload, padded to 8
bytes; runs of equal-length records are decoded at once with numpy.

:class:`RingBuffer` is a :class:`~ebpf_magic.kernel.reader.Reader`. The kernel
does not tell the consumer what a full ring buffer refused; a program that
counts its failed submissions gives that count (``lost_fd``).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

import numpy as np

from ebpf_magic.kernel.reader import program_losses

PAGE_SIZE = mmap.PAGESIZE
_BUSY = 1 << 31
_DISCARD = 1 << 30
_RUN_WINDOW = 8192


class RingBuffer:
    """The consumer side of one ``ringbuf`` map of ``size`` data bytes."""

    def __init__(self, map_fd: int, size: int, lost_fd: int | None = None) -> None:
        self.fd = map_fd
        self.size = size
        self.lost_fd = lost_fd
        self._cons_mm = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._prod_mm = mmap.mmap(map_fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED,
                                      mmap.PROT_READ, offset=PAGE_SIZE)
        except BaseException:
            self._cons_mm.close()
            raise
        self._cons = np.frombuffer(self._cons_mm, np.uint64, 1)
        self._prod = np.frombuffer(self._prod_mm, np.uint64, 1)
        self._data = np.frombuffer(self._prod_mm, np.uint8, 2 * size, PAGE_SIZE)

    @property
    def fds(self) -> list[int]:
        return [self.fd]

    @property
    def buffer_bytes(self) -> int:
        return self.size

    def pending(self) -> bool:
        return int(self._prod[0]) != int(self._cons[0])

    def read(self, max_bytes: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """The committed records, in pieces of at most ``max_bytes``, a ring's worth at most.

        Every record is yielded as written on CPU 0: the ring does not say where it was.
        """
        for _ in range(self.size // max_bytes + 1):
            blocks = self._take(max_bytes)
            if blocks:
                yield 0, blocks
            if not self.pending():
                break

    def _take(self, max_bytes: int) -> list[np.ndarray]:
        """Payload blocks of the committed records in the next ``max_bytes``.

        Whole records only; the next record alone when it is larger.
        """
        cons, prod = int(self._cons[0]), int(self._prod[0])
        if cons == prod:
            return []
        start = cons & (self.size - 1)
        avail = min(prod - cons, max_bytes)
        length = committed_length(self._data[start:start + avail].copy())
        if length == 0 and avail < prod - cons:
            length = committed_length(self._data[start:start + prod - cons].copy())
        if length == 0:
            return []
        # Copy again what the first copy saw committed: its payload bytes are
        # now certainly visible (they were written before their header).
        raw = self._data[start:start + length].copy()
        self._cons[0] = cons + length
        return parse_records(raw)

    def discard(self) -> int:
        """Skip the committed records, reading only their headers; return how many."""
        cons, prod = int(self._cons[0]), int(self._prod[0])
        skipped = 0
        while prod - cons >= 8:
            (length,) = struct.unpack_from("<I", self._prod_mm,
                                           PAGE_SIZE + (cons & (self.size - 1)))
            total = ((length & ~(_BUSY | _DISCARD)) + 8 + 7) & ~7
            if length & _BUSY or total > prod - cons:
                break
            skipped += not length & _DISCARD
            cons += total
        self._cons[0] = cons
        return skipped

    def lost(self) -> dict[int, int]:
        """The program's count of failed submissions by CPU (empty without ``lost_fd``)."""
        return program_losses(self.lost_fd) if self.lost_fd is not None else {}

    def close(self) -> None:
        del self._cons, self._prod, self._data
        self._prod_mm.close()
        self._cons_mm.close()


def _header(raw: np.ndarray, pos: int) -> int:
    return int(raw[pos:pos + 4].view(np.uint32)[0])


def committed_length(raw: np.ndarray) -> int:
    """Bytes at the start of ``raw`` made of complete, committed records."""
    pos, n = 0, len(raw)
    while pos + 8 <= n:
        length = _header(raw, pos)
        if length & _BUSY:
            break
        total = ((length & ~_DISCARD) + 8 + 7) & ~7
        if pos + total > n:
            break
        count = min((n - pos) // total, _RUN_WINDOW)
        same = raw[pos:pos + count * total].view(np.uint32)[::total // 4] == length
        run = count if same.all() else max(int(np.argmin(same)), 1)
        pos += run * total
    return pos


def parse_records(raw: np.ndarray) -> list[np.ndarray]:
    """Payload blocks (2-D uint8, one row per record) of committed records in ``raw``."""
    blocks = []
    pos, n = 0, len(raw)
    while pos + 8 <= n:
        length = _header(raw, pos)
        total = ((length & ~_DISCARD) + 8 + 7) & ~7
        count = min((n - pos) // total, _RUN_WINDOW)
        rows = raw[pos:pos + count * total].reshape(count, total)
        same = raw[pos:pos + count * total].view(np.uint32)[::total // 4] == length
        run = count if same.all() else max(int(np.argmin(same)), 1)
        if not length & _DISCARD:
            blocks.append(rows[:run, 8:8 + length])
        pos += run * total
    return blocks
