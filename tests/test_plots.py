"""Plots checked for their data: bar heights, tick labels, rates, heatmap cells, flame widths."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ebpf_magic import plots  # noqa: E402
from ebpf_magic.histograms import Histogram, from_values  # noqa: E402


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
    grid3 = plots.heatmap_frame(running, cumulative=True)
    assert grid3.loc["[1]"].tolist() == [2, 1] and grid3.loc["[4, 8)"].tolist() == [0, 1]
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
