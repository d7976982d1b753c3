"""A live notebook view of a stream: the newest events, events/s, totals and losses.

A background thread refreshes an ``ipywidgets.HTML`` while the stream runs, so
cells keep executing; it stops when the stream's program stops (or the widget
is closed).
"""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets

from ebpf_magic.data.streams import Stream


class LiveView:
    """Refreshes ``widget`` from ``stream`` every ``interval`` seconds until the stream stops."""

    def __init__(self, stream: Stream, rows: int = 10, interval: float = 0.5) -> None:
        self.stream = stream
        self.rows = rows
        self.interval = interval
        self.widget = widgets.HTML(self.render())
        self._done = threading.Event()
        self.widget.observe(lambda _change: self._done.set(), names="comm")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"ebpf_magic-live-{stream.name}")
        self._thread.start()

    def render(self) -> str:
        s = self.stream
        stats = s.stats
        state = "stopped" if s.closed else ("paused" if s.paused else "live")
        head = (f"<b>{html.escape(s.name)}</b> ({state}): {s.rate():,.0f} events/s, "
                f"{stats['received']:,} received, {stats['lost_kernel']:,} lost in the kernel, "
                f"{stats['dropped_cap']:,} dropped by max_rows")
        if s.failure:
            head += (f"; <b>failed</b>: {html.escape(s.failure)} "
                     f"({stats['lost_reader']:,} events lost since)")
        return f"<div>{head}</div>" + s.tail(self.rows).to_html(index=False)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.widget.value = self.render()
            if self.stream.closed:
                break
