"""matplotlib plots of maps and streams; each returns its Axes, like pandas' ``.plot()``.

Every function takes plain DataFrames (bucket frames, stream frames, folded
stacks), so recordings plot the same as live programs; histogram functions
also accept a :class:`~ebpf_magic.data.histograms.Histogram` or a histogram map.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.data import histograms, stacks
from ebpf_magic.data.histograms import EMPTY, as_histogram
from ebpf_magic.export.profile import as_stack_counts

LOG_SPAN = 100  # counts spanning more than this factor get a log colour scale


def _axes(ax: Any, figsize: tuple[float, float] = (8, 4)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def hist(data: Any, ax: Any = None, kind: str | None = None, title: str | None = None,
         color: str | None = None) -> Any:
    """A bar per bucket labelled like bpftrace (``[1]``, ``[2, 4)``, ``[1K, 2K)``...).

    ``data``: a Histogram, a bucket frame (``low``, ``high``, ``count``) or a
    histogram map. A keyed histogram gets one group of bars per section over
    the union of the buckets, with a legend.
    """
    h = as_histogram(data, kind=kind)
    ax = _axes(ax)
    buckets = h.df.drop_duplicates(["low", "high"])[["low", "high"]].sort_values("low")
    labels = h.labels(buckets)
    x = np.arange(len(buckets))
    sections = h.sections()
    width = 0.8 / max(len(sections), 1)
    for i, (section, part) in enumerate(sections):
        counts = buckets.merge(part[["low", "high", "count"]], on=["low", "high"], how="left")
        heights = counts["count"].fillna(0).to_numpy()
        offset = (i - (len(sections) - 1) / 2) * width
        name = ", ".join(map(str, section)) if section else None
        ax.bar(x + offset, heights, width=width, label=name,
               color=color if len(sections) == 1 else None)
    ax.set_xticks(x, labels)
    _fit_xlabels(ax, labels)
    ax.set_ylabel("count")
    ax.set_xlabel("log2 buckets" if h.kind == "log2" else "linear buckets")
    if len(sections) > 1:
        ax.legend(title=", ".join(h.section_columns))
    if buckets.empty:
        ax.text(0.5, 0.5, EMPTY, transform=ax.transAxes, ha="center", va="center")
    ax.set_title(title if title is not None else (f"@{h.name}" if h.name else ""))
    return ax


def _fit_xlabels(ax: Any, labels: list[str]) -> None:
    """Categorical x tick labels that never overlap.

    Horizontal when each fits its slot, else vertical; when even vertical ones
    would touch, every k-th label is shown (the first and then every k-th bucket).
    """
    if not labels:
        return
    get_renderer = getattr(ax.figure.canvas, "get_renderer", None)
    if get_renderer is None:  # a canvas that cannot measure text: vertical past a few labels
        ax.tick_params(axis="x", labelrotation=90 if len(labels) > 6 else 0)
        return
    renderer = get_renderer()
    left, right = ax.get_xlim()
    slot = ax.get_window_extent(renderer).width / max(right - left, 1e-9)
    size = ax.xaxis.get_major_ticks()[0].label1.get_fontsize() if ax.xaxis.get_major_ticks() \
        else 10
    probe = ax.figure.text(0, 0, "", fontsize=size)
    widths = []
    for text in labels:
        probe.set_text(text)
        widths.append(probe.get_window_extent(renderer).width)
    probe.set_text("Ag")
    height = probe.get_window_extent(renderer).height
    probe.remove()
    gap = 1.15  # room between neighbouring labels, and for a tighter layout later
    if max(widths) * gap <= slot:
        ax.tick_params(axis="x", labelrotation=0)
        return
    every = int(np.ceil(height * gap / slot))
    shown = [text if i % every == 0 else "" for i, text in enumerate(labels)]
    ax.set_xticks(ax.get_xticks(), shown, rotation=90, ha="center")


def _distinct_times(stamps: list[Any]) -> list[str]:
    """Labels for clock times or offsets with as many decimals of a second as make them distinct."""
    def label(stamp: Any, digits: int) -> str:
        if isinstance(stamp, pd.Timedelta):
            return f"{stamp.total_seconds():.{digits}f}s"
        if isinstance(stamp, pd.Timestamp):
            text = stamp.strftime("%H:%M:%S")
            return f"{text}.{stamp.microsecond:06d}"[:len(text) + 1 + digits] if digits else text
        return str(stamp)

    stamps = [pd.Timestamp(s) if isinstance(s, (np.datetime64, datetime.datetime)) else s
              for s in stamps]
    for digits in range(7):
        labels = [label(s, digits) for s in stamps]
        if len(set(labels)) == len(labels):
            return labels
    return [str(s) for s in stamps]


def time_axis(ax: Any, axis: str = "x") -> Any:
    """Give a date axis clock-time tick labels that are never repeated; returns ``ax``.

    Ticks less than a second apart get as many decimals of a second as tell
    them apart. Works on axes pandas or matplotlib drew with datetimes.
    """
    from matplotlib import dates
    from matplotlib.ticker import Formatter

    class DistinctTimes(Formatter):
        def __call__(self, x: float, pos: int | None = None) -> str:  # noqa: ARG002 - matplotlib's
            return self.format_ticks([x])[0]

        def format_ticks(self, values: list[float]) -> list[str]:
            return _distinct_times([pd.Timestamp(dates.num2date(v)).tz_localize(None)
                                    for v in values])

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(DistinctTimes())
    target.set_minor_formatter(lambda _x, _pos: "")
    return ax


def _times(df: pd.DataFrame, time: str | None) -> pd.Series:
    """The stream's time column as datetimes, or as timedeltas from numbers: integers are
    nanoseconds (``bpf_ktime_get_ns()`` and its kin), other numbers seconds."""
    if time is None:
        time = next((c for c in ("time", "ts", "timestamp", "t") if c in df.columns), None)
        if time is None:
            raise KeyError(f"no time column (time, ts, timestamp); columns: {list(df.columns)}")
    col = df[time]
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        return col
    values = col.to_numpy()
    unit = "ns" if np.issubdtype(values.dtype, np.integer) else "s"
    return pd.Series(pd.to_timedelta(values, unit=unit), index=df.index)


def rate_frame(df: pd.DataFrame, time: str | None = None, interval: str = "1s",
               by: str | None = None) -> pd.DataFrame:
    """Events per second in each ``interval`` (one column per value of ``by``)."""
    t = _times(df, time)
    seconds = pd.Timedelta(interval).total_seconds()
    frame = pd.DataFrame({"t": t.to_numpy(), "n": 1})
    if by is not None:
        frame["by"] = df[by].to_numpy()
    grouper = pd.Grouper(key="t", freq=interval)
    if by is None:
        counts = frame.groupby(grouper)["n"].sum().to_frame("events/s")
    else:
        counts = frame.groupby([grouper, "by"])["n"].sum().unstack("by", fill_value=0)
    return counts / seconds


def rate(df: pd.DataFrame, time: str | None = None, interval: str = "1s", by: str | None = None,
         ax: Any = None) -> Any:
    """Event rate over time from a stream's DataFrame (a ``time`` column, or name it)."""
    rates = rate_frame(df, time, interval, by)
    ax = _axes(ax)
    x = rates.index
    if isinstance(x, pd.TimedeltaIndex):
        x = x.total_seconds()
        ax.set_xlabel("seconds")
    for name in rates.columns:
        ax.plot(x, rates[name].to_numpy(), drawstyle="steps-post", label=str(name))
    if isinstance(x, pd.DatetimeIndex):
        time_axis(ax)
    ax.set_ylabel(f"events/s (per {interval})")
    if by is not None:
        ax.legend(title=by)
    return ax


