"""Tab completion through IPython's own completer, as the terminal and Jupyter ask for it."""

from __future__ import annotations

import os

import pytest
from IPython.core.completer import provisionalcompleter

from ebpf_magic import discover
from ebpf_magic.kernel import tracefs
from ebpf_magic.magics import SUBCOMMANDS

RECORDINGS = os.path.join(os.path.dirname(__file__), "..", "notebooks", "recordings")
TRACEFS = tracefs.root()
needs_tracefs = pytest.mark.skipif(
    TRACEFS is None or not os.access(TRACEFS / "available_events", os.R_OK),
    reason="tracefs is not readable here (not mounted, or no rights)")


def complete(shell, text: str, offset: int | None = None) -> list[str]:
    """The lines Tab would make of ``text`` with the cursor at ``offset`` (default: its end)."""
    offset = len(text) if offset is None else offset
    with provisionalcompleter():
        found = shell.Completer.completions(text, offset)
        return sorted(text[:c.start] + c.text + text[c.end:offset] for c in found)


def test_cell_line_options(shell):
    assert complete(shell, "%%bpf prog --max") == ["%%bpf prog --max-rows"]
    assert "%%bpf prog --backend" in complete(shell, "%%bpf prog --")
    assert "%%bpf prog --record" in complete(shell, "%%bpf prog --")


def test_attach_kinds(shell):
    kinds = complete(shell, "%%bpf prog -a ")
    assert "%%bpf prog -a tracepoint:" in kinds and "%%bpf prog -a uprobe:" in kinds
    assert complete(shell, "%%bpf prog -a rawt") == ["%%bpf prog -a rawtracepoint:"]


def _event_dirs() -> dict[str, list[str]]:
    """``{category: [event, ...]}`` from tracefs's ``events/`` folders, which the completer
    does not read (it reads ``available_events``): an event is a folder with an ``id``."""
    return {cat.name: sorted(e.name for e in cat.iterdir() if (e / "id").exists())
            for cat in (TRACEFS / "events").iterdir() if cat.is_dir()}


@needs_tracefs
def test_tracepoint_categories_then_events(shell):
    dirs = _event_dirs()
    sch = sorted(c for c, events in dirs.items() if c.startswith("sch") and events)
    assert "sched" in sch  # every kernel with tracepoints has the scheduler's
    assert complete(shell, "%%bpf prog -a tracepoint:sch") == [
        f"%%bpf prog -a tracepoint:{c}:" for c in sch]
    switch = [e for e in dirs["sched"] if e.startswith("sched_sw")]
    assert "sched_switch" in switch
    assert complete(shell, "%%bpf prog -a tracepoint:sched:sched_sw") == [
        f"%%bpf prog -a tracepoint:sched:{e}" for e in switch]


@needs_tracefs
def test_only_the_first_line_of_a_cell(shell):
    text = "%%bpf prog -a tracepoint:sch\nint x;"
    cut = text.index("\n")
    assert complete(shell, text, cut)[0].startswith("%%bpf prog -a tracepoint:sched:")
    body = text + "\n%%bpf other -a tracepoint:sch"  # cell text, not a magic line
    assert not any("tracepoint:sched:" in c for c in complete(shell, body))


def test_library_symbols(shell):
    assert complete(shell, "%%bpf prog -a uprobe:c:getpi") == ["%%bpf prog -a uprobe:c:getpid"]
    assert "%%bpf prog -a uprobe:c:" in complete(shell, "%%bpf prog -a uprobe:")


def test_xdp_devices(shell):
    assert complete(shell, "%%bpf prog -a xdp:") == [
        f"%%bpf prog -a xdp:{d}" for d in sorted(os.listdir("/sys/class/net"))]


def test_subcommands_and_program_names(shell):
    assert complete(shell, "%bpf ") == sorted(f"%bpf {s}" for s in SUBCOMMANDS)
    assert complete(shell, "%bpf st") == ["%bpf stats", "%bpf stop", "%bpf struct"]
    assert complete(shell, "%bpf stats ") == ["%bpf stats off", "%bpf stats on"]
    shell.run_line_magic("bpf", f"load kinds {RECORDINGS}/kinds.bpfrec")
    shell.run_line_magic("bpf", f"load opens {RECORDINGS}/opens.bpfrec")
    assert complete(shell, "%bpf stop ") == ["%bpf stop kinds", "%bpf stop opens"]
    assert complete(shell, "%bpf stop kinds o") == ["%bpf stop kinds opens"]
    assert complete(shell, "%bpf save k") == ["%bpf save kinds"]
    assert complete(shell, "%bpf browse kinds/by_") == ["%bpf browse kinds/by_fd",
                                                         "%bpf browse kinds/by_size"]
    assert complete(shell, "%%bpf ki") == ["%%bpf kinds"]
    assert complete(shell, "%bpf stop --a") == ["%bpf stop --all"]


