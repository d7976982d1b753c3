"""The %%bpf magic through a real IPython shell, on the real kernel."""

import os

import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import COUNT_CELL as COUNT
from conftest import loaded_prog_ids, own_bpf_fds

pytestmark = pytest.mark.kernel



def run(shell, cell):
    result = shell.run_cell(cell)
    return result


def test_counts_exact_syscalls_as_dataframe(shell, no_leaks):
    assert run(shell, COUNT.format(name="counter", pid=os.getpid())).success
    for _ in range(137):
        os.getppid()
    prog = shell.user_ns["counter"]
    df = prog.maps["calls"].df
    assert df.to_dict("records") == [{"key": os.getpid(), "value": 137}]
    assert prog.maps["calls"][os.getpid()] == 137
    shell.run_line_magic("bpf", "stop counter")


def test_interpolates_notebook_variables(shell, no_leaks):
    shell.user_ns["target"] = os.getpid()
    cell = COUNT.format(name="p", pid="{target}")
    assert run(shell, cell).success
    os.getppid()
    os.getppid()
    assert shell.user_ns["p"].maps["calls"][os.getpid()] == 2
    shell.run_line_magic("bpf", "stop --all")


def test_rerun_replaces_program(shell, no_leaks):
    run(shell, COUNT.format(name="p", pid=os.getpid()))
    first = shell.user_ns["p"]
    first_ids = set(first.prog_ids())
    run(shell, COUNT.format(name="p", pid=os.getpid()))
    second = shell.user_ns["p"]
    assert not first.running and second.running
    assert not first_ids & loaded_prog_ids(), "the old program is still loaded"
    assert len(shell.run_line_magic("bpf", "list")) == 1
    shell.run_line_magic("bpf", "stop p")


def test_list_and_stop(shell, no_leaks):
    run(shell, COUNT.format(name="a", pid=os.getpid()))
    run(shell, COUNT.format(name="b", pid=os.getpid()))
    os.getppid()
    table = shell.run_line_magic("bpf", "list")
    assert list(table["name"]) == ["a", "b"]
    assert list(table["probes"]) == ["tracepoint:syscalls:sys_enter_getppid=on_getppid"] * 2
    # shown whole and left-aligned, not cut at pandas' 50 characters
    assert table._repr_html_().count(
        '<td style="text-align:left">tracepoint:syscalls:sys_enter_getppid=on_getppid</td>') == 2
    assert "tracepoint:syscalls:sys_enter_getppid=on_getppid" in repr(table)
    a = shell.user_ns["a"]  # the program and its maps listing show the same way
    assert '<td style="text-align:left">tracepoint:syscalls:sys_enter_getppid=on_getppid</td>' \
        in a._repr_html_()
    assert '<td style="text-align:left">calls</td>' in a.maps._repr_html_()
    assert list(table["maps"]) == ["calls", "calls"]
    assert set(table["state"]) == {"running"}
    ids = set(shell.user_ns["a"].prog_ids()) | set(shell.user_ns["b"].prog_ids())
    shell.run_line_magic("bpf", "stop a")
    assert not shell.user_ns["a"].running and shell.user_ns["b"].running
    shell.run_line_magic("bpf", "stop --all")
    assert not ids & loaded_prog_ids()
    empty = shell.run_line_magic("bpf", "list")
    assert empty.empty and list(empty.columns) == list(table.columns)
    assert repr(empty) == "no programs: a %%bpf NAME cell starts one (see %bpf help)"
    assert empty._repr_html_() == f"<p>{repr(empty)}</p>"


def test_unload_extension_releases_everything(no_leaks):
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "ebpf_magic")
    sh.run_cell(COUNT.format(name="p", pid=os.getpid()))
    ids = set(sh.user_ns["p"].prog_ids())
    assert ids <= loaded_prog_ids()
    sh.run_line_magic("unload_ext", "ebpf_magic")
    InteractiveShell.clear_instance()
    assert not ids & loaded_prog_ids()
    assert own_bpf_fds() == []


