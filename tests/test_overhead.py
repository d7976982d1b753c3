"""What programs cost: the kernel's run counts and run times, per function, in every view.

A uprobe on libc's ``getsid`` limited to this process fires only for the calls the test
makes (nothing else here calls it), so its run count is known exactly; the program also
counts its runs per thread in a map, which must agree.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from test_recording import FakeProgram, _with_manifest, manifest_of

import ebpf_magic
from ebpf_magic import backend, features, sessions
from ebpf_magic.data import overhead
from ebpf_magic.errors import ReplayError
from ebpf_magic.kernel import runstats, sysbpf
from ebpf_magic.present.top import Top, TopModel, header_html, sparkline
from ebpf_magic.program import Program

from conftest import bpftool_json

N = 4321
COUNT_BCC = """
BPF_HASH(calls, u32, u64);
int count(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}
"""
COUNT_LIBBPF = """
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, u32);
    __type(value, u64);
} calls SEC(".maps");

SEC("uprobe")
int count(void *ctx)
{
    u32 tid = bpf_get_current_pid_tgid();
    u64 one = 1, *n = bpf_map_lookup_elem(&calls, &tid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&calls, &tid, &one, BPF_NOEXIST);
    return 0;
}
"""
ON_GETSID = "int on_getsid(void *ctx) { return 0; }\n"
ON_GETPGID = "int on_getpgid(void *ctx) { return 0; }\n"
TWO_BCC = ON_GETSID + ON_GETPGID
OFF = runstats.Status(False, "off", "off: kernel.bpf_stats_enabled = 0 and no process holds "
                      "a BPF_ENABLE_STATS descriptor", hint=runstats.HOW_TO_ENABLE)


def needs(name: str) -> None:
    ok, why = backend.get(name).available()
    if not ok:
        pytest.skip(f"{name} backend unavailable: {why}")


def getsid_probe(function: str = "count") -> str:
    return f"uprobe:c:getsid={function}"


def bpftool_runs(prog_id: int) -> int:
    """The kernel's run count of ``prog_id`` as bpftool shows it (0 where it shows none)."""
    [prog] = [p for p in bpftool_json("prog", "show") if p["id"] == prog_id]
    return prog.get("run_cnt", 0)


@pytest.mark.kernel
@pytest.mark.parametrize("which", ["bcc", "libbpf"])
def test_a_program_run_n_times_shows_n_runs(which: str, no_leaks) -> None:
    needs(which)
    me, tid = os.getpid(), threading.get_native_id()
    source = COUNT_BCC if which == "bcc" else COUNT_LIBBPF
    with Program(source, name="counted", backend=which, attach=[getsid_probe()], pid=me) as prog:
        for _ in range(N):
            os.getsid(0)
        per_thread = {int(k): int(v) for k, v in prog.maps["calls"].items()}
        df = prog.overhead
        [prog_id] = prog.prog_ids()
        assert bpftool_runs(prog_id) == N  # the kernel's own listing agrees
    assert per_thread == {tid: N}
    assert list(df.columns) == overhead.COLUMNS
    [row] = df.to_dict("records")
    assert (row["function"], row["probes"], row["prog_id"], row["runs"]) == \
        ("count", "uprobe:c:getsid", prog_id, N)
    assert row["run_time_ns"] > 0
    assert row["ns_per_run"] == pytest.approx(row["run_time_ns"] / N)
    assert row["runs_per_s"] == pytest.approx(N / row["seconds"])
    assert row["cpu_pct"] == pytest.approx(row["run_time_ns"] / (row["seconds"] * 1e9) * 100)
    # stopped, it keeps what it cost: the same runs, over the window it ran
    after = prog.overhead.to_dict("records")[0]
    assert after["runs"] == N and after["run_time_ns"] == row["run_time_ns"]
    assert after["seconds"] >= row["seconds"]


