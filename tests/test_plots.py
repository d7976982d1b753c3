"""Plots checked for their data: bar heights, tick labels, rates, heatmap cells, flame widths."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from ebpf_magic.data.histograms import Histogram, from_values
from ebpf_magic.present import plots


def test_log2_hist_bars_and_power_of_two_labels():
    ax = from_values([1, 1, 3, 1500, 1024], name="lat").plot()
    heights = [p.get_height() for p in ax.patches]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["[1]", "[2, 4)", "[4, 8)", "[8, 16)", "[16, 32)", "[32, 64)",
                      "[64, 128)", "[128, 256)", "[256, 512)", "[512, 1K)", "[1K, 2K)"]
    assert heights == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert ax.get_title() == "@lat"


def test_linear_hist_from_a_bucket_frame():
    df = pd.DataFrame({"low": [0, 10, 20], "high": [10, 20, 30], "count": [4, 0, 9]})
    ax = plots.hist(df, kind="linear")
    assert [p.get_height() for p in ax.patches] == [4, 0, 9]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[0, 10)", "[10, 20)", "[20, 30)"]


def test_keyed_hist_draws_a_group_per_section():
    df = pd.DataFrame({"fd": [3, 3, 4], "low": [1, 2, 2], "high": [2, 4, 4],
                       "count": [5, 6, 7]})
    ax = plots.hist(Histogram(df))
    heights = [p.get_height() for p in ax.patches]
    assert heights == [5, 6, 0, 7]  # fd 3: [1], [2,4); fd 4: [1] empty, [2,4)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["3", "4"]


def test_rate_counts_events_per_interval():
    df = pd.DataFrame({"time": np.r_[np.full(10, 0.5), np.full(30, 1.5), np.full(5, 2.5)]})
    rates = plots.rate_frame(df, interval="1s")
    assert rates["events/s"].tolist() == [10, 30, 5]
    ax = plots.rate(df)
    assert list(ax.lines[0].get_ydata()) == [10, 30, 5]
    ns = pd.DataFrame({"ts": (np.arange(4) * 500_000_000 + 10**15).astype(np.int64)})
    assert plots.rate_frame(ns, interval="1s")["events/s"].tolist() == [2, 2]
    # bpf_ktime_get_ns() minutes after boot: still nanoseconds, not seconds
    early = pd.DataFrame({"ts": (np.arange(4) * 500_000_000 + 60 * 10**9).astype(np.int64)})
    assert plots.rate_frame(early, interval="1s")["events/s"].tolist() == [2, 2]


def test_heatmap_from_a_stream_and_from_snapshots():
    df = pd.DataFrame({"time": [0.1, 0.2, 1.1, 1.2, 1.3], "lat": [1, 3, 3, 3, 100]})
    grid = plots.heatmap_frame(df, value="lat")
    assert list(grid.index) == ["[1]", "[2, 4)", "[4, 8)", "[8, 16)", "[16, 32)", "[32, 64)",
                                "[64, 128)"]
    assert grid.iloc[:, 0].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert grid.iloc[:, 1].tolist() == [0, 2, 0, 0, 0, 0, 1]
    snaps = [(0, from_values([1, 1]).df), (1, from_values([1, 5]).df)]
    grid2 = plots.heatmap_frame(snaps)
    assert grid2.loc["[1]"].tolist() == [2, 1] and grid2.loc["[4, 8)"].tolist() == [0, 1]
    running = [(0, from_values([1, 1]).df), (1, from_values([1, 1, 1, 5]).df)]
    grid3 = plots.heatmap_frame(running, per_interval=True)
    assert grid3.loc["[1]"].tolist() == [2, 1] and grid3.loc["[4, 8)"].tolist() == [0, 1]
    totals = plots.heatmap_frame(running)  # running totals shown as they are
    assert totals.loc["[1]"].tolist() == [2, 3] and totals.loc["[4, 8)"].tolist() == [0, 1]
    ax = plots.heatmap(df, value="lat")
    assert ax.collections[0].get_array().reshape(grid.shape).tolist() == grid.values.tolist()


def test_flamegraph_widths_follow_counts():
    folded = pd.DataFrame({"stack": ["main;a;b", "main;a;c", "main;d"], "count": [3, 2, 5]})
    rects = plots.flame_rects(folded).set_index("frame")
    assert rects.loc["main", "width"] == 10 and rects.loc["a", "width"] == 5
    assert rects.loc["c", "start"] == 3 and rects.loc["c", "depth"] == 2
    ax = plots.flamegraph(folded)
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == [2, 3, 5, 5, 10]
    svg = plots.flamegraph_svg(folded)
    assert svg.count("<rect") == 5 and "<title>main (10 samples, 100.0%)</title>" in svg


def shown_xlabels(ax):
    ax.figure.canvas.draw()
    return [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]


def test_histogram_x_labels_never_overlap_however_many_buckets():
    import matplotlib.pyplot as plt

    values = [2 ** i for i in range(40)]
    for figsize in [(8, 4), (4, 3), (2.5, 2)]:
        fig, ax = plt.subplots(figsize=figsize)
        plots.hist(from_values(values), ax=ax)
        fig.tight_layout()
        labels = shown_xlabels(ax)
        boxes = [t.get_window_extent() for t in labels]
        assert len(labels) >= 2 and labels[0].get_text() == "[1]"
        for a, b in zip(boxes[:-1], boxes[1:], strict=True):
            assert a.x1 <= b.x0, (figsize, [t.get_text() for t in labels])
        plt.close(fig)
    ax = plots.hist(from_values([1, 2, 4]))  # few buckets stay horizontal and all labelled
    assert [t.get_text() for t in shown_xlabels(ax)] == ["[1]", "[2, 4)", "[4, 8)"]
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {0}


def test_heatmap_colour_scale_turns_logarithmic_past_two_decades():
    from matplotlib.colors import LogNorm

    crowded = pd.DataFrame({"time": [0.1] * 2834 + [1.5] * 3, "lat": [3] * 2834 + [200] * 3})
    mesh = plots.heatmap(crowded, value="lat").collections[0]
    assert isinstance(mesh.norm, LogNorm)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (3, 2834)
    grid = plots.heatmap_frame(crowded, value="lat")
    assert mesh.get_array().filled(0).reshape(grid.shape).tolist() == grid.values.tolist()
    even = pd.DataFrame({"time": [0.1] * 99 + [1.5], "lat": [3] * 99 + [200]})
    assert not isinstance(plots.heatmap(even, value="lat").collections[0].norm, LogNorm)


def test_time_axes_never_repeat_a_tick_label():
    start = pd.Timestamp("2026-11-25 03:31:05")
    half_seconds = pd.DataFrame({"time": [start + pd.Timedelta(seconds=0.5 * i)
                                          for i in range(8)], "lat": [3] * 8})
    ax = plots.heatmap(half_seconds, value="lat", interval="500ms")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["03:31:05.0", "03:31:05.5", "03:31:06.0", "03:31:06.5", "03:31:07.0",
                      "03:31:07.5", "03:31:08.0", "03:31:08.5"]
    whole = pd.DataFrame({"time": [start + pd.Timedelta(seconds=i) for i in range(3)],
                          "lat": [3] * 3})
    ax = plots.heatmap(whole, value="lat")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["03:31:05", "03:31:06", "03:31:07"]
    series = pd.Series([760, 1650], index=[start + pd.Timedelta(seconds=0.3),
                                           start + pd.Timedelta(seconds=1.5)])
    ax = plots.time_axis(series.plot())
    texts = [t.get_text() for t in shown_xlabels(ax)]
    assert len(texts) >= 2 and len(set(texts)) == len(texts), texts
    rate = plots.rate(pd.DataFrame({"time": [start + pd.Timedelta(seconds=0.1 * i)
                                             for i in range(30)]}), interval="500ms")
    texts = [t.get_text() for t in shown_xlabels(rate)]
    assert len(texts) >= 2 and len(set(texts)) == len(texts), texts