def test_help_documents_every_option(shell):
    doc = shell.find_cell_magic("bpf").__doc__
    for word in ("--attach", "--pid", "-D NAME", "--cflags", "--raw", "uprobe:", "usdt:",
                 "profile:hz:N", "xdp:DEVICE", "{{name}}",
                 "%bpf stop", "%bpf list"):
        assert word in doc, word


def test_bad_options_are_usage_errors(shell, capsys):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="NAME"):
        shell.run_cell_magic("bpf", "", "int f(void *c) { return 0; }")
    with pytest.raises(UsageError, match="--pid: wants a whole number from 1 to 4,194,304, got "
                                         "'notanumber'"):
        shell.run_cell_magic("bpf", "p --pid notanumber", "int f(void *c) { return 0; }")
    with pytest.raises(UsageError, match="unknown subcommand"):
        shell.run_line_magic("bpf", "frobnicate")


def test_cflags_takes_one_flag_without_space(shell, no_leaks):
    cell = (f"%%bpf p -a tracepoint:syscalls:sys_enter_getppid -D PID={os.getpid()} "
            "--cflags '-DSTEP=5'\nBPF_ARRAY(n, u64, 1);\nint f(void *c) {\n"
            "  if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;\n"
            "  int z = 0; n.increment(z, STEP); return 0; }\n")
    assert run(shell, cell).success
    for _ in range(3):
        os.getppid()
    assert shell.user_ns["p"].maps["n"][0] == 15
    shell.run_line_magic("bpf", "stop p")


def test_interrupt_while_compiling_is_one_line(shell, capsys, no_leaks):
    import _thread
    import threading
    import time

    from ebpf_magic.backend.bcc import client

    started = threading.Event()
    request = client.Worker.request

    def slow_request(self, message):  # the compile takes long enough for Ctrl-C to land in it
        started.set()
        time.sleep(5)
        return request(self, message)

    timer = threading.Thread(target=lambda: started.wait(10) and _thread.interrupt_main())
    timer.start()
    try:
        client.Worker.request = slow_request
        result = shell.run_cell(COUNT.format(name="p", pid=os.getpid()))
    finally:
        client.Worker.request = request
        timer.join()
    out = capsys.readouterr()
    assert not result.success
    assert (out.out + out.err).strip().splitlines() == ["interrupted: nothing was attached"]
    assert "p" not in shell.user_ns


PLAIN = """BPF_HASH(calls, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid == PID) calls.increment(pid);
    return 0;
}
"""


def test_programs_started_from_python_are_listed_and_stopped_by_stop_all(shell, no_leaks):
    from ebpf_magic import program

    run(shell, COUNT.format(name="named", pid=os.getpid()))
    # started from Python, and the only reference dropped: the registry still holds it
    ids = set(program.Program(PLAIN, name="plain", defines={"PID": os.getpid()}).prog_ids())
    assert ids <= loaded_prog_ids()
    for _ in range(3):
        os.getppid()
    [plain] = [p for p in program.running() if p.name == "plain"]
    assert plain.maps["calls"][os.getpid()] == 3
    table = shell.run_line_magic("bpf", "list")
    assert list(table["name"]) == ["named", "plain"]
    assert list(table["state"]) == ["running", "running"]
    shell.run_line_magic("bpf", "stop --all")
    assert not plain.running and program.running() == []
    assert not ids & loaded_prog_ids()
    assert shell.run_line_magic("bpf", "list").empty


def test_stop_all_stops_every_running_program_and_names_them(no_leaks):
    from ebpf_magic import program

    first = program.Program(PLAIN, name="first", defines={"PID": os.getpid()})
    second = program.Program(PLAIN, name="second", defines={"PID": os.getpid()})
    ids = set(first.prog_ids()) | set(second.prog_ids())
    assert program.running() == [first, second]
    assert [p.name for p in program.stop_all()] == ["first", "second"]
    assert not first.running and not second.running and program.running() == []
    assert not ids & loaded_prog_ids()