@pytest.mark.kernel
def test_each_function_is_a_row_and_one_never_run_has_no_time_per_run(no_leaks) -> None:
    me = os.getpid()
    with Program(TWO_BCC, name="two", pid=me, attach=[getsid_probe("on_getsid"),
                                                       "uprobe:c:getpgid=on_getpgid"]) as prog:
        for _ in range(100):
            os.getsid(0)
        df = prog.overhead.set_index("function")
        ids = prog.function_ids()
    assert df.loc["on_getsid", "runs"] == 100 and df.loc["on_getpgid", "runs"] == 0
    assert df.loc["on_getpgid", "probes"] == "uprobe:c:getpgid"
    assert math.isnan(df.loc["on_getpgid", "ns_per_run"])  # never ran: no time per run, not 0
    assert df.loc["on_getpgid", "cpu_pct"] == 0
    assert dict(df["prog_id"]) == ids
    total = overhead.totals(df)
    assert total["ns_per_run"] == pytest.approx(df["run_time_ns"].sum() / 100)
    assert total["cpu_pct"] == pytest.approx(df["cpu_pct"].sum())


@pytest.mark.kernel
def test_this_process_holds_one_descriptor_and_the_status_says_who_counts(no_leaks) -> None:
    if not runstats.may_enable():
        pytest.skip("taking a statistics descriptor needs CAP_SYS_ADMIN")
    runstats.acquire()
    fd = runstats.held()
    assert fd is not None and os.readlink(f"/proc/self/fd/{fd}") == runstats.STATS_LINK
    assert not os.get_inheritable(fd)  # processes started from here do not keep it
    assert runstats.status().source == "descriptor"
    runstats.acquire()
    assert runstats.held() == fd  # one descriptor, not one per call
    assert runstats.release()
    try:
        assert not os.path.exists(f"/proc/self/fd/{fd}") or \
            os.readlink(f"/proc/self/fd/{fd}") != runstats.STATS_LINK
        others = [p for p in runstats.holders() if p != os.getpid()]
        status = runstats.status()
        # what the status says is what the kernel does: a program run once counts once or not
        probe = sysbpf.load_return_zero()
        try:
            sysbpf.test_run(probe)
            counted = runstats.of_fd(probe).run_cnt == 1
        finally:
            os.close(probe)
        assert status.counting == counted
        if runstats.sysctl_enabled():
            assert status.source == "sysctl"
        elif others:
            assert status.source == "elsewhere", others
        else:
            assert (status.source, status.counting) == ("off", False)
            assert "sysctl kernel.bpf_stats_enabled=1" in status.hint
            assert "launcher" in status.hint
    finally:
        runstats.acquire()
    assert runstats.status().source == "descriptor"


@pytest.mark.kernel
def test_the_setting_turns_statistics_off_and_on(no_leaks) -> None:
    if not runstats.may_enable():
        pytest.skip("taking a statistics descriptor needs CAP_SYS_ADMIN")
    try:
        assert runstats.disable() in (True, False)
        assert runstats.held() is None
        runstats.acquire()
        assert runstats.held() is None  # turned off: not taken again
        status = runstats.status()
        if not status.counting:
            assert status.source == "disabled" and "%bpf stats on" in status.hint
    finally:
        assert runstats.enable().source == "descriptor"
    assert runstats.held() is not None


@pytest.mark.kernel
def test_without_statistics_every_view_says_how_to_enable_them(shell, monkeypatch,
                                                                no_leaks) -> None:
    monkeypatch.setattr(runstats, "status", lambda: OFF)
    shell.run_cell_magic("bpf", f"quiet -q -p {os.getpid()} -a {getsid_probe()}", COUNT_BCC)
    for _ in range(10):
        os.getsid(0)
    df = shell.user_ns["quiet"].overhead
    assert df[["function", "probes"]].values.tolist() == [["count", "uprobe:c:getsid"]]
    assert df[overhead.COLUMNS[3:]].isna().all(axis=None)  # missing, never zeros
    assert "quiet: BPF run statistics are off" in df.unmeasured
    assert "sysctl kernel.bpf_stats_enabled=1" in df.unmeasured
    assert repr(df).startswith("not measured: quiet: BPF run statistics are off")
    assert "not measured:" in df._repr_html_() and "bpf_stats_enabled=1" in df._repr_html_()
    table = shell.run_line_magic("bpf", "list")
    assert table[list(overhead.TOTALS)].isna().all(axis=None)  # no zeros that look measured
    assert "sysctl kernel.bpf_stats_enabled=1" in table.attrs["overhead"]
    model = TopModel("process")
    model.refresh()
    for _ in range(10):
        os.getsid(0)
    view = model.refresh()
    [mine] = shell.user_ns["quiet"].prog_ids()
    row = view.set_index("prog_id").loc[mine]
    assert math.isnan(row["cpu_pct"]) and math.isnan(row["runs_per_s"]) and row["runs"] is pd.NA
    assert "No run statistics" in header_html(model) and "bpf_stats_enabled" in \
        header_html(model)
    shell.run_line_magic("bpf", "stop quiet")


