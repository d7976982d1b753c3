"""One stream: the events of a perf or ring buffer, decoded into numpy, held and counted."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ebpf_magic.api import StreamBase
from ebpf_magic.data import eventframe
from ebpf_magic.data.eventstore import EventStore
from ebpf_magic.data.streams.buffers import READ_BYTES
from ebpf_magic.data.streams.options import StreamWarning, as_dtype, check_options
from ebpf_magic.data.streams.stats import Stats
from ebpf_magic.internal import dtypes as dt_util
from ebpf_magic.internal import files
from ebpf_magic.kernel import timebase
from ebpf_magic.kernel.reader import Reader


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

    def consume(self) -> int:
        """Take what waits in the buffer; if that fails, count what is left there as lost.

        Called by the reader thread (:class:`~.reader.Streams`); returns the events taken."""
        reader = self._reader
        if reader is None:
            return 0
        n = 0
        try:
            for cpu, blocks in reader.read(READ_BYTES):
                n += self._take(blocks, cpu)
        except Exception as e:  # noqa: BLE001 - any failed read: the stream fails, counting
            self.fail(e)
            n += self._discard_unread(reader)
        return n

    def _discard_unread(self, reader: Reader) -> int:
        """Free the buffer of what a failed read left; count it in ``lost_reader``."""
        try:
            n = reader.discard()
        except Exception as e:  # noqa: BLE001 - nothing more can be taken from it: say so, once
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
                except Exception as e:  # noqa: BLE001 - a record that fails to decode
                    self._lost_reader += len(block)
                    self.fail(e)
                    continue
            if self._callbacks:
                self._call_back(records)
        return n

    def fail(self, error: BaseException) -> None:
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
            warnings.warn(f"event stream {self.name!r} stopped delivering events ({self.failure}); "
                          f"events since are counted in stats['lost_reader']. Fix the cause "
                          f"and run the program again.", StreamWarning, stacklevel=3)

    def _call_back(self, records: np.ndarray) -> None:
        for rec in records:
            value = dt_util.to_python(rec, records.dtype)
            for cb in list(self._callbacks):
                try:
                    cb(value)
                except Exception as e:  # noqa: BLE001 - a user's callback must not stop the stream
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

    def to_datetime(self, values: ArrayLike, clock: str = "monotonic") -> pd.Series:
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
                raise ValueError(f"event stream {self.name!r} has no record layout yet")
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

    def live(self, rows: int = 10, interval: float = 0.5) -> Any:
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

    @property
    def fds(self) -> list[int]:
        """The descriptors a reader thread waits on for this stream's events (none once
        closed)."""
        return list(self._reader.fds) if self._reader is not None else []

    def close(self) -> None:
        """Keep the final loss counts, unmap the buffer, close the spill file (done by its
        owner, :class:`~.reader.Streams`, as the program stops)."""
        with self._lock:
            if self._reader is not None:
                try:
                    self._closed_lost = self._read_lost()
                except OSError as e:  # keep the last count read, and say it may be short
                    self._closed_lost = dict(self._last_lost)
                    self._uncounted = True
                    self.fail(e)
                    self.failure = (f"{self.failure}; the kernel's loss count could not be "
                                    "read at close: lost_kernel is the last count read and may "
                                    "be short")[:400]
                self._reader.close()
                self._reader = None
            if self._store is not None:
                try:
                    self._store.close()
                except Exception as e:  # noqa: BLE001 - the spill file could not be completed
                    self.fail(e)
            self.closed = True
