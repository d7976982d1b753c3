"""Reading a ``BPF_PERF_OUTPUT`` table: one mmap'ed perf ring per CPU, decoded in batches.

For each online CPU a ``PERF_COUNT_SW_BPF_OUTPUT`` event is opened with
``PERF_SAMPLE_RAW``, its ring is mapped, and its descriptor is stored in the
``perf_event_array`` map at that CPU's index, which is where
``bpf_perf_event_output`` writes. Records are parsed with numpy: runs of
samples of one size are sliced out as a 2-D byte array at once; lost records
(``PERF_RECORD_LOST``), size changes and wrap-around are handled between runs.

Losses: the kernel writes a ``PERF_RECORD_LOST`` record only with the next
sample that fits, so losses after a CPU's last successful write are never
reported that way. Where the kernel has ``PERF_FORMAT_LOST`` (Linux 6.0) each
ring's event is opened with it and :meth:`CpuRing.lost` reads the exact total
at any moment; elsewhere the program counts its failed submissions itself
(:mod:`ebpf_magic.backend.bcc.instrument`) and the buffer is given that counter.

:class:`PerfBuffer` is a :class:`~ebpf_magic.kernel.reader.Reader`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import struct
from collections.abc import Iterator

import numpy as np

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.reader import program_losses

PAGE_SIZE = mmap.PAGESIZE
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_BPF_OUTPUT = 10
_PERF_SAMPLE_RAW = 1 << 10
_PERF_FORMAT_LOST = 1 << 4
_FLAG_WATERMARK = 1 << 14  # bit 14 of the flags word: wakeup_watermark counts bytes
_RECORD_LOST = 2
_RECORD_SAMPLE = 9
_IOC_ENABLE = 0x2400
_IOC_DISABLE = 0x2401
_HEAD_OFFSET = 1024  # perf_event_mmap_page.data_head (data_tail follows)
_RUN_WINDOW = 8192  # records checked per vectorized step
_TYPE_AND_SIZE = np.uint64(0xFFFF_0000_FFFF_FFFF)  # a record header without its misc bits


def _output_attr(read_lost: bool) -> sysbpf.PerfEventAttr:
    return sysbpf.PerfEventAttr(type=_PERF_TYPE_SOFTWARE,
                                size=ctypes.sizeof(sysbpf.PerfEventAttr),
                                config=_PERF_COUNT_SW_BPF_OUTPUT, sample_period=1,
                                sample_type=_PERF_SAMPLE_RAW,
                                read_format=_PERF_FORMAT_LOST if read_lost else 0)


@functools.cache
def lost_format_supported() -> bool:
    """Whether perf events here can report their lost samples (``PERF_FORMAT_LOST``).

    Asked once per process by opening a BPF-output event with that read format.
    Only ``EINVAL`` (an unknown read format) means no; any other refusal is a
    missing right, reported when a buffer is really opened.
    """
    try:
        fd = sysbpf.perf_event_open(_output_attr(True), -1, sysbpf.online_cpus()[0], -1,
                                    sysbpf.PERF_FLAG_FD_CLOEXEC)
    except OSError as e:
        return e.errno != errno.EINVAL
    os.close(fd)
    return True


class CpuRing:
    """The perf ring of one CPU; with ``read_lost``, :meth:`lost` reads the kernel's count."""

    def __init__(self, cpu: int, page_cnt: int, wakeup_bytes: int,
                 read_lost: bool = False) -> None:
        attr = _output_attr(read_lost)
        if wakeup_bytes > 0:
            attr.flags = _FLAG_WATERMARK
            attr.wakeup = wakeup_bytes
        else:
            attr.wakeup = 1  # wakeup_events: one wake-up per event
        self.cpu = cpu
        self.fd = sysbpf.perf_event_open(attr, -1, cpu, -1, sysbpf.PERF_FLAG_FD_CLOEXEC)
        try:
            self.size = page_cnt * PAGE_SIZE
            self._mm = mmap.mmap(self.fd, PAGE_SIZE + self.size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self._pos = np.frombuffer(self._mm, np.uint64, 2, _HEAD_OFFSET)  # head, tail
        self._data = np.frombuffer(self._mm, np.uint8, self.size, PAGE_SIZE)
        try:
            sysbpf.ioctl(self.fd, _IOC_ENABLE)
        except BaseException:
            self.close()
            raise

    def pending(self) -> bool:
        return int(self._pos[0]) != int(self._pos[1])

    def lost(self) -> int:
        """Samples the kernel could not write into this ring so far (needs ``read_lost``)."""
        _value, lost = struct.unpack("QQ", os.read(self.fd, 16))
        return lost

    def read(self, max_bytes: int | None = None) -> tuple[list[np.ndarray], int]:
        """Take complete records: (raw sample payloads as 2-D uint8 runs, lost count).

        At most ``max_bytes`` are taken (whole records; all with None), so that
        a full ring is read in pieces that stay in the CPU's cache. The lost
        count sums the ``PERF_RECORD_LOST`` records read.
        """
        head, tail = int(self._pos[0]), int(self._pos[1])
        if head == tail:
            return [], 0
        if max_bytes is not None and head - tail > max_bytes:
            head = tail + max_bytes
        start, end = tail % self.size, head % self.size
        if start < end:
            raw = self._data[start:end].copy()
        else:
            raw = np.concatenate((self._data[start:], self._data[:end]))
        blocks, lost, used = _parse(raw)
        self._pos[1] = tail + used  # the bytes are copied: hand the space back to the kernel
        return blocks, lost

    def skip(self) -> tuple[int, int]:
        """Hand every complete record back to the kernel unread: (samples, lost) among them.

        Only the headers are read, in place, one record at a time.
        """
        head, tail = int(self._pos[0]), int(self._pos[1])
        samples = lost = 0
        while head - tail >= 8:
            at = PAGE_SIZE + tail % self.size  # records are 8-byte aligned: a header never wraps
            rtype, _misc, size = struct.unpack_from("<IHH", self._mm, at)
            if size < 8 or size > head - tail:
                break
            if rtype == _RECORD_SAMPLE:
                samples += 1
            elif rtype == _RECORD_LOST:
                lost += struct.unpack_from("<Q", self._mm,
                                           PAGE_SIZE + (tail + 16) % self.size)[0]
            tail += size
        self._pos[1] = tail
        return samples, lost

    def close(self) -> None:
        with contextlib.suppress(OSError):
            sysbpf.ioctl(self.fd, _IOC_DISABLE)
        del self._pos, self._data
        self._mm.close()
        os.close(self.fd)


def _parse(raw: np.ndarray) -> tuple[list[np.ndarray], int, int]:
    """Split a byte run of perf records: (sample payload blocks, lost count, bytes used).

    Each block is a 2-D uint8 array, one row per sample, holding the raw
    payload (as the kernel padded it); consecutive samples of one size form one
    block without a Python step per record. A record cut off at the end is left
    out, and not counted in the bytes used.
    """
    blocks: list[np.ndarray] = []
    lost = 0
    pos, n = 0, len(raw)
    while pos + 8 <= n:
        rtype = int(raw[pos:pos + 4].view(np.uint32)[0])
        size = int(raw[pos + 6:pos + 8].view(np.uint16)[0])
        if size < 8 or pos + size > n:
            break
        if rtype == _RECORD_SAMPLE and size >= 12 and size % 8 == 0:
            count = min((n - pos) // size, _RUN_WINDOW)
            rows = raw[pos:pos + count * size].reshape(count, size)
            # records are 8-byte aligned: each header is one u64, one stride apart
            heads = raw[pos:pos + count * size].view(np.uint64)[::size // 8]
            same = (heads & _TYPE_AND_SIZE) == np.uint64(rtype | (size << 48))
            run = count if same.all() else int(np.argmin(same))
            raw_size = int(raw[pos + 8:pos + 12].view(np.uint32)[0])
            if run > 1:
                sizes = raw[pos + 8:pos + run * size].view(np.uint32)[::size // 4]
                if not (sizes == raw_size).all():
                    run = 1
            blocks.append(rows[:run, 12:12 + raw_size])
            pos += run * size
            continue
        if rtype == _RECORD_LOST:
            lost += int(raw[pos + 16:pos + 24].view(np.uint64)[0])
        elif rtype == _RECORD_SAMPLE:
            raw_size = int(raw[pos + 8:pos + 12].view(np.uint32)[0])
            blocks.append(raw[pos + 12:pos + 12 + raw_size].reshape(1, -1))
        pos += size
    return blocks, lost, pos


class PerfBuffer:
    """Every CPU's ring of one ``BPF_PERF_OUTPUT`` map, installed in the map.

    Losses come from ``lost_fd`` (the program's per-CPU counter of failed
    submissions) when given; else, with ``read_lost``, from each ring's event
    (``PERF_FORMAT_LOST``); else from the ``PERF_RECORD_LOST`` records read.
    """

    def __init__(self, map_fd: int, page_cnt: int, wakeup_bytes: int,
                 read_lost: bool = False, lost_fd: int | None = None) -> None:
        if page_cnt <= 0 or page_cnt & (page_cnt - 1):
            raise ValueError(f"page_cnt must be a power of two, got {page_cnt}")
        self.rings: list[CpuRing] = []
        self._map_fd = map_fd
        self.read_lost = read_lost
        self.lost_fd = lost_fd
        self._lost_records: dict[int, int] = {}
        try:
            for cpu in sysbpf.online_cpus():
                ring = CpuRing(cpu, page_cnt, min(wakeup_bytes, page_cnt * PAGE_SIZE // 2),
                               read_lost)
                self.rings.append(ring)
                key, value = ctypes.c_uint32(cpu), ctypes.c_uint32(ring.fd)
                sysbpf.map_update(map_fd, key, value)
        except BaseException:
            self.close()
            raise

    @property
    def fds(self) -> list[int]:
        return [r.fd for r in self.rings]

    @property
    def buffer_bytes(self) -> int:
        return sum(r.size for r in self.rings)

    def read(self, max_bytes: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Each CPU's records in turn, in pieces of at most ``max_bytes``, a ring's worth each."""
        for ring in self.rings:
            for _ in range(ring.size // max_bytes + 1):
                blocks, lost = ring.read(max_bytes)
                if lost:
                    self._lost_records[ring.cpu] = self._lost_records.get(ring.cpu, 0) + lost
                if blocks:
                    yield ring.cpu, blocks
                if not ring.pending():
                    break

    def discard(self) -> int:
        """Skip every CPU's waiting records; return the samples skipped."""
        skipped = 0
        for ring in self.rings:
            samples, lost = ring.skip()
            skipped += samples
            if lost:
                self._lost_records[ring.cpu] = self._lost_records.get(ring.cpu, 0) + lost
        return skipped

    def lost(self) -> dict[int, int]:
        """Samples lost so far by CPU, from the most exact count this buffer has."""
        if self.lost_fd is not None:
            return program_losses(self.lost_fd)
        if self.read_lost:
            return {r.cpu: n for r in self.rings if (n := r.lost())}
        return {cpu: n for cpu, n in self._lost_records.items() if n}

    def close(self) -> None:
        for ring in self.rings:
            with contextlib.suppress(OSError):
                sysbpf.map_delete(self._map_fd, ctypes.c_uint32(ring.cpu))
            ring.close()
        self.rings = []