def heatmap_frame(data: Any, value: str | None = None, time: str | None = None,
                  interval: str = "1s", kind: str = "log2",
                  per_interval: bool = False) -> pd.DataFrame:
    """Counts with one row per bucket label (low to high) and one column per time bin.

    ``data`` is either a stream DataFrame (bucket the ``value`` column per
    ``interval``) or periodic histogram snapshots: an iterable of
    ``(time, Histogram or bucket frame)`` pairs. Snapshots of a map that keeps
    counting hold running totals: each column shows its snapshot as it is, or
    with ``per_interval`` what was counted since the previous snapshot (the
    first column: since the start).
    """
    if isinstance(data, pd.DataFrame):
        if value is None:
            raise ValueError("name the stream's value column to bucket: value='...'")
        t = _times(data, time)
        v = data[value].to_numpy()
        slots = histograms.log2_slots(v) if kind == "log2" else v.astype(np.int64)
        bins = pd.Series(t.to_numpy()).dt.floor(interval)
        frame = pd.DataFrame({"bin": bins.to_numpy(), "slot": slots})
        counts = frame.groupby(["slot", "bin"]).size().unstack("bin", fill_value=0)
        full = np.arange(counts.index.min(), counts.index.max() + 1) if len(counts) else []
        counts = counts.reindex(full, fill_value=0)
        low, high = histograms.bounds(counts.index.to_numpy(), kind)
    else:
        columns = {}
        for stamp, snap in data:
            h = as_histogram(snap, kind=kind)
            columns[stamp] = h.df.groupby(["low", "high"])["count"].sum()
        counts = pd.DataFrame(columns).fillna(0).astype(np.int64).sort_index()
        if per_interval:
            counts = counts.diff(axis=1).fillna(counts).astype(np.int64)
        low = counts.index.get_level_values(0).to_numpy()
        high = counts.index.get_level_values(1).to_numpy()
    counts.index = [histograms.label(lo, hi, kind) for lo, hi in zip(low, high, strict=True)]
    return counts


