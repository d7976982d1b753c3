"""Reading a ``BPF_RINGBUF_OUTPUT`` table straight from its mmap'ed pages.

The kernel maps a ring buffer as a consumer page (read-write), then a
producer page and the data area mapped twice in a row (read-only), so a record
that wraps around the end is still contiguous. Records are an 8-byte header
(length with BUSY and DISCARD bits, page offset) and the payload, padded to 8
bytes; runs of equal-length records are decoded at once with numpy.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE_SIZE = mmap.PAGESIZE
_BUSY = 1 << 31
_DISCARD = 1 << 30
_RUN_WINDOW = 8192


class RingBuffer:
    """The consumer side of one ``ringbuf`` map."""

    def __init__(self, map_fd: int, size: int) -> None:
        self.fd = map_fd
        self.size = size
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

    def pending(self) -> bool:
        return int(self._prod[0]) != int(self._cons[0])

    def read(self, max_bytes: int | None = None) -> tuple[list[np.ndarray], int]:
        """Take committed records: (payload blocks as 2-D uint8 runs, 0).

        At most ``max_bytes`` are taken (whole records; all with None, or when
        the next record alone is larger).
        """
        cons, prod = int(self._cons[0]), int(self._prod[0])
        if cons == prod:
            return [], 0
        start = cons & (self.size - 1)
        avail = prod - cons if max_bytes is None else min(prod - cons, max_bytes)
        length = committed_length(self._data[start:start + avail].copy())
        if length == 0 and avail < prod - cons:
            length = committed_length(self._data[start:start + prod - cons].copy())
        if length == 0:
            return [], 0
        # Copy again what the first copy saw committed: its payload bytes are
        # now certainly visible (they were written before their header).
        raw = self._data[start:start + length].copy()
        self._cons[0] = cons + length
        return parse_records(raw), 0

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
