"""Event streams from perf and ring buffers, consumed in the background into numpy.

Every ``BPF_PERF_OUTPUT`` and ``BPF_RINGBUF_OUTPUT`` table of a program becomes a
:class:`Stream`. One reader thread per program waits on all of its buffers with
epoll, reads whole batches straight from the mmap'ed pages (through the
:class:`~ebpf_magic.kernel.reader.Reader` both buffer kinds implement), decodes
them with the record's numpy dtype and keeps the newest ``max_rows`` events::

    prog.events["events"].df          # one column per field (+ "cpu" for perf buffers)
    prog.events["events"].stats       # received, lost in the kernel, dropped by the cap

Every event the program submitted is in the stream or counted, at every
moment: ``received + lost_kernel`` equals the submissions so far (once the
reader has caught up), and each received event is held, dropped by the cap,
spilled, discarded while paused, cleared, or lost by a failed reader (see
:attr:`Stream.stats`). Stopping detaches the probes first, then drains.

Memory. A perf buffer has one ring per online CPU; by default each gets
``clamp(PERF_BUDGET / CPUs, PERF_FLOOR, PERF_CEILING)`` rounded down to a power
of two pages, i.e. 64 MiB per stream split across the CPUs, at least 256 KiB
and at most 16 MiB each: 16 MiB x 2 on a 2-CPU machine, 256 KiB x 256 on a
256-CPU one (``CPUs x 256 KiB`` beyond 256 CPUs), plus one page per CPU. A
ring buffer is the one size the C declares (``BPF_RINGBUF_OUTPUT(name, pages)``,
shared by all CPUs); this module never changes it, and reports what a small
ring drops in ``lost_kernel``: about 4 MiB (1024 pages) kept up with a
million-events/s burst in ``bench/stream.py``, 1 MiB did not always. The
decoded events take ``max_rows x`` (record size + 2) bytes at most, allocated
as rows arrive.

Options (``Program(..., stream_options={...})``; defaults in :data:`DEFAULTS`,
which may be changed for the whole process):

* ``max_rows``: events kept per stream; the oldest are dropped and counted.
* ``page_cnt``: perf buffer size per CPU, in pages (a power of two); by
  default from the budget above. A ring buffer's size is the one the C
  source declares.
* ``wakeup_bytes``: a perf ring wakes the reader once this many bytes wait
  (default: a quarter of the ring); 0 wakes it on every event.
* ``poll_ms``: the longest the reader sleeps when no wake-up comes.
* ``batch_ms``: after reading, the reader waits this long so that the next
  read takes a batch; ring buffers then wake it at most once per batch.
* ``dtypes``: ``{stream name: numpy dtype or ctypes type}`` where the layout
  cannot be learned from the program (or to override it).
* ``time``: ``{column: "monotonic" | "boottime"}``, kernel timestamps that
  :attr:`Stream.df` shows as wall-clock datetimes (see :meth:`Stream.set_time`).
* ``spill``: a directory; every stream writes events beyond ``max_rows`` to
  ``<dir>/<name>.parquet`` instead of dropping them.
"""

from ebpf_magic.data.streams.buffers import (
    PERF_BUDGET,
    PERF_CEILING,
    PERF_FLOOR,
    READ_BYTES,
    STREAM_KINDS,
    perf_pages,
)
from ebpf_magic.data.streams.options import (
    DEFAULTS,
    StreamOptionError,
    StreamWarning,
    as_dtype,
    check_options,
)
from ebpf_magic.data.streams.reader import Streams
from ebpf_magic.data.streams.stats import Stats
from ebpf_magic.data.streams.stream import Stream

__all__ = [
    "DEFAULTS", "PERF_BUDGET", "PERF_CEILING", "PERF_FLOOR", "READ_BYTES", "STREAM_KINDS",
    "Stats", "Stream", "StreamOptionError", "StreamWarning", "Streams", "as_dtype",
    "check_options", "perf_pages",
]