@needs_tracefs
def test_probes_and_struct_arguments(shell):
    assert complete(shell, "%bpf probes tracepoint:syscalls:sys_enter_opena") == [
        "%bpf probes tracepoint:syscalls:sys_enter_openat",
        "%bpf probes tracepoint:syscalls:sys_enter_openat2"]
    if discover.kernel_btf() is None:
        pytest.skip("the kernel has no BTF")
    assert "%bpf struct task_struct" in complete(shell, "%bpf struct task_str")
    assert complete(shell, "%bpf struct task_struct.tgi") == ["%bpf struct task_struct.tgid"]


def test_replayed_map_and_stream_keys(shell):
    shell.run_line_magic("bpf", f"load opens {RECORDINGS}/opens.bpfrec")
    assert complete(shell, 'opens.maps["by') == ['opens.maps["by_comm']
    assert complete(shell, 'opens.events["f') == ['opens.events["files']


def test_elsewhere_python_completion_is_untouched(shell):
    shell.user_ns["some_value"] = 1
    assert complete(shell, "some_va") == ["some_value"]


LIVE_CELL = """%%bpf live_keys -D PID={pid}
BPF_HASH(per_fd, u32, u64);
BPF_HASH(per_size, u64, u64);
BPF_PERF_OUTPUT(writes);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    u32 key = 0;
    per_fd.increment(key);
    writes.perf_submit(args, &key, sizeof(key));
    return 0;
}}
"""


@pytest.mark.kernel
def test_live_map_and_stream_keys(no_leaks, shell):
    shell.run_cell(LIVE_CELL.format(pid=os.getpid()), store_history=False).raise_error()
    assert complete(shell, 'live_keys.maps["per') == ['live_keys.maps["per_fd',
                                                       'live_keys.maps["per_size']
    assert complete(shell, 'live_keys.events["w') == ['live_keys.events["writes']
    assert complete(shell, "%bpf stop l") == ["%bpf stop live_keys"]
    shell.run_line_magic("bpf", "stop live_keys")


def test_sections_in_a_cell_body(shell):
    body = '%%bpf prog\nSEC("tp_b'
    assert complete(shell, body) == ['%%bpf prog\nSEC("tp_btf/']
    kinds = {c.split('SEC("', 1)[1] for c in complete(shell, '%%bpf prog\nSEC("')}
    assert {"tracepoint/", "tp_btf/", "raw_tp/", "kprobe/", "fentry/", "uprobe/", "usdt/",
            "iter/", "perf_event", "xdp", "tc", "tcx/", "socket"} <= kinds
    assert complete(shell, '%%bpf prog\nSEC("tcx/') == ['%%bpf prog\nSEC("tcx/egress',
                                                        '%%bpf prog\nSEC("tcx/ingress']
    if discover.kernel_btf() is None:
        pytest.skip("the kernel has no BTF")
    assert complete(shell, '%%bpf prog\nSEC("tp_btf/sched_swi') == [
        '%%bpf prog\nSEC("tp_btf/sched_switch']
    assert complete(shell, '%%bpf prog\nSEC("iter/task_f') == ['%%bpf prog\nSEC("iter/task_file']
    # not in a %%bpf cell, and not on its first line: Python's completion, not ours
    assert complete(shell, 'x = \'SEC("tp_b') != ['x = \'SEC("tp_btf/']


@needs_tracefs
def test_tracepoint_sections_by_category(shell):
    events = (TRACEFS / "available_events").read_text().split()
    done = complete(shell, '%%bpf prog\nSEC("tracepoint/sched/sched_sw')
    assert done == sorted(f'%%bpf prog\nSEC("tracepoint/{e.replace(":", "/")}'
                          for e in events if e.startswith("sched:sched_sw"))


def test_tc_and_iter_attach_specs(shell):
    devices = sorted(os.listdir("/sys/class/net"))
    assert complete(shell, "%%bpf prog -a tc:") == [f"%%bpf prog -a tc:{d}:" for d in devices]
    assert complete(shell, "%%bpf prog -a tc:lo:") == ["%%bpf prog -a tc:lo:egress",
                                                       "%%bpf prog -a tc:lo:ingress"]
    if discover.kernel_btf() is None:
        pytest.skip("the kernel has no BTF")
    assert "%%bpf prog -a iter:task" in complete(shell, "%%bpf prog -a iter:")