def test_derived_rates_and_hosts_summed() -> None:
    rows = [{"function": "f", "probes": "t:a:b", "prog_id": 7, "runs": 1000,
             "run_time_ns": 50_000, "seconds": 2.0},
            {"function": "g", "probes": "t:a:c", "prog_id": 8, "runs": 0, "run_time_ns": 0,
             "seconds": 2.0}]
    df = overhead.frame(rows)
    assert df["runs_per_s"].tolist() == [500.0, 0.0]
    assert df["ns_per_run"].iloc[0] == 50.0 and math.isnan(df["ns_per_run"].iloc[1])
    assert df["cpu_pct"].tolist() == [50_000 / 2e9 * 100, 0.0]
    other = overhead.frame([{**rows[0], "prog_id": 3, "runs": 3000, "run_time_ns": 30_000,
                             "seconds": 1.0}])
    summed = overhead.sum_hosts({0: df, 1: other}).set_index("function")
    assert list(summed.reset_index().columns) == overhead.SUMMED_COLUMNS
    f = summed.loc["f"]
    assert (f["hosts"], f["runs"], f["run_time_ns"], f["seconds"]) == (2, 4000, 80_000, 2.0)
    assert f["runs_per_s"] == 500 + 3000 and f["ns_per_run"] == 20.0
    assert f["cpu_pct"] == pytest.approx(50_000 / 2e9 * 100 + 30_000 / 1e9 * 100)
    assert summed.loc["g", "hosts"] == 1 and math.isnan(summed.loc["g", "ns_per_run"])


def test_rates_between_readings_and_sparklines() -> None:
    rates = overhead.Rates(keep=3)
    s = lambda runs, ns: runstats.RunStats(1, "p", "kprobe", runs, ns)  # noqa: E731
    assert math.isnan(rates.add({1: s(0, 0)}, at=10.0)[1]["cpu_pct"])  # first: no rate yet
    r = rates.add({1: s(100, 10_000_000)}, at=11.0)[1]
    assert (r["runs_per_s"], r["ns_per_run"], r["cpu_pct"]) == (100.0, 100_000.0, 1.0)
    for t in (12.0, 13.0, 14.0):
        rates.add({1: s(100, 10_000_000)}, at=t)
    assert rates.series(1) == [0.0, 0.0, 0.0]  # keeps the last 3
    rates.add({}, at=15.0)
    assert rates.series(1) == []  # unloaded: forgotten
    assert sparkline([]) == "" and "<polyline" in sparkline([0.0, 2.0, 1.0])
    assert sparkline([math.nan, 1.0]) == ""


@pytest.mark.kernel
@pytest.mark.parametrize("scope", ["process", "machine"])
def test_top_lists_the_busier_program_first(scope: str, no_leaks) -> None:
    if scope == "machine" and not runstats.may_enable():
        pytest.skip("listing every program needs CAP_SYS_ADMIN")
    me = os.getpid()
    libc = ctypes.CDLL(None)
    with Program(ON_GETSID, name="busy", pid=me, attach=[getsid_probe("on_getsid")]) as busy, \
            Program(ON_GETPGID, name="idle", pid=me,
                    attach=["uprobe:c:getpgid=on_getpgid"]) as idle:
        model = TopModel(scope)
        model.refresh()
        for _ in range(20_000):
            os.getsid(0)
        for _ in range(200):
            libc.getpgid(0)
        view = model.refresh()
        [busy_id], [idle_id] = busy.prog_ids(), idle.prog_ids()
    ours = view[view["prog_id"].isin([busy_id, idle_id])]
    assert ours["prog_id"].tolist() == [busy_id, idle_id]
    assert ours["program"].tolist() == ["busy", "idle"]
    assert ours["function"].tolist() == ["on_getsid", "on_getpgid"]
    assert ours["runs"].tolist() == [20_000, 200]
    assert ours["cpu_pct"].iloc[0] > ours["cpu_pct"].iloc[1] > 0
    assert view["cpu_pct"].is_monotonic_decreasing or view["cpu_pct"].isna().any()
    assert len(model.series(busy_id)) == 1
    if scope == "machine":
        assert f"[{me}]" in ours["owner"].iloc[0]


