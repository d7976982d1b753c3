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

from __future__ import annotations

import contextlib
import numbers
import os
import select
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.api import EVENT_STREAM, Named, StreamBase
from ebpf_magic.data import eventframe
from ebpf_magic.data.eventstore import EventStore
from ebpf_magic.data.maps import normalize_dtype
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes as dt_util
from ebpf_magic.internal import files
from ebpf_magic.kernel import sysbpf, timebase
from ebpf_magic.kernel.perfbuf import PAGE_SIZE, PerfBuffer, lost_format_supported
from ebpf_magic.kernel.reader import Reader
from ebpf_magic.kernel.ringbuf import RingBuffer

DEFAULTS: dict[str, Any] = {"max_rows": 1_000_000, "page_cnt": None, "wakeup_bytes": None,
                            "poll_ms": 50, "batch_ms": 2}
PERF_BUDGET = 64 << 20  # bytes of perf rings per stream, split across the CPUs
PERF_FLOOR = 256 << 10  # the least and the most one CPU's ring gets
PERF_CEILING = 16 << 20
READ_BYTES = 512 << 10  # a buffer is read in pieces of this size, which stay in the CPU's cache
STREAM_KINDS = ("perf_event_array", "ringbuf")
_OPTIONS = set(DEFAULTS) | {"dtypes", "time", "spill"}


class StreamOptionError(BPFError, ValueError):
    """A stream option has a value no stream can use."""


class StreamWarning(UserWarning):
    """A stream stopped delivering events (its reason is in :attr:`Stream.failure`)."""


def _need_int(options: Mapping[str, Any], key: str, lo: int, hi: int, what: str) -> None:
    value = options.get(key)
    if value is None and key in ("page_cnt", "wakeup_bytes"):
        return  # sized automatically
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            not lo <= value <= hi:
        raise StreamOptionError(f"stream option {key}={value!r} is not {what}",
                                f"Give {key} as a whole number from {lo:,} to {hi:,}.")


def check_options(options: Mapping[str, Any]) -> None:
    """Reject unknown or unusable stream options with a :class:`StreamOptionError`.

    Called before anything is compiled or attached, so a typo costs nothing.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise StreamOptionError(f"unknown stream option(s) {sorted(unknown)}",
                                f"Options are {', '.join(sorted(_OPTIONS))}.")
    opts = {**DEFAULTS, **options}
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    _need_int(opts, "max_rows", 1, ram // 8, "a row count that fits in memory")
    _need_int(opts, "page_cnt", 1, ram // PAGE_SIZE // 4 // len(sysbpf.online_cpus()),
              "a page count whose rings fit in memory")
    page_cnt = opts["page_cnt"]
    if page_cnt is not None and page_cnt & (page_cnt - 1):
        raise StreamOptionError(f"stream option page_cnt={page_cnt} is not a power of two",
                                f"Try page_cnt={1 << (page_cnt.bit_length() - 1)}.")
    _need_int(opts, "wakeup_bytes", 0, 1 << 31, "a byte count")
    for key in ("poll_ms", "batch_ms"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not 0 <= value <= 60_000 or (key == "poll_ms" and value == 0):
            raise StreamOptionError(f"stream option {key}={value!r} is not a usable time",
                                    f"Give {key} in milliseconds, up to 60000"
                                    f"{' (more than 0)' if key == 'poll_ms' else ''}.")
    if opts.get("spill") is not None:
        spill = Path(opts["spill"])
        try:
            spill.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StreamOptionError(f"cannot spill to {spill}: {e.strerror}",
                                    "Give spill a directory you can write to.") from None
        if not os.access(spill, os.W_OK | os.X_OK):
            raise StreamOptionError(f"cannot spill to {spill}: not writable",
                                    "Give spill a directory you can write to.")


def as_dtype(layout: Any) -> np.dtype:
    """A structured numpy dtype from a numpy dtype, a ctypes type, or a dtype spec."""
    dt = normalize_dtype(np.dtype(layout))
    return dt if dt.names else np.dtype([("value", dt)])


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, numbers.Integral) else str(value)


class Stats(dict):
    """A stream's counters by name, shown as a small table: label, count, what it means."""

    #: each counter's label and meaning, in the order shown
    LABELS = {
        "received": ("received", "events read from the kernel's buffer"),
        "held": ("in the frame", "events in .df now"),
        "lost_kernel": ("lost in kernel", "never reached the buffer: it was full"),
        "dropped_cap": ("dropped by the cap", "oldest events beyond max_rows, forgotten"),
        "spilled": ("spilled to disk", "written to the spill file instead of memory"),
        "discarded_paused": ("discarded while paused", "arrived while the stream was paused"),
        "cleared": ("cleared", "forgotten by clear()"),
        "lost_reader": ("lost after a failure", "taken after the stream failed; see .failure"),
        "failed": ("failed", "1 if the stream stopped delivering events"),
    }

    @property
    def df(self) -> pd.DataFrame:
        """One row per counter: its label, count and meaning."""
        rows = [(label, self[key], meaning) for key, (label, meaning) in self.LABELS.items()
                if key in self]
        lost = self.get("lost_per_cpu")
        if lost:
            rows.append(("lost in kernel by CPU",
                         ", ".join(f"CPU {c}: {n:,}" for c, n in sorted(lost.items())),
                         "where the kernel's losses happened"))
        return pd.DataFrame(rows, columns=["counter", "count", "meaning"]).set_index("counter")

    def __repr__(self) -> str:
        df = self.df
        width = max(len(label) for label in df.index)
        counts = [_count(c) for c in df["count"]]
        digits = max(len(c) for c in counts)
        return "\n".join(f"{label:<{width}}  {c:>{digits}}  {meaning}"
                         for label, c, meaning in zip(df.index, counts, df["meaning"],
                                                      strict=True))

    def _repr_html_(self) -> str:
        return self.df.to_html(formatters={"count": _count})


