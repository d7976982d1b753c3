"""A live map browser: a model drivable from Python, and an ipywidgets view of it.

:class:`BrowserModel` lists maps and reads the selected one into a table
(sorted by its numeric value, largest first, until another column is chosen:
numbers largest first, text A to Z; text filter; top-N), edits and deletes rows,
and refreshes on a background thread. It reads a :class:`~ebpf_magic.api.ProgramView`'s maps, or any
mapping of :class:`~ebpf_magic.api.MapView`; a map edits while it is ``writable``
(then it is an :class:`~ebpf_magic.api.EditableMap`).
:class:`MapBrowser` renders the model with core ipywidgets only (an HTML table,
a PNG bar chart for histograms), so it needs no front-end extension.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from html import escape
from typing import Any, cast

import pandas as pd

from ebpf_magic.api import EditableMap, MapView, ProgramView, present_maps_with
from ebpf_magic.data.histograms import Histogram
from ebpf_magic.internal.tables import cell_text, html_table, is_numeric
from ebpf_magic.kernel import mapkinds
from ebpf_magic.present.refresh import Refreshed, Refresher
from ebpf_magic.program import running

LISTING_COLUMNS = ["map", "kind", "key", "value", "entries", "max_entries", "full"]

MapSource = Callable[[], Mapping[str, MapView]]
Source = ProgramView | Mapping[str, MapView] | MapSource

TABLE_HEIGHT = "24em"  # the table scrolls inside a box this high
AS_READ = "(as read)"  # the sort list's entry for the map's own order (a histogram's buckets)


def _source(obj: Source) -> tuple[MapSource, Callable[[], bool]]:
    """How to list maps of ``obj`` and tell whether they are still readable."""
    if isinstance(obj, Mapping):
        return (lambda: dict(obj)), lambda: True
    if callable(obj):
        return obj, lambda: True
    if isinstance(obj, ProgramView):
        # a live program's maps are readable while it runs; a replayed one's always
        prog = obj
        return (lambda: dict(prog.maps) if prog.readable else {}), lambda: prog.readable
    raise TypeError(f"cannot browse a {type(obj).__name__}: pass a Program, a mapping of "
                    "maps, or a function returning one")


def running_maps() -> dict[str, MapView]:
    """Maps of every program running in this process, named ``program/map``, oldest first."""
    return {f"{prog.name}/{name}": m for prog in running() if prog.readable
            for name, m in prog.maps.items()}


class BrowserModel(Refreshed):
    """The state of a map browser; every action is a method tests can call.

    ``source``: a program, a mapping of name to map, or a function returning
    one (e.g. :func:`running_maps`). ``on_update`` callbacks run after each
    refresh (on the refresh thread when it is running).
    """

    def __init__(self, source: Source, interval: float = 1.0, top_n: int = 100) -> None:
        self._list, self._alive = _source(source)
        self.refresher = Refresher(self.refresh, interval, "bpf-map-browser", alive=self._alive,
                                   on_error=self._failed, errors=(OSError, KeyError, ValueError))
        self.top_n = top_n
        self.selected: str | None = None
        self.sort_by: str | None = None
        self.ascending = False
        self.filter_text = ""
        self.data = pd.DataFrame()  # the selected map's full snapshot
        self.view = pd.DataFrame()  # after filter, sort and top-N
        self.histogram: Histogram | None = None
        self._value_columns: list[str] = []  # those of ``data``, from the map it was read from
        self.error = ""
        self.refreshes = 0
        self.last_refresh_s = 0.0
        self.on_update: list[Callable[[BrowserModel], None]] = []
        self._lock = threading.RLock()
        self._listing: tuple[pd.DataFrame | None, float] = (None, 0.0)
        names = list(self.maps())
        if names:
            self.selected = names[0]

    # -- maps ------------------------------------------------------------------

    def maps(self) -> dict[str, MapView]:
        return dict(self._list()) if not self.closed else {}

    def listing(self, max_age: float = 0.0) -> pd.DataFrame:
        """One row per map: kind, types, entries, max_entries, full.

        ``max_age``: reuse a listing up to this many seconds old (counting
        entries reads every map, so live refreshes of one map reuse it).
        """
        cached, at = self._listing
        if cached is not None and time.monotonic() - at < max_age:
            return cached
        rows = []
        for name, m in self.maps().items():
            info = dict(m.info())
            info["map"] = name
            rows.append(info)
        listing = pd.DataFrame(rows, columns=LISTING_COLUMNS)
        self._listing = (listing, time.monotonic())
        return listing

    @property
    def current(self) -> MapView | None:
        return self.maps().get(self.selected) if self.selected else None

    def select(self, name: str) -> pd.DataFrame:
        maps = self.maps()
        if name not in maps:
            raise KeyError(f"no map named {name!r}; maps: {', '.join(maps) or 'none'}")
        with self._lock:
            self.selected = name
            self.sort_by = None
            self.filter_text = ""
        return self.refresh()

    # -- reading ---------------------------------------------------------------

    def refresh(self) -> pd.DataFrame:
        """Read the selected map again and recompute the view."""
        start = time.perf_counter()
        with self._lock:
            m = self.current
            if m is None:
                self.data, self.histogram = pd.DataFrame(), None
                self._value_columns = []
            else:
                self.data = m.df
                self._value_columns = [c for c in self.data.columns if _is_value_column(c, m)]
                self.histogram = Histogram(self.data, name=m.name) if \
                    m.declared == "histogram" and \
                    {"low", "high", "count"} <= set(self.data.columns) else None
            self.error = ""
            self._recompute()
            self.refreshes += 1
            self.last_refresh_s = time.perf_counter() - start
        for callback in list(self.on_update):
            callback(self)
        return self.view

    def _recompute(self) -> None:
        df = self.data
        if self.filter_text and len(df):
            text = self.filter_text.lower()
            mask = pd.Series(False, index=df.index)
            for col in df.columns:
                mask |= df[col].astype(str).str.lower().str.contains(text, regex=False)
            df = df[mask]
        column, ascending = self.sorting
        if column is not None and column in df.columns:
            df = df.sort_values(column, ascending=ascending, kind="stable")
        if self.top_n:
            df = df.head(self.top_n)
        self.view = df

    @property
    def value_columns(self) -> list[str]:
        """The value columns of the last snapshot (the key's are the others)."""
        return self._value_columns

    @property
    def sorting(self) -> tuple[str | None, bool]:
        """(column, ascending) the view is sorted by.

        Until a column is chosen: the first numeric value column, descending, so
        top-N shows the largest entries; histograms keep their bucket order.
        """
        if self.sort_by is not None:
            return self.sort_by, self.ascending
        if self.histogram is not None:
            return None, False
        for column in self.value_columns:
            if is_numeric(self.data[column]):
                return column, False
        return None, False

    def sort(self, column: str | None, ascending: bool | None = None) -> pd.DataFrame:
        """Sort by ``column``; by default numbers largest first and text A to Z.

        ``None`` goes back to the map's default order (see :attr:`sorting`).
        """
        if column is not None and len(self.data.columns) and column not in self.data.columns:
            raise KeyError(f"no column {column!r}; columns: {', '.join(self.data.columns)}")
        if ascending is None:
            ascending = column not in self.data.columns or not is_numeric(self.data[column])
        with self._lock:
            self.sort_by, self.ascending = column, ascending
            self._recompute()
        return self.view

    def filter(self, text: str) -> pd.DataFrame:
        """Keep rows where any cell contains ``text`` (case-insensitive)."""
        with self._lock:
            self.filter_text = text
            self._recompute()
        return self.view

    def top(self, n: int) -> pd.DataFrame:
        """Show at most ``n`` rows (0: all)."""
        with self._lock:
            self.top_n = n
            self._recompute()
        return self.view

    # -- writing ---------------------------------------------------------------

    @property
    def editable(self) -> bool:
        m = self.current
        return m is not None and m.writable and m.declared != "histogram" \
            and mapkinds.kind(m.kind).updatable

    def keys(self, frame: pd.DataFrame | None = None) -> pd.Series:
        """Each row's key as the table names it, by index label: its key column's value, or
        ``col=value, ...`` when the key has several columns (of ``frame``, default the data)."""
        df = self.data if frame is None else frame
        columns = [c for c in df.columns if c not in self.value_columns]
        if not columns:
            return pd.Series(df.index.astype(str), index=df.index)
        if len(columns) == 1:
            return df[columns[0]].astype(str)
        parts = [f"{c}=" + df[c].astype(str) for c in columns]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined + ", " + part
        return joined

    def row_of(self, key: str) -> Any:
        """The index label of the row whose key reads ``key`` (as :meth:`keys` names it)."""
        with self._lock:
            keys = self.keys()
        found = keys.index[keys == key.strip()]
        if not len(found):
            raise KeyError(f"no row with key {key!r} in the table: click a row to choose it")
        return found[0]

    def _editing(self, row: Any) -> tuple[EditableMap, Any]:
        """The selected map and the key of ``row``; TypeError if the map cannot be edited."""
        if not self.editable:
            raise TypeError(f"map {self.selected!r} cannot be edited here")
        if row not in self.data.index:
            raise KeyError(f"no row {row!r} in the last snapshot")
        m = cast(EditableMap, self.current)  # a writable map is an editable one
        return m, m.row_key(self.data.loc[row].to_dict())

    def edit(self, row: Any, column: str, value: Any) -> pd.DataFrame:
        """Write ``value`` into ``column`` of ``row`` (an index label of the table)."""
        m, key = self._editing(row)
        m.set_cell(key, column, value)
        return self.refresh()

    def delete(self, row: Any) -> pd.DataFrame:
        """Delete ``row``'s key from the kernel map (arrays: zero it)."""
        m, key = self._editing(row)
        del m[key]
        return self.refresh()

    # -- live refresh ----------------------------------------------------------

    def start(self, interval: float | None = None) -> None:
        """Refresh every ``interval`` seconds on a background thread until closed."""
        if interval is not None:
            self.refresher.set_interval(interval)
        self.refresher.start()

    def _failed(self, error: Exception) -> None:
        self.error = str(error)

    def set_interval(self, seconds: float) -> None:
        self.refresher.set_interval(seconds)

    def close(self) -> None:
        """Stop refreshing; the thread ends within one wake-up."""
        self.refresher.stop()


# A header cell's click: choose its column in the browser's sort list, or, when it is
# already the one, flip the order; the widgets then tell the model. A row's click puts
# its key in the editor. Both read only their own data- attributes.
SORT_ON_CLICK = (
    "const b=this.closest('.bpf-browser'),s=b&&b.querySelector('.bpf-sort select');"
    "if(!s)return;if(s.value===this.dataset.column){b.querySelector('.bpf-descending input')"
    ".click()}else{s.value=this.dataset.column;"
    "s.dispatchEvent(new Event('change',{bubbles:true}))}")
CHOOSE_ON_CLICK = (
    "const b=this.closest('.bpf-browser'),i=b&&b.querySelector('.bpf-row input');"
    "if(!i)return;i.value=this.dataset.key;"
    "i.dispatchEvent(new Event('input',{bubbles:true}));"
    "i.dispatchEvent(new Event('change',{bubbles:true}))")


def table_html(df: pd.DataFrame, max_rows: int = 1000, separated: Any = (),
               sorting: tuple[str | None, bool] = (None, False),
               keys: Mapping[Any, str] | None = None) -> str:
    """An HTML table of ``df`` (no index column) in a scroll box of bounded height.

    Numeric columns are right-aligned; those in ``separated`` (counts, not IDs
    such as a PID key) show thousands separators. Clicking a header sorts by its
    column (again: the other way), ``sorting`` (column, ascending) marks the current
    one; with ``keys`` (index label -> key text), clicking a row chooses it for editing.
    """
    column, ascending = sorting
    arrow = " \u25b2" if ascending else " \u25bc"

    def header(name: str) -> str:
        mark = f' aria-sort="{"ascending" if ascending else "descending"}"' \
            if name == column else ""
        return (f' data-column="{escape(name)}"{mark} title="sort by {escape(name)}" '
                f'onclick="{escape(SORT_ON_CLICK)}"')

    def row(index: Any) -> str:
        return f' data-key="{escape(keys[index])}" onclick="{escape(CHOOSE_ON_CLICK)}"'

    table = html_table(df.head(max_rows), css_class="bpf-table", separated=separated,
                       header_attrs=header, row_attrs=row if keys is not None else None,
                       marks={str(column): f"<span>{arrow}</span>"} if column else None)
    return (f'<div class="bpf-scroll" style="max-height:{TABLE_HEIGHT};overflow:auto">'
            f"{table}</div>")


def histogram_png(h: Histogram) -> bytes:
    """A bar chart of ``h`` as PNG bytes (no pyplot: safe off the main thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ebpf_magic.present import plots

    fig = Figure(figsize=(8, 3.2))
    FigureCanvasAgg(fig)
    plots.hist(h, ax=fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


class MapBrowser:
    """ipywidgets view of a :class:`BrowserModel`; display it, or its ``.widget``."""

    def __init__(self, source: Source | BrowserModel, interval: float = 1.0, top_n: int = 100,
                 start: bool = True) -> None:
        import ipywidgets as w

        self.model = source if isinstance(source, BrowserModel) else BrowserModel(
            source, interval=interval, top_n=top_n)
        m = self.model
        self.listing = w.HTML()
        self.chooser = w.Dropdown(description="map", options=list(m.maps()), value=m.selected)
        self.interval = w.BoundedFloatText(value=m.interval, min=0.05, max=3600, step=0.5,
                                           description="every (s)")
        self.pause = w.ToggleButton(value=False, description="Pause", icon="pause")
        self.sort = w.Dropdown(description="sort", options=[AS_READ])
        self.descending = w.Checkbox(value=True, description="descending")
        self.filter = w.Text(description="filter", placeholder="text in any column")
        self.top = w.BoundedIntText(value=m.top_n, min=0, max=10**7, description="top N")
        self.status = w.HTML()
        self.table = w.HTML()
        self.chart = w.Image(format="png", layout=w.Layout(display="none"))
        self.row = w.Text(description="key", placeholder="click a row",
                          layout=w.Layout(width="18em"))
        self.column = w.Dropdown(description="column", options=[])
        self.value = w.Text(description="value", layout=w.Layout(width="18em"))
        self.set_button = w.Button(description="Set value", icon="pencil")
        self.delete_button = w.Button(description="Delete row", icon="trash",
                                      button_style="danger")
        self.close_button = w.Button(description="Close", icon="times")
        self.editor = w.HBox([self.row, self.column, self.value, self.set_button,
                              self.delete_button])
        self.widget = w.VBox([
            self.listing,
            w.HBox([self.chooser, self.interval, self.pause, self.close_button]),
            w.HBox([self.sort, self.descending, self.filter, self.top]),
            self.status, self.chart, self.table, self.editor])
        # what the table's clicks look for (see table_html)
        self.widget.add_class("bpf-browser")
        self.sort.add_class("bpf-sort")
        self.descending.add_class("bpf-descending")
        self.row.add_class("bpf-row")

        self._syncing = threading.local()  # set while render() copies the model's state
        self.chooser.observe(self._choose, "value")
        self.interval.observe(lambda c: m.set_interval(c["new"]), "value")
        self.pause.observe(self._toggle_pause, "value")
        self.sort.observe(self._sort_chosen, "value")
        self.descending.observe(self._direction_chosen, "value")
        self.filter.observe(lambda c: self._act(m.filter, c["new"]), "value")
        self.top.observe(lambda c: self._act(m.top, c["new"]), "value")
        self.set_button.on_click(lambda _b: self._act(
            lambda: m.edit(m.row_of(self.row.value), self.column.value,
                           _number(self.value.value))))
        self.delete_button.on_click(lambda _b: self._act(lambda: m.delete(m.row_of(
            self.row.value))))
        self.close_button.on_click(lambda _b: self.close())
        m.on_update.append(lambda _: self.render())
        m.refresh()
        if start:
            m.start()

    def _act(self, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except (KeyError, ValueError, TypeError, OSError) as e:
            self.model.error = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        self.render()

    def _rendering(self) -> bool:
        return getattr(self._syncing, "on", False)

    def _choose(self, change: dict) -> None:
        if not self._rendering() and change["new"] is not None:
            self._act(self.model.select, change["new"])

    def _toggle_pause(self, change: dict) -> None:
        self.pause.description = self.model.set_paused(change["new"])

    def _sort_chosen(self, change: dict) -> None:
        """A column chosen in the list (or by clicking its header): its default order."""
        if not self._rendering():
            self._act(self.model.sort, None if change["new"] == AS_READ else change["new"])

    def _direction_chosen(self, change: dict) -> None:
        column = self.model.sorting[0]
        if not self._rendering() and column is not None:
            self._act(self.model.sort, column, not change["new"])

    def render(self) -> None:
        """Copy the model's state into the widgets (safe from the refresh thread)."""
        m = self.model
        with m._lock:
            listing, view, data, hist = m.listing(max_age=2.0), m.view, m.data, m.histogram
            value_cols, (column, ascending) = m.value_columns, m.sorting
            keys = m.keys(view) if m.editable else None
        self.listing.value = _listing_html(listing, m.selected)
        names = list(listing["map"])
        self._syncing.on = True
        try:
            if list(self.chooser.options) != names:  # programs started or stopped
                self.chooser.options = names
                self.chooser.value = m.selected if m.selected in names else None
            columns = [AS_READ] + [str(c) for c in data.columns]
            if list(self.sort.options) != columns:
                self.sort.options = columns
            self.sort.value = str(column) if str(column) in columns else AS_READ
            self.descending.value = not ascending
            self.descending.disabled = column is None
        finally:
            self._syncing.on = False
        if list(self.column.options) != value_cols:
            self.column.options = value_cols
            self.column.value = value_cols[0] if value_cols else None
        self.editor.layout.display = None if m.editable else "none"
        if hist is not None:
            self.chart.value = histogram_png(hist)
            self.chart.layout.display = None
        else:
            self.chart.layout.display = "none"
        self.table.value = table_html(view, separated=set(value_cols), sorting=(column, ascending),
                                      keys=keys)
        state = "closed" if m.closed else "paused" if m.paused else (
            "live" if m.live else "stopped")
        error = f' <span style="color:#c00">{escape(m.error)}</span>' if m.error else ""
        order = f"sorted by {escape(str(column))} {'ascending' if ascending else 'descending'}; " \
            if column is not None else ""
        self.status.value = (f"<small>{len(data)} rows, showing {len(view)}; {order}{state}; "
                             f"read in {m.last_refresh_s * 1000:.1f} ms</small>{error}")

    def close(self) -> None:
        self.model.close()
        self.render()
        self.widget.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _is_value_column(column: str, m: MapView) -> bool:
    names = m.value_columns
    return column in names or column == "value" or column.split("[cpu")[0] in names


def _listing_html(listing: pd.DataFrame, selected: str | None) -> str:
    """The map listing as HTML; every value is escaped (a replayed recording is untrusted)."""
    rows = []
    for rec in listing.to_dict("records"):
        style = ' style="font-weight:bold"' if rec["map"] == selected else ""
        full = ' <span style="color:#c00">FULL</span>' if rec["full"] is True else ""
        cells = "".join(f"<td>{cell_text(rec[c])}</td>"
                        for c in ("map", "kind", "key", "value", "entries"))
        rows.append(f"<tr{style}>{cells}<td>{cell_text(rec['max_entries'])}{full}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("map", "kind", "key", "value", "entries",
                                             "max_entries"))
    return f"<table class='bpf-maps'><tr>{head}</tr>{''.join(rows)}</table>"


def _number(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def browse(source: Source | None = None, interval: float = 1.0, top_n: int = 100) -> MapBrowser:
    """A live browser over ``source``'s maps, or over every running program's."""
    return MapBrowser(running_maps if source is None else source, interval=interval,
                      top_n=top_n)


present_maps_with(MapBrowser)  # what every program's browse() returns