@pytest.mark.kernel
def test_top_thread_is_owned_and_released(shell, no_leaks) -> None:
    def threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "ebpf_magic-top"]

    top = shell.run_line_magic("bpf", "top --mine --every 0.05")
    assert isinstance(top, Top) and top.model.live and threads() == ["ebpf_magic-top"]
    before = top.model.refreshes
    time.sleep(0.3)
    assert top.model.refreshes > before  # it refreshes by itself
    again = shell.run_line_magic("bpf", "top --every 0.05")  # the cell run again: replaced
    assert not top.model.live and again.model.live and threads() == ["ebpf_magic-top"]
    again.stop()
    assert not again.model.live and threads() == []
    third = shell.run_line_magic("bpf", "top --mine")
    shell.run_line_magic("unload_ext", "ebpf_magic")
    shell.run_line_magic("load_ext", "ebpf_magic")
    assert not third.model.live and threads() == []  # the extension's unload stops it
    third.widget.close()


@pytest.mark.kernel
def test_a_costly_cell_says_so_in_its_report_after_a_delay(shell, no_leaks) -> None:
    if not runstats.status().counting:
        runstats.acquire()
    if not runstats.status().counting:
        pytest.skip("the kernel does not count run statistics here")
    captured = CapturingDisplayPublisher()
    shell.display_pub, original = captured, shell.display_pub
    try:
        shell.run_line_magic("config", "BPFMagics.cost_after = 0.5")
        shell.run_line_magic("config", "BPFMagics.costly_cpu_pct = 0.0")
        shell.run_cell_magic("bpf", f"costly -q -p {os.getpid()} -a {getsid_probe()}",
                             COUNT_BCC)
        magics = shell._ebpf_magics
        note = magics.cost_notes["costly"]
        [placeholder] = [o for o in captured.outputs if o["transient"]]
        display_id = placeholder["transient"]["display_id"]
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            os.getsid(0)
        note._timer.join(timeout=10)
        updates = [o for o in captured.outputs if o["update"]]
        assert [u["transient"]["display_id"] for u in updates] == [display_id]
        text = updates[0]["data"]["text/plain"]
        assert text.startswith("cost: costly costs ") and "% of a CPU" in text
        assert "runs/s" in text and "costly.overhead" in text
        # a cheap program (below the threshold) shows nothing; re-running cancels the old note
        shell.run_line_magic("config", "BPFMagics.costly_cpu_pct = 100.0")
        shell.run_cell_magic("bpf", f"costly -q -p {os.getpid()} -a {getsid_probe()}",
                             COUNT_BCC)
        second = magics.cost_notes["costly"]
        second._timer.join(timeout=10)
        assert second.shown == "" and len([o for o in captured.outputs if o["update"]]) == 1
        shell.run_line_magic("config", "BPFMagics.cost_after = 30")
        shell.run_cell_magic("bpf", f"costly -q -p {os.getpid()} -a {getsid_probe()}",
                             COUNT_BCC)
        waiting = magics.cost_notes["costly"]
        shell.run_line_magic("bpf", "stop costly")
        assert not waiting._timer.is_alive() and "costly" not in magics.cost_notes
    finally:
        shell.display_pub = original
    # a terminal cannot update a line in place: it gets no note (nothing printed later)
    shell.run_cell_magic("bpf", f"costly -q -p {os.getpid()} -a {getsid_probe()}", COUNT_BCC)
    assert "costly" not in shell._ebpf_magics.cost_notes
    shell.run_line_magic("bpf", "stop costly")