class Stream(StreamBase):
    """The events of one perf or ring buffer: held, counted, and shown as a DataFrame.

    The stream owns ``reader`` (None: a stream that reads nothing) and closes it.
    ``finish``, if given, turns each decoded frame into the one :attr:`df` shows (a
    reader whose records encode values numpy cannot hold, such as lists, decodes them there).
    """

    def __init__(self, name: str, kind: str, layout: np.dtype | None, max_rows: int,
                 reader: Reader | None = None,
                 finish: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> None:
        self.name = name
        self.kind = kind
        self._finish = finish
        self.received = 0
        self._paused = False
        self._discarded = 0
        self._lock = threading.RLock()
        self._callbacks: list[Callable[[dict], Any]] = []
        self.callback_errors: list[BaseException] = []
        self._time: dict[str, str] = {}
        self._offsets: dict[str, int] = {}
        self._max_rows = max_rows
        self._raw = layout is None
        self._store: EventStore | None = None
        self._set_layout(layout)
        self._reader = reader
        self._closed_lost: dict[int, int] | None = None
        self._last_lost: dict[int, int] = {}  # the kernel's loss count as last read
        self.failure: str | None = None
        self._lost_reader = 0
        self._uncounted = False  # events a failed reader left could not even be counted
        self._failure_shown = False
        self.closed = False
        self._rate = (time.monotonic(), 0, 0.0)

    # -- layout ----------------------------------------------------------------

    def _set_layout(self, layout: np.dtype | None) -> None:
        self.dtype = layout
        if layout is None:
            self._store = None
            return
        names, formats, offsets = list(layout.names), [], []
        for n in layout.names:
            formats.append(layout.fields[n][0])
            offsets.append(layout.fields[n][1])
        self._cpu_col = None
        if self.kind == "perf_event_array":
            self._cpu_col = "cpu" if "cpu" not in names else "event_cpu"
            names.append(self._cpu_col)
            formats.append(np.uint16)
            offsets.append(layout.itemsize)
        itemsize = layout.itemsize + (2 if self._cpu_col else 0)
        stored = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                           "itemsize": itemsize})
        old = self._store
        self._store = EventStore(stored, self._max_rows)
        if old is not None:
            self._store.counters_from(old)

    def set_dtype(self, layout: Any) -> None:
        """Decode this stream's records with ``layout`` (numpy dtype or ctypes type).

        Events held so far are decoded again with the new layout.
        """
        new = as_dtype(layout)
        with self._lock:
            held = self._store.snapshot() if self._store is not None else None
            old_size = self.dtype.itemsize if self.dtype is not None else 0
            self._raw = False
            self._set_layout(new)
            if held is not None and len(held):
                payload = held.view(np.uint8).reshape(len(held), -1)[:, :old_size]
                cpu = held[self._cpu_col] if self._cpu_col and self._cpu_col in held.dtype.names \
                    else 0
                self._store.append(self._decode(payload, cpu))

    def set_time(self, column: str, clock: str = "monotonic") -> None:
        """Show ``column`` (kernel ns timestamps) as wall-clock datetimes in :attr:`df`.

        ``clock`` is ``"monotonic"`` for ``bpf_ktime_get_ns()`` or ``"boottime"``
        for ``bpf_ktime_get_boot_ns()``.
        """
        self._offsets[column] = timebase.offset_ns(clock)
        self._time[column] = clock

    def _decode(self, block: np.ndarray, cpu: Any) -> np.ndarray:
        """Records of the stored dtype from a 2-D uint8 block of payloads."""
        if self._store is None:  # first event of an unknown layout: keep raw bytes
            self._set_layout(np.dtype([("data", f"V{block.shape[1]}")]))
        size = self.dtype.itemsize
        width = min(size, block.shape[1])
        out = (np.empty if width == size else np.zeros)(len(block), self._store.dtype)
        out.view(np.uint8).reshape(len(block), -1)[:, :width] = block[:, :width]
        if self._cpu_col:
            out[self._cpu_col] = cpu
        return out

    # -- consuming (reader thread) -------------------------------------------

    def _consume(self) -> int:
        """Take what waits in the buffer; if that fails, count what is left there as lost."""
        reader = self._reader
        if reader is None:
            return 0
        n = 0
        try:
            for cpu, blocks in reader.read(READ_BYTES):
                n += self._take(blocks, cpu)
        except Exception as e:
            self._fail(e)
            n += self._discard_unread(reader)
        return n

    def _discard_unread(self, reader: Reader) -> int:
        """Free the buffer of what a failed read left; count it in ``lost_reader``."""
        try:
            n = reader.discard()
        except Exception as e:  # nothing more can be taken from this buffer: say so, once
            with self._lock:
                if not self._uncounted:
                    self._uncounted = True
                    self.failure = (f"{self.failure}; events left in the buffer could not be "
                                    f"counted ({type(e).__name__}: {e})")[:400]
            return 0
        with self._lock:
            self.received += n
            self._lost_reader += n
        return n

    def _take(self, blocks: list[np.ndarray], cpu: int) -> int:
        n = 0
        for block in blocks:
            with self._lock:
                self.received += len(block)
                n += len(block)
                if self.failure is not None:
                    self._lost_reader += len(block)
                    continue
                if self._paused:
                    self._discarded += len(block)
                    continue
                try:
                    records = self._decode(block, cpu)
                    self._store.append(records)  # all or nothing: raises before storing
                except Exception as e:
                    self._lost_reader += len(block)
                    self._fail(e)
                    continue
            if self._callbacks:
                self._call_back(records)
        return n

    def _fail(self, error: BaseException) -> None:
        """Stop delivering: later events are read from the buffer and counted as lost."""
        with self._lock:
            if self.failure is None:
                self.failure = f"{type(error).__name__}: {error}"[:300]

    def _show_failure(self) -> None:
        """Warn once, on the user's next read (a live view's thread shows it itself)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if self.failure is not None and not self._failure_shown:
            self._failure_shown = True
            warnings.warn(f"stream {self.name!r} stopped delivering events ({self.failure}); "
                          f"events since are counted in stats['lost_reader']. Fix the cause "
                          f"and run the program again.", StreamWarning, stacklevel=3)

    def _call_back(self, records: np.ndarray) -> None:
        for rec in records:
            value = dt_util.to_python(rec, records.dtype)
            for cb in list(self._callbacks):
                try:
                    cb(value)
                except Exception as e:  # a user's callback must not stop the stream
                    self.callback_errors.append(e)
                    del self.callback_errors[:-10]

    # -- reading -----------------------------------------------------------------

    def _frame(self, records: np.ndarray) -> pd.DataFrame:
        if self._raw:
            cols: dict[str, Any] = {"data": [r.tobytes() for r in records["data"]]}
            if self._cpu_col:
                cols[self._cpu_col] = records[self._cpu_col]
            return pd.DataFrame(cols)
        df = eventframe.frame(records)
        for col, offset in self._offsets.items():
            if col in df:
                df[col] = pd.to_datetime(df[col].to_numpy().astype(np.int64) + offset, unit="ns")
        return self._finish(df) if self._finish is not None else df

    @property
    def df(self) -> pd.DataFrame:
        """The events held, oldest first, one column per field."""
        return self.tail(None)

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events held (all with ``None``)."""
        self._show_failure()
        with self._lock:
            store = self._store
            if store is None:
                return pd.DataFrame()
            lo, hi = store.held(n)
        # copied without holding the reader back, so the kernel's buffer keeps draining;
        # rows the reader overwrote meanwhile (the oldest, beyond max_rows) are cut
        records = store.copy(lo, hi)
        with self._lock:
            cut = store.intact_from() - lo
        return self._frame(records[max(cut, 0):])

    def to_datetime(self, values, clock: str = "monotonic") -> pd.Series:
        """Kernel ns timestamps (a column of :attr:`df`) as wall-clock datetimes."""
        return timebase.to_datetime(values, clock)

    @property
    def lost_kernel(self) -> int:
        return sum(self.lost_per_cpu.values())

    @property
    def lost_per_cpu(self) -> dict[int, int]:
        """Events the kernel could not place in the buffer, per CPU; exact at every moment.

        Read from the kernel's count (perf events with ``PERF_FORMAT_LOST``), from
        the program's own count of failed submissions (ring buffers, and perf
        buffers on older kernels), or else from the perf ring's lost records.
        """
        with self._lock:
            if self._closed_lost is not None:
                return dict(self._closed_lost)
            return self._read_lost()

    def _read_lost(self) -> dict[int, int]:
        if self._reader is not None:
            self._last_lost = self._reader.lost()
        return dict(self._last_lost)

    @property
    def stats(self) -> dict[str, Any]:
        """Counts: received from the buffer, lost in the kernel, dropped by ``max_rows``.

        ``received`` counts every event read from the buffer; each of them is
        ``held``, ``dropped_cap`` (the oldest beyond ``max_rows``), ``spilled``
        (written to the spill file), ``discarded_paused`` (arrived while paused),
        ``cleared`` (forgotten by :meth:`clear`) or ``lost_reader`` (taken from the
        buffer after the stream failed, decoded or, when reading failed, skipped
        unread; ``failed`` is then 1 and :attr:`failure` says why).
        ``lost_kernel`` never reached the buffer (it was full). No counter is
        ever reset.
        """
        self._show_failure()
        return self._stats()

    def _stats(self) -> Stats:
        with self._lock:
            store = self._store
            has = store is not None
            return Stats({"received": self.received, "lost_kernel": self.lost_kernel,
                          "dropped_cap": store.dropped if has else 0,
                          "spilled": store.spilled if has else 0,
                          "discarded_paused": self._discarded,
                          "cleared": store.cleared if has else 0,
                          "lost_reader": self._lost_reader,
                          "failed": int(self.failure is not None),
                          "held": len(store) if has else 0, "lost_per_cpu": self.lost_per_cpu})

    def capture(self) -> tuple[pd.DataFrame, Stats]:
        """Every event held and the counters, at one moment: ``stats["held"] == len(df)``."""
        self._show_failure()
        with self._lock:
            stats, store = self._stats(), self._store
            if store is None:
                return pd.DataFrame(), stats
            lo, hi = store.held(None)
        records = store.copy(lo, hi)
        with self._lock:
            cut = max(store.intact_from() - lo, 0)
        if cut:  # overwritten meanwhile (the oldest, beyond max_rows): dropped by the cap
            stats["held"] -= cut
            stats["dropped_cap"] += cut
        return self._frame(records[cut:]), stats

    def __len__(self) -> int:
        return len(self._store) if self._store is not None else 0

    @property
    def buffer_bytes(self) -> int:
        """Bytes of kernel buffer this stream reads from (every CPU's ring for perf)."""
        return self._reader.buffer_bytes if self._reader is not None else 0

    # -- control -----------------------------------------------------------------

    @property
    def max_rows(self) -> int:
        return self._max_rows

    @max_rows.setter
    def max_rows(self, value: int) -> None:
        check_options({"max_rows": value})
        with self._lock:
            self._max_rows = int(value)
            if self._store is not None:
                self._store = self._store.resized(self._max_rows)

    def pause(self) -> None:
        """Keep reading the buffer, but discard (and count) events until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def clear(self) -> None:
        """Forget the events held (counted in ``stats["cleared"]``; no counter resets)."""
        with self._lock:
            if self._store is not None:
                self._store.clear()

    def on_event(self, callback: Callable[[dict], Any] | None) -> None:
        """Call ``callback(event_dict)`` for each new event (from the reader thread).

        This is one Python call per event, so it caps the rate; ``None`` removes
        all callbacks. Exceptions are kept in :attr:`callback_errors`.
        """
        if callback is None:
            self._callbacks.clear()
        else:
            self._callbacks.append(callback)

    def spill(self, path: str | Path) -> None:
        """Write events beyond ``max_rows`` to the Parquet file ``path`` instead of dropping."""
        with self._lock:
            if self._store is None:
                raise ValueError(f"stream {self.name!r} has no record layout yet")
            self._store.spill_to(path, self._frame)

    def to_parquet(self, path: str | Path) -> Path:
        """Write the events held to a Parquet file (needs pyarrow)."""
        df = self.df
        return files.write(path, lambda out: df.to_parquet(out, index=False))

    def rate(self) -> float:
        """Events per second received since the previous call (smoothed)."""
        now = time.monotonic()
        then, count, last = self._rate
        if now - then < 0.2:
            return last
        value = (self.received - count) / (now - then)
        self._rate = (now, self.received, value)
        return value

    # -- display -----------------------------------------------------------------

    def live(self, rows: int = 10, interval: float = 0.5):
        """A widget showing the newest ``rows`` events, updating in the background."""
        from ebpf_magic.present.streamview import LiveView

        return LiveView(self, rows=rows, interval=interval).widget

    def summary(self) -> str:
        s = self.stats
        state = "stopped" if self.closed else ("paused" if self._paused else "running")
        kind = {"perf_event_array": "perf buffer", "ringbuf": "ring buffer"}.get(self.kind,
                                                                                 self.kind)
        failed = f"; failed: {self.failure}" if self.failure else ""
        return (f"{self.name} ({kind}, {state}): {s['received']:,} received, "
                f"{s['lost_kernel']:,} lost in the kernel, {s['dropped_cap']:,} dropped by "
                f"max_rows, {s['held']:,} held{failed}")

    def __repr__(self) -> str:
        return f"<Stream {self.summary()}>"

    def _repr_html_(self) -> str:
        import html

        return f"<p>{html.escape(self.summary())}</p>" + self.tail(10).to_html(index=False)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        if self.closed:
            display(HTML(self._repr_html_()))
        else:
            display(self.live())

    # -- lifecycle -----------------------------------------------------------------

    def _close(self) -> None:
        """Keep the final loss counts, unmap the buffer, close the spill file."""
        with self._lock:
            if self._reader is not None:
                try:
                    self._closed_lost = self._read_lost()
                except OSError as e:  # keep the last count read, and say it may be short
                    self._closed_lost = dict(self._last_lost)
                    self._uncounted = True
                    self._fail(e)
                    self.failure = (f"{self.failure}; the kernel's loss count could not be "
                                    "read at close: lost_kernel is the last count read and may "
                                    "be short")[:400]
                self._reader.close()
                self._reader = None
            if self._store is not None:
                try:
                    self._store.close()
                except Exception as e:  # the spill file could not be completed
                    self._fail(e)
            self.closed = True


class Streams(Named[Stream]):
    """The event streams of one program, by name, with their reader thread."""

    def __init__(self, streams: Mapping[str, Stream], poll_s: float, batch_s: float) -> None:
        super().__init__(streams, EVENT_STREAM)
        self._poll_s = poll_s
        self._batch_s = batch_s
        self._stopping = threading.Event()
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, compiled, handles: Mapping, **options: Any) -> Streams:
        """Start consuming every perf and ring buffer among ``handles``.

        ``compiled`` (a :class:`~ebpf_magic.backend.CompiledProgram`) says which maps are
        its own bookkeeping, each stream's loss counter and record layout.
        """
        check_options(options)
        opts = {**DEFAULTS, **options}
        ncpus = len(sysbpf.online_cpus())
        page_cnt = perf_pages(ncpus) if opts["page_cnt"] is None else int(opts["page_cnt"])
        max_rows = int(opts["max_rows"])
        layouts = {n: as_dtype(v) for n, v in (opts.get("dtypes") or {}).items()}
        hidden = compiled.hidden_maps()
        loss_counters = compiled.loss_counters()
        streams: dict[str, Stream] = {}
        try:
            for name, h in handles.items():
                if h.kind not in STREAM_KINDS or name in hidden:
                    continue
                layout = layouts.get(name) or _learned_layout(compiled, name)
                if layout is not None:
                    _check_memory(name, layout, max_rows)
                counter = handles.get(loss_counters.get(name, ""))
                reader = _reader(name, h, counter.fd if counter is not None else None,
                                 page_cnt, opts)
                try:
                    stream = Stream(name, h.kind, layout, max_rows, reader)
                except BaseException:
                    reader.close()
                    raise
                streams[name] = stream
                for col, clock in (opts.get("time") or {}).items():
                    stream.set_time(col, clock)
                if opts.get("spill") and stream.dtype is not None:
                    stream.spill(Path(opts["spill"]) / f"{name}.parquet")
        except BaseException:
            for stream in streams.values():
                stream._close()
            raise
        return cls.start(streams, poll_ms=opts["poll_ms"], batch_ms=opts["batch_ms"])

    @classmethod
    def start(cls, streams: Mapping[str, Stream], poll_ms: float = DEFAULTS["poll_ms"],
              batch_ms: float = DEFAULTS["batch_ms"]) -> Streams:
        """Start one reader thread consuming ``streams`` (each with its reader), now theirs.

        On failure every stream is closed.
        """
        self = cls(streams, poll_ms / 1000, batch_ms / 1000)
        if streams:
            try:
                self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"ebpf_magic-streams-{'-'.join(streams)}")
                self._thread.start()
            except BaseException:
                self.close()
                raise
        return self

    def _run(self) -> None:
        try:
            with select.epoll() as ep:
                ep.register(self._wake, select.EPOLLIN)
                for s in self.values():
                    for fd in s._reader.fds:
                        ep.register(fd, select.EPOLLIN)
                while not self._stopping.is_set():
                    ep.poll(self._poll_s)
                    if self._stopping.is_set():
                        break
                    if self._consume() and self._batch_s:
                        self._stopping.wait(self._batch_s)
        except Exception as e:  # the buffers then fill, and the kernel counts the losses
            for s in self.values():
                s._fail(e)

    def _consume(self) -> int:
        """Read every buffer once (a stream whose reading fails counts what it leaves)."""
        return sum(s._consume() for s in self.values())

    @property
    def reader_cpu_s(self) -> float:
        """CPU time the reader thread has used so far, in seconds (0 once it has ended)."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:  # the thread has just ended
            return 0.0

    @property
    def received(self) -> int:
        """Events received by all streams."""
        return sum(s.received for s in self.values())

    @property
    def df(self) -> pd.DataFrame:
        """One row per stream: kind and counts."""
        rows = [{"stream": n, "kind": s.kind, **{k: v for k, v in s.stats.items()
                                                 if k != "lost_per_cpu"}}
                for n, s in self.items()]
        return pd.DataFrame(rows)

    def close(self) -> None:
        """Stop the reader, take what is left in the buffers, unmap them, close descriptors.

        Safe to call again after an error: what is already closed is skipped.
        """
        self._stopping.set()
        if self._wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._closed:
            self._consume()
            self._closed = True
        for s in self.values():
            if not s.closed:
                s._close()
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1

    def __repr__(self) -> str:
        return f"<Streams {', '.join(self) or '(none)'}>"

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


def perf_pages(ncpus: int) -> int:
    """Pages per CPU of a perf buffer by default (see the module doc for the formula)."""
    per_cpu = min(max(PERF_BUDGET // ncpus, PERF_FLOOR), PERF_CEILING)
    return 1 << ((per_cpu // PAGE_SIZE).bit_length() - 1)


def _reader(name: str, handle, lost_fd: int | None, page_cnt: int,
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


def _check_memory(name: str, layout: np.dtype, max_rows: int) -> None:
    need = max_rows * (layout.itemsize + 2)
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    if need > ram:
        raise StreamOptionError(
            f"stream {name!r}: max_rows={max_rows:,} needs {need / 2**30:,.1f} GiB "
            f"({layout.itemsize} bytes per event); this machine has {ram / 2**30:,.1f} GiB",
            "Lower max_rows, or keep more events on disk with spill.")


def _learned_layout(compiled, name: str) -> np.dtype | None:
    """The submitted record's dtype from the program, or None if it cannot be learned."""
    layout = compiled.event_dtype(name)
    return as_dtype(layout) if layout is not None else None