def heatmap(data: Any, value: str | None = None, time: str | None = None, interval: str = "1s",
            kind: str = "log2", per_interval: bool = False, ax: Any = None,
            cmap: str = "viridis") -> Any:
    """A latency heatmap: time bins across, log2 buckets up, colour = count.

    Takes what :func:`heatmap_frame` takes. When the non-zero counts span more
    than two decades the colour scale is logarithmic (empty cells are left
    blank), so one crowded cell does not hide the rest.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    counts = heatmap_frame(data, value, time, interval, kind, per_interval)
    ax = _axes(ax)
    values = counts.to_numpy()
    positive = values[values > 0]
    log = len(positive) > 0 and positive.max() > LOG_SPAN * positive.min()
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if log else None
    mesh = ax.pcolormesh(np.arange(counts.shape[1] + 1), np.arange(counts.shape[0] + 1),
                         np.ma.masked_less_equal(values, 0) if log else values,
                         cmap=colormaps[cmap].with_extremes(bad="white"), norm=norm,
                         shading="flat")
    ax.set_yticks(np.arange(counts.shape[0]) + 0.5, list(counts.index))
    step = max(1, counts.shape[1] // 10)
    cols = list(counts.columns)
    ax.set_xticks(np.arange(0, len(cols), step) + 0.5, _distinct_times(cols[::step]),
                  rotation=45, ha="right")
    ax.set_ylabel(f"{value or 'value'} ({kind} buckets)")
    ax.set_xlabel("time")
    ax.figure.colorbar(mesh, ax=ax, label="count (log scale)" if log else "count")
    return ax


def _flame_tree(profiles: list[pd.DataFrame]) -> dict:
    """``{frame: [totals, selfs, children]}``, each count one per profile; same-named
    frames under one parent merge, as flamegraph.pl does."""
    tree: dict = {}
    for slot, folded in enumerate(profiles):
        for stack, count in zip(folded["stack"], folded["count"], strict=True):
            node, entry = tree, None
            for frame in str(stack).split(";"):
                entry = node.setdefault(frame, [[0] * len(profiles), [0] * len(profiles), {}])
                entry[0][slot] += int(count)
                node = entry[2]
            if entry is not None:
                entry[1][slot] += int(count)
    return tree


def _flame_walk(tree: dict, width: int) -> list[tuple]:
    """``(frame, depth, start, totals, selfs)`` of every node, laid out by ``totals[width]``."""
    rows: list[tuple] = []

    def walk(node: dict, depth: int, start: int) -> None:
        for frame in sorted(node):
            totals, selfs, children = node[frame]
            rows.append((frame, depth, start, totals, selfs))
            walk(children, depth + 1, start)
            start += totals[width]

    walk(tree, 0, 0)
    return rows


def flame_rects(folded: pd.DataFrame) -> pd.DataFrame:
    """The rectangles of a flame graph: ``frame``, ``depth``, ``start``, ``width`` (in samples).

    Frames with the same name under the same parent merge, as flamegraph.pl does.
    """
    rows = [(f, d, s, t[0]) for f, d, s, t, _ in _flame_walk(_flame_tree([_stacks(folded)]), 0)]
    return pd.DataFrame(rows, columns=["frame", "depth", "start", "width"])


def flame_diff(before: Any, after: Any) -> pd.DataFrame:
    """The rectangles of a differential flame graph of ``after`` against ``before``.

    Laid out as ``after``'s flame graph (``frame``, ``depth``, ``start``, ``width``), with
    each frame's samples in both (``before``, ``after``: the frame and what it called;
    ``self_before``, ``self_after``: the frame itself) and ``delta`` = ``self_after -
    self_before``, the change a differential flame graph colours (flamegraph.pl's
    convention). Frames only ``before`` has are rows of width 0. Takes any stack counts
    (folded stacks, a stack-count frame, pairs); counts are compared as they are.
    """
    rows = [(f, d, s, t[1], t[0], t[1], m[0], m[1], m[1] - m[0])
            for f, d, s, t, m in _flame_walk(_flame_tree([_stacks(before), _stacks(after)]), 1)]
    return pd.DataFrame(rows, columns=["frame", "depth", "start", "width", "before", "after",
                                       "self_before", "self_after", "delta"])


def _stacks(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame) and {"stack", "count"} <= set(data.columns):
        return data
    return stacks.fold(as_stack_counts(data))


NEUTRAL = (0.86, 0.86, 0.86)  # a frame whose own samples did not change
GROWTH = (0.84, 0.12, 0.12)  # the most grown frame; less growth is paler
SHRINKAGE = (0.13, 0.33, 0.84)  # the most shrunk frame


def diff_colour(delta: float, scale: float) -> tuple[float, float, float]:
    """The colour of a frame whose own samples changed by ``delta``, the largest change
    being ``scale``: :data:`NEUTRAL` for none, towards :data:`GROWTH` or :data:`SHRINKAGE`."""
    if not scale:
        return NEUTRAL
    end = GROWTH if delta > 0 else SHRINKAGE
    f = min(abs(delta) / scale, 1.0)
    r, g, b = (n + (e - n) * f for n, e in zip(NEUTRAL, end, strict=True))
    return r, g, b


def flamegraph(folded: Any, after: Any = None, ax: Any = None, title: str = "",
               min_width: float = 0.0) -> Any:
    """A static flame graph (root at the bottom) from folded stacks with counts.

    With ``after``, a differential flame graph of ``after`` against ``folded`` (before):
    drawn as ``after``'s, each frame coloured by how its own samples changed
    (:func:`flame_diff`): red where they grew, blue where they shrank, grey where equal,
    paler the smaller the change. Both take any stack counts (folded stacks, a
    stack-count frame such as :func:`ebpf_magic.data.stacks.stack_counts` returns, pairs).
    """
    if after is None:
        rects = flame_rects(folded)
        rng = np.random.default_rng(0)
        colours = [(0.9 + 0.1 * rng.random(), 0.3 + 0.5 * rng.random(), 0.1 * rng.random())
                   for _ in range(len(rects))]
    else:
        rects = flame_diff(folded, after)
        rects = rects[rects["width"] > 0]
        scale = float(rects["delta"].abs().max()) if len(rects) else 0.0
        colours = [diff_colour(d, scale) for d in rects["delta"]]
    total = rects.loc[rects["depth"] == 0, "width"].sum() if len(rects) else 0
    depth = int(rects["depth"].max()) + 1 if len(rects) else 1
    ax = _axes(ax, figsize=(12, max(3.0, 0.3 * depth + 1)))
    for r, colour in zip(rects.itertuples(index=False), colours, strict=True):
        if total and r.width / total < min_width:
            continue
        ax.barh(r.depth, r.width, left=r.start, height=1.0, color=colour, edgecolor="white",
                linewidth=0.5, align="edge")
        if total and r.width / total > 0.02:
            chars = int(r.width / total * 150)
            text = r.frame if len(r.frame) <= chars else r.frame[: max(chars - 2, 1)] + ".."
            ax.text(r.start + r.width / 2, r.depth + 0.5, text, ha="center", va="center",
                    fontsize=7, clip_on=True)
    ax.set_xlim(0, max(total, 1))
    ax.set_ylim(0, depth)
    ax.set_yticks([])
    ax.set_xlabel("samples" if after is None else
                  "samples after (red: own samples grew, blue: shrank)")
    ax.set_title(title)
    return ax


def flamegraph_svg(folded: Any, width: int = 1200, row: int = 16) -> str:
    """An SVG flame graph: hover a frame for its name and sample count."""
    rects = flame_rects(_stacks(folded))
    total = max(int(rects.loc[rects["depth"] == 0, "width"].sum()) if len(rects) else 0, 1)
    depth = int(rects["depth"].max()) + 1 if len(rects) else 1
    height = depth * row
    scale = width / total
    rng = np.random.default_rng(0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="monospace" font-size="11">']
    for r in rects.itertuples(index=False):
        x, w, y = r.start * scale, r.width * scale, height - (r.depth + 1) * row
        fill = (f"rgb({int(230 + 25 * rng.random())},{int(80 + 120 * rng.random())},"
                f"{int(30 * rng.random())})")
        name = escape(r.frame)
        pct = 100.0 * r.width / total
        parts.append(f'<g><title>{name} ({r.width} samples, {pct:.1f}%)</title>'
                     f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{row - 1}" '
                     f'fill="{fill}"/>')
        if w > 30:
            chars = int(w / 7)
            text = name if len(name) <= chars else escape(r.frame[: chars - 2]) + ".."
            parts.append(f'<text x="{x + 2:.2f}" y="{y + row - 4}">{text}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)

