"""Event streams from perf and ring buffers, consumed in the background into numpy.

Every ``BPF_PERF_OUTPUT`` and ``BPF_RINGBUF_OUTPUT`` table of a program becomes a
:class:`Stream`. One reader thread per program waits on all of its buffers with
epoll, reads whole batches straight from the mmap'ed pages, decodes them with
the record's numpy dtype and keeps the newest ``max_rows`` events::

    prog.events["events"].df          # one column per field (+ "cpu" for perf buffers)
    prog.events["events"].stats       # received, lost in the kernel, dropped by the cap

Options (``Program(..., stream_options={...})``; defaults in :data:`DEFAULTS`,
which may be changed for the whole process):

* ``max_rows``: events kept per stream; the oldest are dropped and counted.
* ``page_cnt``: perf buffer size per CPU, in pages (a power of two). A ring
  buffer's size is the one the C source declares.
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
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import dtypes as dt_util
from . import eventframe, timebase
from .eventstore import EventStore
from .maps import normalize_dtype
from .perfbuf import PAGE_SIZE, PerfBuffer
from .ringbuf import RingBuffer

DEFAULTS: dict[str, Any] = {"max_rows": 1_000_000, "page_cnt": 256, "wakeup_bytes": None,
                            "poll_ms": 50, "batch_ms": 2}
STREAM_KINDS = ("perf_event_array", "ringbuf")
_OPTIONS = set(DEFAULTS) | {"dtypes", "time", "spill"}


def as_dtype(layout: Any) -> np.dtype:
    """A structured numpy dtype from a numpy dtype, a ctypes type, or a dtype spec."""
    dt = normalize_dtype(np.dtype(layout))
    return dt if dt.names else np.dtype([("value", dt)])


class Stream:
    """The events of one perf or ring buffer: held, counted, and shown as a DataFrame."""

    def __init__(self, name: str, kind: str, layout: np.dtype | None, max_rows: int) -> None:
        self.name = name
        self.kind = kind
        self.received = 0
        self._paused = False
        self._discarded = 0
        self._lock = threading.RLock()
        self._callbacks: list[Callable[[dict], Any]] = []
        self.callback_errors: list[BaseException] = []
        self._time: dict[str, str] = {}
        self._offsets: dict[str, int] = {}
        self._lost_cpu: dict[int, int] = {}
        self._max_rows = max_rows
        self._raw = layout is None
        self._set_layout(layout)
        self._buffer: PerfBuffer | RingBuffer | None = None
        self._closed_lost: np.ndarray | None = None
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
        old = getattr(self, "_store", None)
        self._store = EventStore(stored, self._max_rows)
        if old is not None:
            self._store.dropped, self._store.spilled = old.dropped, old.spilled

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
        buf = self._buffer
        if buf is None:
            return 0
        n = 0
        if isinstance(buf, PerfBuffer):
            for ring in buf.rings:
                blocks, lost = ring.read()
                if lost:
                    self._lost_cpu[ring.cpu] = self._lost_cpu.get(ring.cpu, 0) + lost
                n += self._take(blocks, ring.cpu)
        else:
            n += self._take(buf.read()[0], 0)
        return n

    def _take(self, blocks: list[np.ndarray], cpu: int) -> int:
        n = 0
        for block in blocks:
            with self._lock:
                self.received += len(block)
                n += len(block)
                if self._paused:
                    self._discarded += len(block)
                    continue
                records = self._decode(block, cpu)
                self._store.append(records)
            if self._callbacks:
                self._call_back(records)
        return n

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
        return df

    @property
    def df(self) -> pd.DataFrame:
        """The events held, oldest first, one column per field."""
        return self.tail(None)

    def tail(self, n: int | None = 10) -> pd.DataFrame:
        """The ``n`` newest events held (all with ``None``)."""
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
        """Events the kernel could not place in the buffer, per CPU."""
        if isinstance(self._buffer, RingBuffer) or self._closed_lost is not None:
            values = self._closed_lost if self._closed_lost is not None \
                else self._buffer.lost_per_cpu()
            return {cpu: int(v) for cpu, v in enumerate(values) if v}
        return dict(self._lost_cpu)

    @property
    def stats(self) -> dict[str, Any]:
        """Counts: received from the buffer, lost in the kernel, dropped by ``max_rows``.

        ``received`` counts every event read from the buffer; of those,
        ``held`` are kept, ``dropped_cap`` were dropped as the oldest beyond
        ``max_rows``, ``spilled`` were written to the spill file and
        ``discarded_paused`` arrived while paused (what was ``clear()``-ed is
        not counted). ``lost_kernel`` never reached the buffer (perf: lost
        records; ring buffer: submissions that found it full).
        """
        with self._lock:
            store = self._store
            return {"received": self.received, "lost_kernel": self.lost_kernel,
                    "dropped_cap": store.dropped if store else 0,
                    "spilled": store.spilled if store else 0,
                    "discarded_paused": self._discarded, "held": len(store) if store else 0,
                    "lost_per_cpu": self.lost_per_cpu}

    def __len__(self) -> int:
        return len(self._store) if self._store is not None else 0

    # -- control -----------------------------------------------------------------

    @property
    def max_rows(self) -> int:
        return self._max_rows

    @max_rows.setter
    def max_rows(self, value: int) -> None:
        with self._lock:
            self._max_rows = int(value)
            if self._store is not None:
                held = self._store.snapshot()
                store = EventStore(self._store.dtype, self._max_rows)
                store.dropped, store.spilled = self._store.dropped, self._store.spilled
                store._spill, self._store._spill = self._store._spill, None
                store.append(held)
                self._store = store

    def pause(self) -> None:
        """Keep reading the buffer, but discard (and count) events until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def clear(self) -> None:
        """Forget the events held (counters keep counting)."""
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
        self.df.to_parquet(path, index=False)
        return Path(path)

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
        from .streamview import LiveView

        return LiveView(self, rows=rows, interval=interval).widget

    def summary(self) -> str:
        s = self.stats
        state = "stopped" if self.closed else ("paused" if self._paused else "running")
        kind = "perf buffer" if self.kind == "perf_event_array" else "ring buffer"
        return (f"{self.name} ({kind}, {state}): {s['received']:,} received, "
                f"{s['lost_kernel']:,} lost in the kernel, {s['dropped_cap']:,} dropped by "
                f"max_rows, {s['held']:,} held")

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
        if isinstance(self._buffer, RingBuffer):
            with contextlib.suppress(OSError):
                self._closed_lost = self._buffer.lost_per_cpu()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self._store is not None:
            self._store.close()
        self.closed = True


