"""The tools' framework without a kernel: declarations, options, readings, frames, registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ebpf_magic import tools
from ebpf_magic.errors import BPFError, OptionError
from ebpf_magic.tools import frames, stacks, tool
from ebpf_magic.tools.builtin.opensnoop import flag_names
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, Variant, flag, pid


def _table(r: Reading) -> pd.DataFrame:
    return pd.DataFrame({"x": [1]})


def _plot(run: ToolRun, ax):
    return ax


def make(**kw) -> Tool:
    args = {"name": "demo", "answers": "a question", "source": 'SEC("tp/a/b") int f() {}',
            "table": _table, "plot": _plot}
    return Tool(**{**args, **kw})


# -- declarations and options -------------------------------------------------------------


def test_options_convert_values_and_name_themselves_when_wrong():
    opt = Option("pid", ("-p", "--pid"), "only this process", type=pid, sets="targ_pid")
    assert opt.check("123") == 123 and opt.check(45) == 45 and opt.check(None) is None
    with pytest.raises(OptionError) as e:
        opt.check("abc")
    assert "pid: wants a whole number" in e.value.message and "-p/--pid" in e.value.hint
    with pytest.raises(OptionError, match="from 1 to"):
        opt.check(0)
    with pytest.raises(OptionError, match="whole number"):
        opt.check(True)


def test_a_tool_checks_its_options_before_anything_starts():
    t = make(options=[Option("pid", ("-p",), "p", type=pid, sets="targ_pid"),
                      Option("verbose", ("-v",), "v", type=flag, sets="targ_v")])
    assert t.check_options({}) == {"pid": None, "verbose": False}
    with pytest.raises(OptionError) as e:
        t.check_options({"pdi": 3})
    assert "no option 'pdi'" in e.value.message and "pid, verbose" in e.value.hint


def test_globals_are_set_for_given_values_zero_included():
    t = make(options=[Option("uid", ("-u",), "u", type=int, sets="targ_uid"),
                      Option("ms", ("-m",), "m", type=flag, sets="targ_ms"),
                      Option("us", ("--us",), "us", type=int, sets="targ_ns",
                             to_c=lambda v: v * 1000),
                      Option("py", ("--py",), "python only", type=int)],
             prepare=lambda o: {"targ_extra": 7})
    values = t.check_options({"uid": 0, "us": 5, "py": 9})
    assert t.c_globals(values) == {"targ_uid": 0, "targ_ns": 5000, "targ_extra": 7}
    assert t.c_globals(t.check_options({"ms": True}))["targ_ms"] == 1


def test_declarations_are_checked():
    with pytest.raises(BPFError, match="identifier"):
        make(name="not a name")
    with pytest.raises(BPFError, match="named twice: a"):
        make(options=[Option("a", ("-a",), ""), Option("a", ("-b",), "")])
    with pytest.raises(BPFError, match="'main' names the main table"):
        make(tables={"main": _table})


def test_interval_tools_get_the_interval_option():
    t = make(interval=True)
    assert [o.name for o in t.all_options] == ["interval"]
    assert t.check_options({"interval": "0.5"})["interval"] == 0.5
    with pytest.raises(OptionError, match="seconds"):
        t.check_options({"interval": -1})


def test_the_parser_is_made_from_the_declarations():
    t = make(options=[Option("pid", ("-p", "--pid"), "only this process", type=pid),
                      Option("per_process", ("-P",), "per process", type=flag)])
    opts = t.parser().parse_args(["-p", "42", "-P", "--name", "x"])
    assert (opts.pid, opts.per_process, opts.name) == (42, True, "x")
    with pytest.raises(OptionError, match="-p/--pid: wants a whole number, got 'x'"):
        t.parser().parse_args(["-p", "x"])
    assert "usage: %bpf tool demo" in t.help() and "probes: tracepoint:a:b" in t.help()


def test_the_probes_come_from_the_sec_names():
    src = """
    SEC("tracepoint/syscalls/sys_enter_openat") int a() {}
    SEC("tp_btf/sched_switch") int b() {}
    SEC("raw_tp/block_rq_issue") int c() {}
    SEC("fexit/inet_csk_accept") int d() {}
    SEC("perf_event") int e() {}
    struct { int x; } m SEC(".maps");
    """
    assert tool.section_probes(src) == [
        "tracepoint:syscalls:sys_enter_openat", "rawtracepoint:sched_switch",
        "rawtracepoint:block_rq_issue", "kfunc:inet_csk_accept"]


def test_the_first_variant_the_kernel_has_is_chosen(monkeypatch):
    have = {"tracepoint:b:c"}
    monkeypatch.setattr(tool, "probe_available", lambda spec: spec in have)
    t = make(source=[Variant("new", 'SEC("tp/a/missing") int f() {}'),
                     Variant("old", 'SEC("tp/b/c") int f() {}')])
    assert t.variant().name == "old" and [v.name for v in t.candidates()] == ["old"]
    assert t.summary()["available"] and t.summary()["variant"] == "old"
    have.clear()
    with pytest.raises(BPFError, match="new: tracepoint:a:missing; old: tracepoint:b:c"):
        t.variant()
    assert not t.summary()["available"]


def test_a_source_may_depend_on_the_options():
    t = make(source=lambda o: f'#define N {o["n"]}\nSEC("tp/x/y") int f() {{}}',
             options=[Option("n", ("-n",), "n", default=3)])
    assert t.variants[0].text({"n": 9}).startswith("#define N 9")
    assert t.probes() == ["tracepoint:x:y"]


def test_each_builtin_tool_declares_a_documented_table_and_options():
    for name in tools.BUILTIN:
        t = tools.get(name)
        assert t.name == name and t.answers.endswith("?"), name
        assert t.table.__doc__ and t.probes(), name
        for opt in t.all_options:
            assert opt.help and opt.flags[0].startswith("-"), (name, opt.name)
        fn = getattr(tools, name)
        assert fn.__name__ == name and "table:" in fn.__doc__


def test_the_registry_knows_builtin_and_registered_tools():
    assert tools.names()[: len(tools.BUILTIN)] == list(tools.BUILTIN)
    with pytest.raises(KeyError, match="no tool named 'nope'; tools: execsnoop"):
        tools.get("nope")
    mine = make(name="mytool_for_test")
    try:
        assert tools.register(mine) is mine and tools.get("mytool_for_test") is mine
        with pytest.raises(BPFError, match="already known"):
            tools.register(make(name="mytool_for_test"))
        with pytest.raises(BPFError, match="already known"):
            tools.register(make(name="runqlat"))
        assert "mytool_for_test" in tools.names()
    finally:
        tools.unregister("mytool_for_test")
    assert "mytool_for_test" not in tools.names()
    with pytest.raises(KeyError):
        tools.unregister("runqlat")


# -- readings and tables ------------------------------------------------------------------


def test_differences_subtract_values_by_key_per_cpu_too():
    before = {"h": pd.DataFrame({"id": [1, 2], "slot": [3, 3], "value": [5, 7]}),
              "p": pd.DataFrame({"key": [1], "calls[cpu0]": [2], "calls[cpu1]": [3],
                                 "total": [5]})}
    after = {"h": pd.DataFrame({"id": [1, 2, 3], "slot": [3, 3, 4], "value": [5, 9, 1]}),
             "p": pd.DataFrame({"key": [1], "calls[cpu0]": [4], "calls[cpu1]": [3],
                                "total": [7]})}
    got = tool.differences(before, after, {"h": ["value"], "p": ["calls"]})
    assert got["h"].to_dict("list") == {"id": [2, 3], "slot": [3, 4], "value": [2, 1]}
    assert got["p"].to_dict("list") == {"key": [1], "calls[cpu0]": [2], "calls[cpu1]": [0],
                                        "total": [2]}


class Recorded:
    """A program as a recording gives it: frames only, not running."""

    name = "rec"
    running = False
    readable = True
    started_at = 100.0
    stopped_at = 101.0

    def __init__(self, maps: dict[str, pd.DataFrame], tables=None) -> None:
        self._maps = maps
        self.tables = tables or {}

    def read_maps(self, names=None):
        return {n: self._maps[n] for n in (names or self._maps)}


def test_summed_adds_up_per_cpu_columns():
    df = pd.DataFrame({"key": [1], "count[cpu0]": [2], "count[cpu1]": [5],
                       "total_ns[cpu0]": [10], "total_ns[cpu1]": [20]})
    assert frames.summed(df).to_dict("list") == {"key": [1], "count": [7], "total_ns": [30]}
    plain = pd.DataFrame({"key": [1], "value": [3]})
    assert frames.summed(plain) is plain


def test_log2_tables_have_units_and_fill_gaps():
    df = pd.DataFrame({"pid": [7, 7, 9], "slot": [1, 4, 2], "count": [3, 1, 2]})
    out = frames.log2_table(df, "us", by=["pid"])
    assert list(out.columns) == ["pid", "low_us", "high_us", "count"]
    seven = out[out["pid"] == 7]
    assert list(seven["low_us"]) == [1, 2, 4, 8] and list(seven["count"]) == [3, 0, 0, 1]
    assert out["pid"].dtype == df["pid"].dtype
    hist = frames.histogram(out, "us", by=["pid"])
    assert hist.total == 6 and "[8, 16)" in str(hist)


def test_stack_tables_fold_recorded_stacks_without_the_tracing_frames():
    counts = pd.DataFrame({"pid": [5, 5, 6], "tid": [5, 5, 6], "user_stack_id": [1, -14, -14],
                           "kernel_stack_id": [2, 2, -1], "comm": ["a", "a", "k"],
                           "value": [1000, 3000, 500]})
    recorded = pd.DataFrame({"stack_id": [1, 2], "depth": [2, 3], "stack": [
        "main;work", "do_nanosleep;schedule;__schedule;__traceiter_sched_switch;"
        "bpf_trace_run4;bpf_prog_123_on_switch"]})
    r = Reading(Recorded({"counts": counts, "stacks": recorded}), {})
    out = stacks.stack_table(r, "counts", "offcpu_us", scale=1e3)
    assert out.to_dict("list") == {
        "pid": [5, 5, 6], "tid": [5, 5, 6], "comm": ["a", "a", "k"],
        "stack": ["do_nanosleep;schedule;__schedule",
                  "main;work;do_nanosleep;schedule;__schedule", ""],
        "offcpu_us": [3.0, 1.0, 0.5]}


def test_frames_turn_numbers_into_names():
    assert frames.ip_addresses([2, 10, 0], [[10, 0, 0, 1]] * 3,
                               [[0] * 15 + [1]] * 3) == ["10.0.0.1", "::1", ""]
    assert frames.errno_name([0, 2, 98]) == ["", "ENOENT", "EADDRINUSE"]
    assert frames.signal_name([0, 9, 15, 99]) == ["", "SIGKILL", "SIGTERM", "SIG99"]
    assert flag_names(0) == "O_RDONLY" and flag_names(0o101 | 0o2000000) == \
        "O_WRONLY|O_CREAT|O_CLOEXEC"
    df = pd.DataFrame({"a[1]": [2], "a[0]": [1], "a[10]": [3], "b": [0]})
    assert frames.columns_like(df, "a") == ["a[0]", "a[1]", "a[10]"]
    assert frames.array(df, "a").tolist() == [[1, 2, 3]]


def test_a_recording_is_a_tools_only_with_readable_metadata():
    known = {"syscount": tools.get("syscount")}
    saved = pd.DataFrame({"calls": [3]})
    meta = pd.DataFrame([{"tool": "syscount", "variant": "default",
                          "options": json.dumps({"pid": 5})}])
    run = tool.from_recording(Recorded({}, {"tool": meta, "tool:main": saved}), known)
    assert run.options == {"pid": 5} and run.df.equals(saved)
    assert tool.from_recording(Recorded({}), known) is None
    with pytest.raises(BPFError, match="tool 'mine', which is not known here"):
        tool.from_recording(Recorded({}, {"tool": meta.assign(tool="mine")}), known)
    with pytest.raises(BPFError, match="options are not readable"):
        tool.from_recording(Recorded({}, {"tool": meta.assign(options="[1")}), known)


def test_a_replayed_run_plots_its_recorded_table():
    meta = pd.DataFrame([{"tool": "runqlat", "variant": "default", "options": "{}"}])
    table = frames.log2_table(pd.DataFrame({"slot": [1, 3], "count": [4, 2]}), "us")
    run = tool.from_recording(Recorded({}, {"tool": meta, "tool:main": table,
                                            "tool:totals": table}),
                              {"runqlat": tools.get("runqlat")})
    ax = run.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[1]", "[2, 4)", "[4, 8)"]
    assert [p.get_height() for p in ax.patches] == [4, 0, 2]
    assert "run queue latency" in ax.get_xlabel()


def test_the_syscall_table_falls_back_to_the_c_librarys(monkeypatch):
    from ebpf_magic.tools import syscalls

    syscalls.names.cache_clear()
    monkeypatch.setattr(syscalls, "from_kernel", lambda: (_ for _ in ()).throw(
        BPFError("no BPF here")))
    try:
        names = syscalls.names()
        assert names and all(isinstance(n, str) for n in names.values())
        assert syscalls.name(99_999) == "syscall_99999"
    finally:
        syscalls.names.cache_clear()


def test_intervals_split_a_reading_by_time():
    events = pd.DataFrame({"time": pd.to_datetime([100.2, 100.7, 101.2], unit="s"),
                           "x": [1, 2, 3]})

    class WithEvents(Recorded):
        pass

    WithEvents.events = {"e": type("S", (), {"df": events})()}

    r = Reading(WithEvents({}), {}, maps={}, start=100.5, end=101.0, interval=True)
    assert r.events("e")["x"].tolist() == [2] and r.seconds == 0.5
    with pytest.raises(KeyError, match="not in this reading"):
        r.maps("m")
    whole = Reading(WithEvents({"m": pd.DataFrame({"v": [1]})}), {})
    assert whole.events("e")["x"].tolist() == [1, 2, 3] and np.isclose(whole.seconds, 1.0)
    assert whole.maps("m")["v"].tolist() == [1]


def test_the_magic_completes_tool_names_and_their_options():
    from ebpf_magic.magics import tool as tool_magic

    assert tool_magic.completions("run", ["tool"])[:2] == ["list", "execsnoop"]
    assert "runqlat" in tool_magic.completions("run", ["tool"])
    flags = tool_magic.completions("-", ["tool", "runqlat"])
    assert {"-p", "--per-process", "-m", "--interval", "--record", "--help"} <= set(flags)
    assert tool_magic.completions("-", ["tool", "nope"]) == []


def test_a_tool_recording_replays_as_the_tool():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "notebooks" / "recordings" / "box_rq.bpfrec"
    run = tools.load(path, "rq")
    assert run.tool.name == "runqlat" and run.options["per_process"] and run.name == "rq"
    assert list(run.df.columns) == ["pid", "comm", "low_us", "high_us", "count"]
    # the histogram and the totals were read together
    assert run.table("totals")["count"].sum() == run.df["count"].sum() > 0
    assert not run.running and run.prog_ids() == []
