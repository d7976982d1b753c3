"""The map browser's model driven from Python against a live kernel map."""

from __future__ import annotations

import os
import re
import time

import pandas as pd
import pytest

from ebpf_magic.present import widgets
from ebpf_magic.present.widgets import BrowserModel, MapBrowser
from ebpf_magic.program import Program

from conftest import COUNT_CELL

SRC = r"""
BPF_HASH(counts, u32, u64);
BPF_HISTOGRAM(sizes);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    counts.increment(pid);
    u32 other = 7;
    u64 *o = counts.lookup(&other);
    if (!o) { u64 v = 100; counts.update(&other, &v); }
    sizes.increment(bpf_log2l(3));
    return 0;
}
"""


def wait_for(cond, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.kernel
def test_model_select_sort_filter_edit_delete_reach_the_kernel(no_leaks):
    with Program(SRC, defines={"PID": os.getpid()}) as prog:
        for _ in range(3):
            os.getppid()
        model = BrowserModel(prog)
        listing = model.listing().set_index("map")
        assert listing.loc["counts", "entries"] == 2 and listing.loc["sizes", "kind"] == \
            "histogram"
        view = model.select("counts")
        assert sorted(view["key"]) == [7, os.getpid()]
        assert model.sort("value", ascending=False)["key"].tolist() == [7, os.getpid()]
        assert model.sort("value", ascending=True)["key"].tolist() == [os.getpid(), 7]
        assert model.filter(str(os.getpid()))["key"].tolist() == [os.getpid()]
        model.filter("")
        assert len(model.top(1)) == 1
        model.top(0)
        row = model.view.index[model.view["key"] == 7][0]
        model.edit(row, "value", 555)
        assert prog.maps["counts"][7] == 555
        row = model.view.index[model.view["key"] == 7][0]
        model.delete(row)
        assert 7 not in prog.maps["counts"]
        assert model.data["key"].tolist() == [os.getpid()]
        model.select("sizes")
        assert model.histogram is not None and not model.editable
        assert model.histogram.df[["low", "high", "count"]].values.tolist() == [[2, 4, 3]]


@pytest.mark.kernel
def test_live_refresh_follows_the_map_and_stops_on_close_and_on_program_stop():
    with Program(SRC, defines={"PID": os.getpid()}) as prog:
        model = BrowserModel(prog, interval=0.05)
        model.select("counts")
        model.start()
        os.getppid()
        assert wait_for(lambda: os.getpid() in model.data["key"].tolist())
        model.pause()
        time.sleep(0.1)
        paused_at = model.refreshes
        time.sleep(0.2)
        assert model.refreshes == paused_at
        model.resume()
        assert wait_for(lambda: model.refreshes > paused_at)
        model.close()
        assert not model.live
        n = model.refreshes
        time.sleep(0.2)
        assert model.refreshes == n
        other = BrowserModel(prog, interval=0.05)
        other.start()
        assert other.live
    assert wait_for(lambda: not other.live)  # the program stopped: the thread ended


@pytest.mark.kernel
def test_widget_renders_table_and_chart_and_closes(no_leaks):
    with Program(SRC, defines={"PID": os.getpid()}) as prog:
        os.getppid()
        browser = prog.browse(interval=0.05)
        try:
            assert f">{os.getpid()}</td>" in browser.table.value
            assert "counts" in browser.listing.value
            browser.chooser.value = "sizes"
            assert browser.chart.layout.display is None
            assert browser.chart.value[:4] == b"\x89PNG"
            assert browser.editor.layout.display == "none"
        finally:
            browser.close()
        assert not browser.model.live


class Recorded:
    """A recording's map: read-only, what the browser reads of a MapView."""

    name, kind, declared, writable = "lat", "hash", "", False
    value_columns = ["value"]

    def __init__(self, df: pd.DataFrame | None = None) -> None:
        self.frame = pd.DataFrame({"key": [1, 2], "value": [10, 20]}) if df is None else df

    def info(self):
        return {"map": "lat", "kind": "hash", "key": "u32", "value": "u64",
                "entries": len(self.frame), "max_entries": 10, "full": False}

    @property
    def df(self):
        return self.frame


RIGHT = "text-align:right"


def test_model_works_on_duck_typed_read_only_maps():
    model = BrowserModel({"lat": Recorded()})
    assert model.select("lat")["value"].tolist() == [20, 10]
    assert model.sort("value", ascending=True)["key"].tolist() == [1, 2]
    assert not model.editable
    with pytest.raises(TypeError):
        model.delete(0)
    browser = MapBrowser({"lat": Recorded()}, start=False)
    assert f'<td style="{RIGHT};font-variant-numeric:tabular-nums">20</td>' in browser.table.value
    browser.close()


def test_numeric_values_sort_largest_first_so_top_n_is_the_top():
    df = pd.DataFrame({"key": [5, 6, 7, 8], "value": [3, 40_000, 7, 1_200_000]})
    model = BrowserModel({"lat": Recorded(df)}, top_n=2)
    assert model.refresh()["key"].tolist() == [8, 6]
    assert model.sorting == ("value", False)
    model.top(0)
    assert model.sort("key", ascending=True)["key"].tolist() == [5, 6, 7, 8]
    model.select("lat")  # choosing the map again restores the default order
    assert model.view["value"].tolist() == [1_200_000, 40_000, 7, 3]
    text = pd.DataFrame({"key": [1, 2], "value": ["b", "a"]})
    assert BrowserModel({"lat": Recorded(text)}).refresh()["key"].tolist() == [1, 2]


def test_table_scrolls_in_a_bounded_box_with_numbers_right_aligned_and_separated():
    df = pd.DataFrame({"key": [123456, 7], "comm": ["bash", "<x>"],
                       "value": [1_234_567, 89]})
    browser = MapBrowser({"lat": Recorded(df)}, start=False)
    html = browser.table.value
    browser.close()
    assert html.startswith('<div class="bpf-scroll" style="max-height:24em;overflow:auto">')
    cells = re.findall(r"<td( style=\"[^\"]*\")?>([^<]*)</td>", html)
    assert [text for _, text in cells] == ["123456", "bash", "1,234,567",
                                           "7", "&lt;x&gt;", "89"]
    assert [RIGHT in style for style, _ in cells] == [True, False, True] * 2
    assert "sorted by value descending" in browser.status.value


class Editable(Recorded):
    """A writable map keyed by (pid, comm): what the browser's editor changes."""

    writable = True

    def __init__(self) -> None:
        super().__init__(pd.DataFrame({"pid": [7, 8, 9], "comm": ["bash", "zsh", "awk"],
                                       "value": [10, 30, 20]}))

    def row_key(self, row):
        return row["pid"], row["comm"]

    def set_cell(self, key, column, value):
        hit = (self.frame["pid"] == key[0]) & (self.frame["comm"] == key[1])
        self.frame.loc[hit, column] = value

    def __delitem__(self, key):
        self.frame = self.frame[(self.frame["pid"] != key[0]) |
                                (self.frame["comm"] != key[1])].reset_index(drop=True)


def test_text_sorts_a_to_z_and_numbers_largest_first_by_default():
    model = BrowserModel({"lat": Editable()})
    assert model.refresh()["value"].tolist() == [30, 20, 10] and model.sorting == ("value", False)
    assert model.sort("comm")["comm"].tolist() == ["awk", "bash", "zsh"]
    assert model.sorting == ("comm", True)
    assert model.sort("pid")["pid"].tolist() == [9, 8, 7]
    assert model.sort("comm", ascending=False)["comm"].tolist() == ["zsh", "bash", "awk"]
    assert model.sort(None)["value"].tolist() == [30, 20, 10]


def header_cells(html: str) -> list[tuple[str, str]]:
    """(data-column, text) of each header cell of a rendered table."""
    return [(column, re.sub("<[^>]+>", "", text)) for column, text in
            re.findall(r'<th [^>]*data-column="([^"]*)"[^>]*>(.*?)</th>', html)]


def test_table_has_no_index_column_and_its_headers_and_lists_show_the_sort():
    browser = MapBrowser({"lat": Editable()}, start=False)
    try:
        html = browser.table.value
        assert header_cells(html) == [("pid", "pid"), ("comm", "comm"), ("value", "value \u25bc")]
        assert html.count("<th ") == 3 and "<th" not in html.split("<tbody>")[1]  # no index
        assert 'aria-sort="descending"' in html and html.count("aria-sort") == 1
        assert 'data-key="pid=8, comm=zsh"' in html
        assert (browser.sort.value, browser.descending.value) == ("value", True)
        assert "sorted by value descending" in browser.status.value

        browser.sort.value = "comm"  # as a click on the comm header does
        assert browser.model.view["comm"].tolist() == ["awk", "bash", "zsh"]
        assert (browser.sort.value, browser.descending.value) == ("comm", False)
        assert header_cells(browser.table.value)[1] == ("comm", "comm \u25b2")
        assert "sorted by comm ascending" in browser.status.value
        browser.descending.value = True  # a second click on the same header
        assert browser.model.view["comm"].tolist() == ["zsh", "bash", "awk"]
        assert header_cells(browser.table.value)[1] == ("comm", "comm \u25bc")
        browser.sort.value = "(as read)"
        assert browser.model.sorting == ("value", False) and browser.sort.value == "value"
    finally:
        browser.close()


def test_editor_takes_the_key_a_row_click_gives():
    m = Editable()
    browser = MapBrowser({"lat": m}, start=False)
    try:
        browser.row.value = "pid=8, comm=zsh"  # what clicking that row writes there
        browser.column.value, browser.value.value = "value", "31"
        browser.set_button.click()
        assert m.frame.loc[m.frame["comm"] == "zsh", "value"].tolist() == [31]
        browser.delete_button.click()
        assert m.frame["comm"].tolist() == ["bash", "awk"]
        browser.row.value = "pid=1, comm=nobody"
        browser.delete_button.click()
        assert "no row with key &#x27;pid=1, comm=nobody&#x27;" in browser.status.value
    finally:
        browser.close()


def test_names_and_keys_a_recording_chooses_stay_text_in_the_clickable_table():
    """A column name or key from a replayed recording cannot add markup or script: the
    only handlers are the browser's own, and they read the escaped data- attributes."""
    from html.parser import HTMLParser

    evil = '"><img src=x onerror=alert(1)>'
    m = Editable()
    m.frame = pd.DataFrame({"pid": [1], evil: [evil], "value": [2]})
    m.row_key = lambda row: row["pid"]
    browser = MapBrowser({"lat": m}, start=False)
    html = browser.table.value
    browser.close()

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[tuple[str, dict]] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    parsed = Tags()
    parsed.feed(html)
    assert "img" not in [t for t, _ in parsed.tags]
    handlers = {v for _, attrs in parsed.tags for k, v in attrs.items() if k.startswith("on")}
    assert handlers == {widgets.SORT_ON_CLICK, widgets.CHOOSE_ON_CLICK}
    assert [a["data-column"] for t, a in parsed.tags if t == "th"] == ["pid", evil, "value"]
    assert [a["data-key"] for t, a in parsed.tags if t == "tr" and "data-key" in a] == \
        [f"pid=1, {evil}={evil}"]


@pytest.mark.kernel
def test_bpf_browse_magic_one_program_and_all_programs(no_leaks):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ebpf_magic")
    try:
        for name in ("one", "two"):
            assert shell.run_cell(COUNT_CELL.format(name=name, pid=os.getpid())).success
        os.getppid()
        browser = shell.run_line_magic("bpf", "browse one --every 0.1")
        assert list(browser.model.maps()) == ["calls"] and browser.model.interval == 0.1
        assert browser.model.data.to_dict("records") == [{"key": os.getpid(), "value": 1}]
        browser.close()
        every = shell.run_line_magic("bpf", "browse two/calls")
        assert every.model.selected == "calls"
        every.close()
        every = shell.run_line_magic("bpf", "browse")
        assert list(every.model.maps()) == ["one/calls", "two/calls"]
        every.close()
        shell.run_line_magic("bpf", "stop --all")
    finally:
        shell.run_line_magic("unload_ext", "ebpf_magic")
        InteractiveShell.clear_instance()


@pytest.mark.kernel
def test_browser_over_all_programs_follows_programs_starting_and_stopping(no_leaks):
    from ebpf_magic.present.widgets import browse

    with Program(SRC, name="first", defines={"PID": os.getpid()}):
        browser = browse(interval=0.05)
        try:
            names = list(browser.model.maps())
            assert "first/counts" in names and "first/sizes" in names
            with Program(SRC, name="second", defines={"PID": os.getpid()}):
                assert wait_for(lambda: "second/counts" in browser.chooser.options)
            assert wait_for(lambda: "second/counts" not in browser.chooser.options)
            assert "first/counts" in browser.chooser.options
        finally:
            browser.close()
