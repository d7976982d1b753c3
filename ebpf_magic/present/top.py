"""``%bpf top``: the notebook's bpftop, every BPF program by its share of a CPU, live.

:class:`TopModel` reads the kernel's run statistics of the programs in view (every program
on the machine where this process may list them, CAP_SYS_ADMIN; otherwise those this
process and its children hold), computes each one's runs per second, nanoseconds per run
and percent of one CPU between two readings, and keeps a short history of that share. A
background thread refreshes it every ``interval`` seconds until :meth:`TopModel.stop`.
:class:`Top` shows it with core ipywidgets: a table sorted by CPU share, busiest first,
each row with a sparkline of its recent share. Where the kernel does not count, the view
says how to make it, and shows no numbers.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from html import escape

import pandas as pd

from ebpf_magic.data.overhead import Rates
from ebpf_magic.kernel import runstats
from ebpf_magic.present.refresh import Refreshed, Refresher
from ebpf_magic.program import labels

COLUMNS = ["program", "function", "prog_id", "type", "owner", "runs_per_s", "ns_per_run",
           "cpu_pct", "runs"]
SCOPES = ("machine", "process")
OWNERS_MAX_AGE = 5.0  # seconds a listing of which process holds which program is reused
SPARK_WIDTH, SPARK_HEIGHT = 120, 18
MIN_INTERVAL = 0.05  # seconds between refreshes, at least


class TopModel(Refreshed):
    """The programs in view, their rates and recent CPU shares; every action a method.

    ``scope``: ``"machine"`` (every program; needs CAP_SYS_ADMIN, else it shows this
    process's and says so) or ``"process"`` (this process's and its children's).
    ``keep`` readings of each program's share are kept for its sparkline.
    """

    def __init__(self, scope: str = "machine", interval: float = 1.0, keep: int = 60) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        self.scope = scope
        self.refresher = Refresher(self.refresh, interval, "ebpf_magic-top",
                                   on_error=self._failed, minimum=MIN_INTERVAL)
        self.rates = Rates(keep)
        self.view = pd.DataFrame(columns=COLUMNS)
        self.status = runstats.status()
        self.note = ""
        self.error = ""
        self.refreshes = 0
        self.on_update: list[Callable[[TopModel], None]] = []
        self._lock = threading.RLock()
        # who held which program, when that was listed, and the programs there were then
        self._owners: tuple[dict[int, list[int]], float, set[int]] = ({}, -math.inf, set())

    # -- reading ---------------------------------------------------------------

    def _programs(self) -> tuple[dict[int, runstats.RunStats], dict[int, str]]:
        """The programs in view by id, and who holds each (``comm[pid]``)."""
        if self.scope == "machine" and runstats.may_enable():
            self.note = "every program on this machine"
            found = {s.prog_id: s for s in runstats.machine()}
            return found, self._owner_names(found)
        self.note = ("this process's programs and its children's" if self.scope == "process"
                     else "this process's programs and its children's: listing every "
                          "program on the machine needs CAP_SYS_ADMIN")
        found, owner = {}, {}
        me = os.getpid()
        for fd in runstats.prog_fds():
            try:
                s = runstats.of_fd(fd)
            except OSError:  # closed meanwhile
                continue
            found.setdefault(s.prog_id, s)
            owner[s.prog_id] = f"{runstats.comm(me)}[{me}]"
        for pid in runstats.descendants():
            for s in runstats.of_process(pid):
                if s.prog_id not in found:
                    found[s.prog_id] = s
                    owner[s.prog_id] = f"{runstats.comm(pid)}[{pid}]"
        return found, owner

    def _owner_names(self, found: dict[int, runstats.RunStats]) -> dict[int, str]:
        """``comm[pid]`` of up to three processes holding each program (none for a program
        only a link or a pin keeps), from a listing at most :data:`OWNERS_MAX_AGE` old or
        made since the last new program appeared."""
        held, at, known = self._owners
        if time.monotonic() - at > OWNERS_MAX_AGE or set(found) - known:
            held = runstats.owners()
            self._owners = (held, time.monotonic(), set(found))
        return {i: ", ".join(f"{runstats.comm(p)}[{p}]" for p in held.get(i, [])[:3])
                for i in found}

    def refresh(self) -> pd.DataFrame:
        """Read every program in view once more; the table, busiest first."""
        with self._lock:
            found, owner = self._programs()
            status = runstats.status()
            rates = self.rates.add(found)
            mine = labels()
            rows = []
            for prog_id, s in found.items():
                program, function = mine.get(prog_id, ("", s.name))
                rate = rates[prog_id] if status.counting else dict.fromkeys(
                    ("runs_per_s", "ns_per_run", "cpu_pct"), math.nan)
                rows.append({"program": program, "function": function, "prog_id": prog_id,
                             "type": s.kind, "owner": owner.get(prog_id, ""), **rate,
                             "runs": s.run_cnt if status.counting else pd.NA})
            df = pd.DataFrame(rows, columns=COLUMNS)
            df = df.sort_values(["cpu_pct", "runs_per_s", "prog_id"],
                                ascending=[False, False, True], na_position="last",
                                kind="stable").reset_index(drop=True)
            self.view, self.status, self.error = df, status, ""
            self.refreshes += 1
        for callback in list(self.on_update):
            callback(self)
        return self.view

    def series(self, prog_id: int) -> Sequence[float]:
        """Program ``prog_id``'s recent CPU shares (percent), oldest first."""
        return self.rates.series(prog_id)

    # -- live refresh ----------------------------------------------------------

    def start(self) -> None:
        """Refresh every :attr:`interval` seconds on a background thread until :meth:`stop`."""
        self.refresher.start()

    def _failed(self, error: Exception) -> None:
        self.error = str(error)

    def stop(self) -> None:
        """Stop refreshing; returns once the thread has ended."""
        self.refresher.stop()


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH,
              height: int = SPARK_HEIGHT) -> str:
    """An inline SVG line of ``values`` (NaN left out), scaled to its own maximum."""
    points = [v for v in values if not math.isnan(v)]
    if len(points) < 2:
        return ""
    top = max(max(points), 1e-9)
    step = width / (len(points) - 1)
    xy = " ".join(f"{i * step:.1f},{height - 1 - v / top * (height - 2):.1f}"
                  for i, v in enumerate(points))
    return (f'<svg width="{width}" height="{height}" style="vertical-align:middle">'
            f"<title>peak {top:.2f}% of a CPU</title>"
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{xy}"/></svg>')


def _number(value: object, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table_html(model: TopModel, max_rows: int = 200) -> str:
    """The model's table as HTML (every value escaped), with a sparkline per program."""
    right = "text-align:right;font-variant-numeric:tabular-nums"
    head = (f"<tr><th>program</th><th>function</th><th style='{right}'>id</th><th>type</th>"
            f"<th>owner</th><th style='{right}'>runs/s</th><th style='{right}'>ns/run</th>"
            f"<th style='{right}'>CPU %</th><th>recent CPU %</th></tr>")
    rows = []
    for rec in model.view.head(max_rows).to_dict("records"):
        rows.append(
            f"<tr><td>{escape(str(rec['program']))}</td><td>{escape(str(rec['function']))}</td>"
            f"<td style='{right}'>{rec['prog_id']}</td><td>{escape(str(rec['type']))}</td>"
            f"<td>{escape(str(rec['owner']))}</td>"
            f"<td style='{right}'>{_number(rec['runs_per_s'], 0)}</td>"
            f"<td style='{right}'>{_number(rec['ns_per_run'], 0)}</td>"
            f"<td style='{right}'>{_number(rec['cpu_pct'], 2)}</td>"
            f"<td>{sparkline(model.series(rec['prog_id']))}</td></tr>")
    return (f"<div style='max-height:30em;overflow:auto'><table class='bpf-top'>{head}"
            f"{''.join(rows)}</table></div>")


def header_html(model: TopModel) -> str:
    """What is shown and whether the kernel counts; how to make it count where it does not."""
    status = model.status
    state = "stopped" if model.closed else "paused" if model.paused else (
        "live" if model.live else "not refreshing")
    line = (f"<small>{len(model.view)} programs ({escape(model.note)}); every "
            f"{model.interval:g} s; {state}</small>")
    if not status.counting:
        line += (f"<div style='color:#9a6700'><b>No run statistics:</b> BPF run statistics "
                 f"are {escape(status.detail)}. {escape(status.hint)}</div>")
    if model.error:
        line += f"<div style='color:#c00'>{escape(model.error)}</div>"
    return line


class Top:
    """The ipywidgets view of a :class:`TopModel`; display it, or its ``.widget``.

    Refreshes start at once; :meth:`stop` (or its Stop button, or closing the widget) ends
    them and releases the thread.
    """

    def __init__(self, scope: str = "machine", interval: float = 1.0, start: bool = True
                 ) -> None:
        import ipywidgets as w

        self.model = m = TopModel(scope, interval)
        self.header = w.HTML()
        self.table = w.HTML()
        self.every = w.BoundedFloatText(value=m.interval, min=MIN_INTERVAL, max=3600, step=0.5,
                                        description="every (s)")
        self.pause = w.ToggleButton(value=False, description="Pause", icon="pause")
        self.stop_button = w.Button(description="Stop", icon="stop")
        self.widget = w.VBox([w.HBox([self.every, self.pause, self.stop_button]), self.header,
                              self.table])
        self.every.observe(lambda c: m.set_interval(c["new"]), "value")
        self.pause.observe(self._toggle_pause, "value")
        self.stop_button.on_click(lambda _b: self.stop())
        self.widget.observe(lambda _c: m.stop(), names="comm")  # the widget was closed
        m.on_update.append(lambda _m: self.render())
        m.refresh()
        if start:
            m.start()

    def _toggle_pause(self, change: dict) -> None:
        self.pause.description = self.model.set_paused(change["new"])
        self.render()

    def render(self) -> None:
        """Copy the model into the widgets (safe from the refresh thread)."""
        with self.model._lock:
            self.header.value = header_html(self.model)
            self.table.value = table_html(self.model)

    def stop(self) -> None:
        """Stop refreshing and release the thread; the last table stays shown."""
        self.model.stop()
        self.render()

    @property
    def df(self) -> pd.DataFrame:
        """The last table: one row per program, busiest first."""
        return self.model.view.copy()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