def test_recordings_keep_the_overhead_and_older_ones_have_none(tmp_path: Path) -> None:
    prog = FakeProgram({}, {})
    path = sessions.save(prog, tmp_path / "fake.bpfrec")
    back = ebpf_magic.load(path)
    pd.testing.assert_frame_equal(back.overhead, prog.overhead, check_exact=True)
    assert manifest_of(path)["overhead"]["rows"][1]["ns_per_run"] is None  # NaN, not 0
    again = ebpf_magic.load(back.save(tmp_path / "again.bpfrec"))
    pd.testing.assert_frame_equal(again.overhead, prog.overhead, check_exact=True)

    old = _with_manifest(path, tmp_path / "old.bpfrec", lambda m: m.pop("overhead"))
    none = ebpf_magic.load(old).overhead
    assert none.empty and list(none.columns) == overhead.COLUMNS
    assert "written before recordings kept what programs cost" in none.unmeasured
    off = _with_manifest(path, tmp_path / "off.bpfrec", lambda m: m.update(
        overhead={"unavailable": "fake: BPF run statistics are off"}))
    replayed = ebpf_magic.load(off)
    assert replayed.overhead.empty
    assert replayed.overhead.unmeasured == ("not measured where it was recorded: fake: BPF "
                                            "run statistics are off")
    # saved again, it still says why it has none
    again_off = ebpf_magic.load(replayed.save(tmp_path / "off2.bpfrec"))
    assert again_off.overhead.unmeasured.endswith("fake: BPF run statistics are off")

    summed = overhead.sum_hosts({0: prog.overhead, 1: prog.overhead})
    cluster = _with_manifest(path, tmp_path / "cluster.bpfrec", lambda m: m.update(
        overhead={"rows": json.loads(summed.to_json(orient="records"))}))
    pd.testing.assert_frame_equal(ebpf_magic.load(cluster).overhead, summed, check_exact=True)


_ROW = {"function": "f", "probes": "p", "prog_id": 1, "runs": 1, "run_time_ns": 1,
        "seconds": 1.0, "runs_per_s": 1.0, "ns_per_run": 1.0, "cpu_pct": 0.0}


@pytest.mark.parametrize("recorded, message", [
    ([_ROW], r"manifest.overhead has the wrong type \(list\)"),
    ({"rows": [_ROW], "extra": 1}, r"overhead is not an object of rows"),
    ({"unavailable": 3}, r"overhead.unavailable has the wrong type \(int\)"),
    ({"unavailable": "x" * 5000}, r"overhead.unavailable is longer than 4096"),
    ({"rows": [{**_ROW, "extra": 1}]}, r"overhead.rows\[0\] is not an object of exactly"),
    ({"rows": [{**_ROW, "hosts": 2}]}, r"overhead.rows\[0\] is not an object of exactly"),
    ({"rows": [_ROW, {**{k: v for k, v in _ROW.items() if k != "prog_id"}, "hosts": 2}]},
     r"overhead.rows\[1\] is not an object of exactly .* as the rows before it"),
    ({"rows": [{**_ROW, "runs": -1}]}, r"overhead.rows\[0\].runs is negative"),
    ({"rows": [{**_ROW, "runs": 2**64}]}, r"overhead.rows\[0\].runs is wider than 63 bits"),
    ({"rows": [{**_ROW, "runs": 1.5}]}, r"overhead.rows\[0\].runs has the wrong type"),
    ({"rows": [{**_ROW, "runs": True}]}, r"overhead.rows\[0\].runs has the wrong type \(bool\)"),
    ({"rows": [{**_ROW, "cpu_pct": "1"}]}, r"overhead.rows\[0\].cpu_pct has the wrong type"),
    ({"rows": [{**_ROW, "cpu_pct": 1e999}]}, r"overhead.rows\[0\].cpu_pct is infinite"),
    ({"rows": [{**_ROW, "function": "f" * 5000}]}, r"overhead.rows\[0\].function is longer"),
    ({"rows": [_ROW] * 5000}, r"overhead lists 5,000 functions"),
])
def test_malformed_overhead_is_a_replay_error(tmp_path: Path, recorded, message) -> None:
    good = sessions.save(FakeProgram({}, {}), tmp_path / "good.bpfrec")
    bad = _with_manifest(good, tmp_path / "bad.bpfrec", lambda m: m.update(overhead=recorded))
    with pytest.raises(ReplayError, match=f"malformed recording: {message}"):
        ebpf_magic.load(bad)


