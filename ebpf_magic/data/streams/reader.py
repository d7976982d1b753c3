"""A program's streams by name, and the one thread that reads all their buffers."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ebpf_magic.api import EVENT_STREAM, Named
from ebpf_magic.backend.base import CompiledProgram
from ebpf_magic.data.streams.buffers import (
    STREAM_KINDS,
    check_memory,
    learned_layout,
    open_reader,
    perf_pages,
)
from ebpf_magic.data.streams.options import DEFAULTS, as_dtype, check_options
from ebpf_magic.data.streams.stream import Stream
from ebpf_magic.kernel import sysbpf


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
    def open(cls, compiled: CompiledProgram, handles: Mapping, **options: Any) -> Streams:
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
                layout = layouts.get(name) or learned_layout(compiled, name)
                if layout is not None:
                    check_memory(name, layout, max_rows)
                counter = handles.get(loss_counters.get(name, ""))
                reader = open_reader(name, h, counter.fd if counter is not None else None,
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
                stream.close()
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
                    for fd in s.fds:
                        ep.register(fd, select.EPOLLIN)
                while not self._stopping.is_set():
                    ep.poll(self._poll_s)
                    if self._stopping.is_set():
                        break
                    if self._consume() and self._batch_s:
                        self._stopping.wait(self._batch_s)
        except Exception as e:  # noqa: BLE001 - the buffers then fill, the kernel counts losses
            for s in self.values():
                s.fail(e)

    def _consume(self) -> int:
        """Read every buffer once (a stream whose reading fails counts what it leaves)."""
        return sum(s.consume() for s in self.values())

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
                s.close()
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1

    def __repr__(self) -> str:
        return f"<Streams {', '.join(self) or '(none)'}>"

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)