class Streams(Mapping):
    """The event streams of one program, by name, with their reader thread."""

    def __init__(self, streams: dict[str, Stream], poll_s: float, batch_s: float) -> None:
        self._streams = streams
        self._poll_s = poll_s
        self._batch_s = batch_s
        self._stopping = threading.Event()
        self._wake = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, compiled, handles: Mapping, prepared, **options: Any) -> Streams:
        """Start consuming every perf and ring buffer among ``handles``."""
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown stream option(s) {sorted(unknown)}; "
                             f"options are {sorted(_OPTIONS)}")
        opts = {**DEFAULTS, **options}
        page_cnt = int(opts["page_cnt"])
        wakeup = opts["wakeup_bytes"]
        wakeup = page_cnt * PAGE_SIZE // 4 if wakeup is None else int(wakeup)
        layouts = {n: as_dtype(v) for n, v in (opts.get("dtypes") or {}).items()}
        hidden = set(prepared.hidden)
        streams: dict[str, Stream] = {}
        self = cls(streams, opts["poll_ms"] / 1000, opts["batch_ms"] / 1000)
        try:
            for name, h in handles.items():
                if h.kind not in STREAM_KINDS or name in hidden:
                    continue
                layout = layouts.get(name) or _learned_layout(compiled, handles, prepared, name)
                stream = Stream(name, h.kind, layout, int(opts["max_rows"]))
                streams[name] = stream
                if h.kind == "perf_event_array":
                    stream._buffer = PerfBuffer(h.fd, page_cnt, wakeup)
                else:
                    lost = handles.get(prepared.lost_maps.get(name, ""))
                    stream._buffer = RingBuffer(h.fd, h.max_entries,
                                                lost.fd if lost is not None else None)
                for col, clock in (opts.get("time") or {}).items():
                    stream.set_time(col, clock)
                if opts.get("spill") and stream.dtype is not None:
                    stream.spill(Path(opts["spill"]) / f"{name}.parquet")
            if streams:
                self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"ebpf_magic-streams-{'-'.join(streams)}")
                self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def _run(self) -> None:
        with select.epoll() as ep:
            ep.register(self._wake, select.EPOLLIN)
            for s in self._streams.values():
                fds = s._buffer.fds if isinstance(s._buffer, PerfBuffer) else [s._buffer.fd]
                for fd in fds:
                    ep.register(fd, select.EPOLLIN)
            while not self._stopping.is_set():
                ep.poll(self._poll_s)
                if self._stopping.is_set():
                    break
                read = sum(s._consume() for s in self._streams.values())
                if read and self._batch_s:
                    self._stopping.wait(self._batch_s)

    @property
    def received(self) -> int:
        """Events received by all streams."""
        return sum(s.received for s in self._streams.values())

    @property
    def df(self) -> pd.DataFrame:
        """One row per stream: kind and counts."""
        rows = [{"stream": n, "kind": s.kind, **{k: v for k, v in s.stats.items()
                                                 if k != "lost_per_cpu"}}
                for n, s in self._streams.items()]
        return pd.DataFrame(rows)

    def close(self) -> None:
        """Stop the reader, take what is left in the buffers, unmap them, close descriptors."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for s in self._streams.values():
            with contextlib.suppress(Exception):
                s._consume()
            s._close()
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1

    def __getitem__(self, name: str) -> Stream:
        try:
            return self._streams[name]
        except KeyError:
            raise KeyError(f"no event stream {name!r}; streams: "
                           f"{', '.join(self._streams) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    def __repr__(self) -> str:
        return f"<Streams {', '.join(self._streams) or '(none)'}>"

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


def _learned_layout(compiled, handles: Mapping, prepared, name: str) -> np.dtype | None:
    """The submitted record's dtype from the program, or None if it cannot be learned."""
    layout = compiled.event_dtype(name)
    if layout is None and name in prepared.reserved:
        typed = handles.get(prepared.type_maps.get(prepared.reserved[name], ""))
        layout = typed.value_dtype if typed is not None else None
    return as_dtype(layout) if layout is not None else None