def test_the_launcher_passes_a_statistics_descriptor_and_nothing_else() -> None:
    from ebpf_magic.setup import launcher

    env = {"HOME": "/root", runstats.FD_ENV: "0"}  # a number from outside is never passed
    off = launcher.pass_stats({**env, runstats.SETTING_ENV: "off"})
    assert off == {"HOME": "/root", runstats.SETTING_ENV: "off"}
    passed = launcher.pass_stats(env)
    if not runstats.may_enable():
        assert passed == {"HOME": "/root"}
        return
    fd = int(passed.pop(runstats.FD_ENV))
    try:
        assert passed == {"HOME": "/root"}
        assert os.readlink(f"/proc/self/fd/{fd}") == runstats.STATS_LINK
        assert os.get_inheritable(fd)  # it crosses exec into the kernel
        # the kernel side holds it and stops it crossing further
        code = (f"import os; from ebpf_magic.kernel import runstats; runstats.acquire(take=False);"
                f"fd = runstats.held(); print(fd, os.get_inheritable(fd), "
                f"os.environ.get({runstats.FD_ENV!r}), runstats.status().detail)")
        out = subprocess.run([sys.executable, "-c", code],
                             env={**os.environ, runstats.FD_ENV: str(fd)}, pass_fds=[fd],
                             capture_output=True, text=True, check=True).stdout.split(" ", 3)
        assert out[:3] == [str(fd), "False", "None"]
        assert "passed on by the launcher" in out[3]
    finally:
        os.close(fd)



@pytest.mark.kernel
def test_the_cost_note_updates_its_own_cell_in_a_notebook_kernel() -> None:
    """Through a real kernel: the note is an update of the display the %%bpf cell made
    (front ends route it there by its id), never text printed into the cell running then."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    seen: list[tuple[str, str, dict]] = []

    def run(label: str, code: str) -> None:
        reply = client.execute_interactive(
            code, timeout=120,
            output_hook=lambda m: seen.append((label, m["header"]["msg_type"], m["content"])))
        assert reply["content"]["status"] == "ok", reply

    try:
        run("setup", "%load_ext ebpf_magic\n%config BPFMagics.cost_after = 0.5\n"
                     "%config BPFMagics.costly_cpu_pct = 0.0")
        run("pid", "import os\npid = os.getpid()")
        run("cell", f"%%bpf sids -q -p $pid -a {getsid_probe()}\n{COUNT_BCC}")
        run("later", "import time\nfor _ in range(20000):\n    os.getsid(0)\ntime.sleep(1.5)\n"
                     "print('later')")
        run("stop", "%bpf stop sids")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    [(_, _, placeholder)] = [s for s in seen if s[1] == "display_data" and s[0] == "cell"]
    updates = [s for s in seen if s[1] == "update_display_data"]
    assert [u[2]["transient"] for u in updates] == [placeholder["transient"]]
    assert updates[0][2]["data"]["text/plain"].startswith("cost: sids costs ")
    later = "".join(s[2].get("text", "") for s in seen if s[0] == "later" and s[1] == "stream")
    assert later == "later\n"


def test_the_doctor_says_whether_runs_are_counted_and_how_to_count_them(monkeypatch) -> None:
    monkeypatch.setattr(runstats, "acquire", lambda take=True: None)
    monkeypatch.setattr(runstats, "status", lambda: OFF)
    row = features.check_run_stats()
    assert (row.check, row.status) == ("run statistics", features.WARN)
    assert "cannot be shown" in row.detail and "sysctl kernel.bpf_stats_enabled=1" in row.fix
    monkeypatch.setattr(runstats, "status", lambda: runstats.Status(
        True, "descriptor", "enabled while this process runs: it holds ..."))
    row = features.check_run_stats()
    assert row.status == features.OK and runstats.PRICE in row.detail and row.fix == ""
