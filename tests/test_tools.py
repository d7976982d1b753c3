"""The ready-made tools on the real kernel, each against a workload whose answer is known.

Every workload is a child the test starts gated (its pid known before it acts), so a
tool narrowed to it (``pid=``, ``ppid=``) sees exactly what the test made it do; counts
are exact, times within the tolerance each test states. The ``no_leaks`` fixture asks the
kernel that nothing stays loaded after each.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebpf_magic import tools
from ebpf_magic.tools import syscalls

from workload import (
    CLIENT,
    SERVER,
    SPIN,
    SPINNER,
    Gated,
    NetLab,
    compile_c,
    dd,
    loop_device,
    schedstat,
)

pytestmark = pytest.mark.kernel


def settle(run: tools.ToolRun, seconds: float = 0.3) -> None:
    """Give the stream reader time to take what the last events left, then stop."""
    time.sleep(seconds)
    run.stop()


# -- processes ----------------------------------------------------------------------------


def test_execsnoop_reports_each_exec_with_its_arguments(no_leaks):
    code = """
    import subprocess
    for i in range(5):
        subprocess.run(["/bin/true", "first", f"arg {i}", "x" * 200])
    try:
        subprocess.run(["/nonexistent/prog", "a"])
    except FileNotFoundError:
        pass
    """
    with Gated(code) as child:
        run = tools.execsnoop(ppid=child.pid)
        failed = tools.execsnoop(ppid=child.pid, failed=True, name="failed")
        child.release()
        child.proc.wait(30)
        settle(run)
        failed.stop()
    df = run.df
    ok = df[df["ret"] == 0]
    assert len(ok) == 5
    assert [a[:3] for a in ok["argv"]] == [["/bin/true", "first", f"arg {i}"] for i in range(5)]
    assert all(len(a[3]) == 127 for a in ok["argv"]) and ok["truncated"].all()
    assert set(ok["comm"]) == {"true"} and set(ok["ppid"]) == {child.pid}
    assert (ok["pid"] == ok["tid"]).all() and not (ok["pid"] == child.pid).any()
    bad = df[df["ret"] != 0]
    assert list(bad["errno"]) == ["ENOENT"] and list(bad["filename"]) == ["/nonexistent/prog"]
    assert list(failed.df["filename"]) == ["/nonexistent/prog"]
    assert run.events["enters"].stats["lost_kernel"] == 0


def test_execsnoop_keeps_at_most_max_args():
    code = """
    import subprocess
    subprocess.run(["/bin/true", *[str(i) for i in range(9)]])
    """
    with Gated(code) as child:
        run = tools.execsnoop(ppid=child.pid, max_args=4)
        child.release()
        child.proc.wait(30)
        settle(run)
    [row] = run.df.to_dict("records")
    assert row["argv"] == ["/bin/true", "0", "1", "2"] and row["truncated"]


def test_exitsnoop_tells_exits_from_signals(no_leaks):
    code = """
    import os, signal, time
    kids = []
    for status in (0, 1, 3):
        pid = os.fork()
        if pid == 0:
            time.sleep(0.2)
            os._exit(status)
        kids.append(pid)
    victim = os.fork()
    if victim == 0:
        time.sleep(30)
        os._exit(0)
    time.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    for _ in range(4):
        os.wait()
    print(" ".join(map(str, kids + [victim])), flush=True)
    """
    with Gated(code, hold=True) as child:
        run = tools.exitsnoop()
        child.release()
        pids = [int(p) for p in child.wait_output().split()]
        settle(run)
        child.finish()
    df = run.df.set_index("pid").loc[pids]
    assert list(df["status"].iloc[:3]) == [0, 1, 3] and list(df["signal"].iloc[:3]) == [""] * 3
    assert df["signal"].iloc[3] == "SIGKILL" and pd.isna(df["status"].iloc[3])
    assert (df["ppid"] == child.pid).all()
    assert (df["age_s"].iloc[:3] >= 0.2).all() and (df["age_s"] < 10).all()


def test_killsnoop_names_sender_signal_and_target(no_leaks):
    code = """
    import os, signal, subprocess, time
    target = subprocess.Popen(["sleep", "30"])
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    for _ in range(4):
        os.kill(target.pid, signal.SIGCONT)
    try:
        os.kill(4_000_000, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os.kill(target.pid, signal.SIGKILL)
    target.wait()
    print(target.pid, flush=True)
    """
    with Gated(code) as child:
        run = tools.killsnoop(pid=child.pid)
        child.release()
        target = int(child.wait_output())
        settle(run)
    df = run.df
    assert list(df["signal"]) == ["SIGCONT"] * 4 + ["SIGTERM", "SIGKILL"]
    assert list(df["target"]) == [target] * 4 + [4_000_000, target]
    assert list(df["errno"]) == [""] * 4 + ["ESRCH", ""]
    assert set(df["pid"]) == {child.pid} and set(df["syscall"]) == {"kill"}


# -- files --------------------------------------------------------------------------------


def test_opensnoop_counts_opens_of_named_files_for_one_process(no_leaks, tmp_path):
    code = f"""
    import os
    for i in range(7):
        open(os.path.join({str(tmp_path)!r}, f"file{{i % 3}}"), "w").close()
    try:
        open(os.path.join({str(tmp_path)!r}, "missing"))
    except FileNotFoundError:
        pass
    """
    with Gated(code) as child:
        run = tools.opensnoop(pid=child.pid)
        other = tools.opensnoop(name="other")
        child.release()
        child.proc.wait(30)
        for _ in range(3):  # this process opens the same files: -p leaves them out
            open(tmp_path / "file0").close()
        settle(run)
        other.stop()
    df = run.df
    mine = df[df["path"].str.startswith(str(tmp_path))]
    counts = mine["path"].map(os.path.basename).value_counts().to_dict()
    assert counts == {"file0": 3, "file1": 2, "file2": 2, "missing": 1}
    assert set(df["pid"]) == {child.pid}
    assert set(mine[mine["errno"] == ""]["flags"]) == {"O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"}
    assert mine[mine["errno"] != ""]["fd"].isna().all()
    assert list(mine[mine["errno"] != ""]["errno"]) == ["ENOENT"]
    seen_here = other.df[other.df["path"] == str(tmp_path / "file0")]
    assert set(seen_here["pid"]) == {child.pid, os.getpid()}


def test_statsnoop_sees_each_stat_and_its_result(no_leaks, tmp_path):
    (tmp_path / "there").write_text("x")
    there, absent = str(tmp_path / "there"), str(tmp_path / "absent")
    code = f"""
    import ctypes, os, platform
    for _ in range(4):
        os.stat({there!r})
    for _ in range(2):
        try:
            os.stat({absent!r})
        except FileNotFoundError:
            pass
    os.statvfs({there!r})
    if platform.machine() == "x86_64":  # the old calls, which the C library no longer makes
        libc, buf = ctypes.CDLL(None, use_errno=True), ctypes.create_string_buffer(256)
        for number in (4, 6):  # stat(2), lstat(2)
            libc.syscall(number, {there!r}.encode(), buf)
    """
    with Gated(code) as child:
        run = tools.statsnoop(pid=child.pid)
        child.release()
        child.proc.wait(30)
        settle(run)
    df = run.df[run.df["path"].str.startswith(str(tmp_path))]
    calls = df[df["path"] == there].groupby("syscall").size().to_dict()
    assert sum(n for c, n in calls.items() if c in ("newfstatat", "statx")) == 4
    assert calls["statfs"] == 1 and (df[df["path"] == there]["ret"] == 0).all()
    if platform.machine() == "x86_64":
        assert calls["newstat"] == 1 and calls["newlstat"] == 1
    assert list(df[df["path"] == absent]["errno"]) == ["ENOENT", "ENOENT"]


def test_mountsnoop_sees_mounts_and_unmounts(no_leaks, tmp_path):
    code = f"""
    import subprocess
    for i in range(3):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"emtest{{i}}",
                        {str(tmp_path)!r}], check=True)
        subprocess.run(["umount", {str(tmp_path)!r}], check=True)
    """
    with Gated(code) as child:
        run = tools.mountsnoop()
        child.release()
        assert child.proc.wait(30) == 0
        settle(run)
    df = run.df[run.df["target"] == str(tmp_path)]
    mounts = df[df["call"] == "mount"]
    assert list(mounts["source"]) == ["emtest0", "emtest1", "emtest2"]
    assert set(mounts["fstype"]) == {"tmpfs"} and set(mounts["data"]) == {"size=1m"}
    assert (df[df["call"] == "umount"]["ret"] == 0).sum() == 3
    assert set(df["comm"]) == {"mount", "umount"}


def test_bindsnoop_reports_addresses_ports_and_failures(no_leaks):
    code = """
    import socket
    keep = []
    for port in (41001, 41002):
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        keep.append(s)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::1", 41003))
    try:
        socket.socket().bind(("127.0.0.1", 41001))
    except OSError:
        pass
    """
    with Gated(code) as child:
        run = tools.bindsnoop(pid=child.pid)
        only = tools.bindsnoop(pid=child.pid, port=41003, name="only")
        child.release()
        child.proc.wait(30)
        settle(run)
        only.stop()
    df = run.df
    assert list(zip(df["addr"], df["port"], df["protocol"], df["errno"], strict=True)) == [
        ("127.0.0.1", 41001, "tcp", ""), ("127.0.0.1", 41002, "tcp", ""),
        ("::1", 41003, "udp", ""), ("127.0.0.1", 41001, "tcp", "EADDRINUSE")]
    assert list(only.df["port"]) == [41003]


# -- system calls -------------------------------------------------------------------------


def test_syscall_names_are_this_kernels():
    names = syscalls.from_kernel()
    if platform.machine() == "x86_64":
        assert (names[0], names[59], names[110], names[231]) == (
            "read", "execve", "getppid", "exit_group")
    # every syscall this kernel traces is named, by its trace event's name
    events = {p.name.removeprefix("sys_enter_") for p in
              Path("/sys/kernel/tracing/events/syscalls").iterdir()
              if p.name.startswith("sys_enter_")}
    assert set(names.values()) == events
    # where the C library's table knows a number, it means the same call
    header = syscalls.from_headers()
    same = [n for n in names if header.get(n) == names[n]]
    assert len(same) > 0.9 * len(names)


def test_syscount_counts_calls_exactly_and_times_them(no_leaks):
    code = """
    import os, time
    for _ in range(1234):
        os.getppid()
    for _ in range(10):
        time.sleep(0.02)
    """
    with Gated(code) as child:
        run = tools.syscount(pid=child.pid)
        per = tools.syscount(pid=child.pid, per_process=True, milliseconds=True, name="per")
        child.release()
        child.proc.wait(30)
        settle(run)
        per.stop()
    df = run.df.set_index("syscall")
    assert df.loc["getppid", "calls"] == 1234
    assert df.loc["clock_nanosleep", "calls"] == 10
    # each sleep takes its 20 ms and at most 10 ms more on a busy machine
    assert 20_000 <= df.loc["clock_nanosleep", "mean_us"] <= 30_000
    assert df.loc["getppid", "mean_us"] < 1_000
    p = per.df.set_index("syscall")
    assert set(per.df["pid"]) == {child.pid} and p.loc["getppid", "calls"] == 1234
    assert 200 <= p.loc["clock_nanosleep", "total_ms"] <= 300


def test_syscount_per_interval_adds_up_to_the_whole(no_leaks):
    code = """
    import os, time
    for _ in range(300):
        os.getppid()
    time.sleep(1.0)
    for _ in range(200):
        os.getppid()
    """
    with Gated(code) as child:
        run = tools.syscount(pid=child.pid, interval=0.5)
        child.release()
        child.proc.wait(30)
        settle(run)
    df = run.df
    getppid = df[df["syscall"] == "getppid"]
    assert getppid["calls"].sum() == 500
    assert df["time"].nunique() >= 2 and sorted(getppid["calls"]) == [200, 300]


# -- scheduler ----------------------------------------------------------------------------

def test_runqlat_agrees_with_the_schedulers_own_accounting(no_leaks):
    # two CPU-bound processes on one CPU wait for each other; /proc/PID/schedstat counts
    # the same waits (run_delay) and turns on the CPU as runqlat measures
    kids = [Gated(SPIN.format(seconds=1.5), hold=True, cpu=1) for _ in range(2)]
    try:
        run = tools.runqlat(per_process=True, pid=None)
        before = {k.pid: schedstat(k.pid) for k in kids}
        for k in kids:
            k.release()
        time.sleep(1.8)
        after = {k.pid: schedstat(k.pid) for k in kids}
        totals = run.table("totals").set_index("pid")
        hist = run.df
        run.stop()
    finally:
        for k in kids:
            k.finish()
    for k in kids:
        waited = (after[k.pid][1] - before[k.pid][1]) / 1e3
        turns = after[k.pid][2] - before[k.pid][2]
        row = totals.loc[k.pid]
        assert waited > 200_000  # the two really did wait for each other
        assert abs(row["total_us"] - waited) <= 0.05 * waited + 2_000
        assert abs(row["count"] - turns) <= 0.05 * turns + 3
        assert hist[hist["pid"] == k.pid]["count"].sum() == row["count"]


def test_cpudist_offcpu_puts_each_sleep_in_its_bucket(no_leaks):
    code = """
    import time
    for _ in range(10):
        time.sleep(0.02)
    """
    with Gated(code, hold=True) as child:
        run = tools.cpudist(offcpu=True, per_process=True, pid=child.pid)
        child.release()
        time.sleep(0.8)
        run.stop()
        child.finish()
    df = run.df
    # 20 ms sleeps end in [16384, 32768) us; no other off-CPU stretch is that long
    bucket = df[(df["low_us"] == 16384) & (df["high_us"] == 32768)]
    assert int(bucket["count"].sum()) == 10
    assert set(df["pid"]) == {child.pid}


def test_cpudist_on_cpu_time_adds_up_to_the_cpu_time(no_leaks):
    with Gated(SPIN.format(seconds=0.5), hold=True) as child:
        run = tools.cpudist(pid=child.pid, per_process=True)
        before = schedstat(child.pid)[0]
        child.release()
        time.sleep(1.5)  # its spin is over, and it sleeps again: its last turn has ended
        after = schedstat(child.pid)[0]
        totals = run.table("totals")
        run.stop()
        child.finish()
    ran = (after - before) / 1e3
    assert abs(totals["total_us"].sum() - ran) <= 0.05 * ran + 2_000


def test_offcputime_finds_the_sleeps_stack_and_time(no_leaks):
    code = """
    import time
    for _ in range(10):
        time.sleep(0.05)
    """
    with Gated(code, hold=True) as child:
        run = tools.offcputime(pid=child.pid, min_block_us=10_000)
        child.release()
        time.sleep(1.0)
        df = run.df  # symbolized while the child lives
        run.stop()
        child.finish()
    sleeps = df[df["stack"].str.contains("do_nanosleep")]
    assert 500_000 <= sleeps["offcpu_us"].sum() <= 600_000
    assert set(df["pid"]) == {child.pid} and set(df["tid"]) == {child.pid}
    assert sleeps["stack"].str.contains("clock_nanosleep").all()  # libc's frame, by name
    assert not df["stack"].str.contains("bpf_prog_|__traceiter_").any()


def test_wakeuptime_names_the_waker_and_the_time_asleep(no_leaks):
    code = """
    import os, time
    r, w = os.pipe()
    reader = os.fork()
    if reader == 0:
        for _ in range(8):
            os.read(r, 1)
        os._exit(0)
    print(reader, flush=True)
    for _ in range(8):
        time.sleep(0.03)
        os.write(w, b"x")
    os.wait()
    """
    with Gated(code) as child:
        run = tools.wakeuptime()
        child.release()
        reader = int(child.wait_output())
        child.proc.wait(30)
        settle(run)
    df = run.df
    woken = df[(df["target_pid"] == reader) & (df["waker_pid"] == child.pid)]
    assert woken["stack"].str.contains("pipe_write").all()
    assert 8 * 25_000 <= woken["blocked_us"].sum() <= 8 * 45_000


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_profile_samples_match_the_cpu_time_and_name_the_function(no_leaks, tmp_path):
    spinner = compile_c(SPINNER.format(seconds=1.5), "spinner", tmp_path)
    proc = subprocess.Popen([spinner], stdin=subprocess.PIPE)
    try:
        run = tools.profile(pid=proc.pid, frequency=99)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        time.sleep(2.0)
        cpu = cpu_seconds(proc.pid)
        df = run.df
        run.stop()
    finally:
        proc.communicate(b"\n", timeout=30)
    assert set(df["pid"]) == {proc.pid}
    # one sample per 1/99 s the process ran, give or take a quarter on a busy machine
    assert abs(df["samples"].sum() - 99 * cpu) <= 0.25 * 99 * cpu + 5
    top = df.groupby("stack")["samples"].sum()
    share = top[top.index.str.contains("main;spin_here")].sum() / top.sum()
    assert share > 0.8


def test_runqlen_sees_the_threads_waiting_on_a_busy_cpu(no_leaks):
    kids = [Gated(SPIN.format(seconds=1.2), cpu=1) for _ in range(3)]
    try:
        run = tools.runqlen(per_cpu=True)
        for k in kids:
            k.release()
        time.sleep(1.0)
        df = run.df
        run.stop()
    finally:
        for k in kids:
            k.proc.wait(30)
    cpu1 = df[df["cpu"] == 1]
    total = cpu1["samples"].sum()
    # three runnable on CPU 1: one runs and at least two wait, in nearly every sample; two
    # exactly (the running one not counted) whenever nothing else runs there
    assert cpu1[cpu1["queued"] >= 2]["samples"].sum() >= 0.85 * total and total >= 80
    assert cpu1[cpu1["queued"] == 2]["samples"].sum() >= 0.2 * total


def test_softirqs_and_hardirqs_agree_with_the_kernels_counters(no_leaks):
    def proc_softirqs() -> dict[str, int]:
        lines = open("/proc/softirqs").read().splitlines()[1:]
        return {ln.split(":")[0].strip().lower(): sum(map(int, ln.split(":")[1].split()))
                for ln in lines}

    def proc_interrupts() -> dict[int, int]:
        out = {}
        ncpu = len(open("/proc/interrupts").readline().split())
        for ln in open("/proc/interrupts").read().splitlines()[1:]:
            head, _, rest = ln.partition(":")
            if head.strip().isdigit():
                out[int(head)] = sum(int(x) for x in rest.split()[:ncpu])
        return out

    def counts(run: tools.ToolRun, key: str) -> pd.Series:
        return run.df.groupby(key)["count"].sum()

    # the tools' counts and the kernel's, read together before and after the workload
    soft, hard = tools.softirqs(), tools.hardirqs()
    s0, h0, c0, i0 = proc_softirqs(), proc_interrupts(), counts(soft, "softirq"), \
        counts(hard, "irq")
    with socket.create_server(("127.0.0.1", 0)) as srv:  # loopback traffic: net_rx work
        for _ in range(200):
            with socket.create_connection(srv.getsockname()):
                srv.accept()[0].close()
    time.sleep(0.5)
    s1, h1, c1, i1 = proc_softirqs(), proc_interrupts(), counts(soft, "softirq"), \
        counts(hard, "irq")
    soft.stop()
    hard.stop()
    counted = c1.sub(c0, fill_value=0)
    for kind in ("net_rx", "timer", "rcu"):
        delta = s1[kind] - s0[kind]
        assert delta > 0
        assert abs(counted.get(kind, 0) - delta) <= 0.1 * delta + 10, kind
    for irq, n in i1.sub(i0, fill_value=0).items():
        delta = h1.get(irq, 0) - h0.get(irq, 0)
        assert abs(n - delta) <= 0.1 * delta + 5, irq


# -- block I/O ----------------------------------------------------------------------------


def test_block_tools_count_direct_io_of_known_sizes(no_leaks):
    with loop_device() as disk:
        lat = tools.biolatency(disk=disk, per_op=True)
        snoop = tools.biosnoop(disk=disk)
        sizes = tools.bitesize(disk=disk)
        dd(["if=/dev/zero", f"of=/dev/{disk}", "bs=4k", "count=40", "seek=3", "oflag=direct"])
        dd([f"if=/dev/{disk}", "of=/dev/null", "bs=64k", "count=12", "iflag=direct"])
        time.sleep(0.3)
        for run in (lat, snoop, sizes):
            run.stop()
    totals = lat.table("totals").set_index("op")
    assert totals.loc["write", "count"] == 40 and totals.loc["read", "count"] == 12
    assert lat.df.groupby("op")["count"].sum().to_dict() == {"read": 12, "write": 40}
    io = snoop.df
    writes, reads = io[io["op"] == "write"], io[io["op"] == "read"]
    assert list(writes["sector"]) == [(3 + i) * 8 for i in range(40)]
    assert set(writes["bytes"]) == {4096} and set(reads["bytes"]) == {65536}
    assert list(reads["sector"]) == [i * 128 for i in range(12)]
    assert set(io["comm"]) == {"dd"} and set(io["disk"]) == {disk}
    assert (io["latency_us"] > 0).all()
    by_size = sizes.df[sizes.df["count"] > 0].set_index("low_kib")["count"].to_dict()
    assert by_size == {4: 40, 64: 12}


def test_biolatency_with_another_disk_sees_nothing_of_this_one(no_leaks):
    with loop_device() as disk, loop_device() as other:
        run = tools.biolatency(disk=other)
        dd(["if=/dev/zero", f"of=/dev/{disk}", "bs=4k", "count=10", "oflag=direct"])
        time.sleep(0.2)
        run.stop()
    assert run.df["count"].sum() == 0


# -- TCP ----------------------------------------------------------------------------------


@pytest.fixture
def lab():
    with NetLab(str(os.getpid() % 10000)) as net:
        yield net


def serve(lab: NetLab, n: int, rx: int, tx: int, port: int) -> Gated:
    server = Gated(SERVER, netns=lab.server, args=(str(n), str(rx), str(tx), str(port)))
    server.release()
    assert server.wait_output() == "ready"
    return server


def test_tcp_tools_see_each_connection_with_its_bytes(no_leaks, lab):
    n, rx, tx, port = 6, 10_000, 3_000, 5599
    server = serve(lab, n, rx, tx, port)
    with server, Gated(CLIENT, netns=lab.client,
                       args=(str(n), str(rx), lab.server_ip, str(port))) as client:
        life = tools.tcplife(rport=port)
        life_server = tools.tcplife(lport=port, name="life_server")
        connect = tools.tcpconnect(pid=client.pid)
        accept = tools.tcpaccept(lport=port)
        states = tools.tcpstates(rport=port)
        client.release()
        assert int(client.wait_output()) == n * tx
        assert server.wait_output() == "served"
        time.sleep(0.3)
        for run in (life, life_server, connect, accept, states):
            run.stop()
    lives = life.df
    assert len(lives) == n and set(lives["pid"]) == {client.pid}
    assert set(lives["tx_bytes"]) == {rx} and set(lives["rx_bytes"]) == {tx}
    assert set(lives["raddr"]) == {lab.server_ip} and set(lives["laddr"]) == {lab.client_ip}
    served = life_server.df
    assert len(served) == n and set(served["pid"]) == {server.pid}
    assert set(served["tx_bytes"]) == {tx} and set(served["rx_bytes"]) == {rx}
    conns = connect.df
    assert len(conns) == n and conns["established"].all() and set(conns["rport"]) == {port}
    assert sorted(conns["lport"]) == sorted(lives["lport"])
    acc = accept.df
    assert len(acc) == n and set(acc["pid"]) == {server.pid}
    assert sorted(acc["rport"]) == sorted(lives["lport"])
    moves = states.df.groupby(["oldstate", "newstate"]).size().to_dict()
    assert moves[("CLOSE", "SYN_SENT")] == n and moves[("SYN_SENT", "ESTABLISHED")] == n
    assert sum(v for (o, s), v in moves.items() if s == "CLOSE") == n


def test_tcpconnect_reports_refused_connections(no_leaks, lab):
    code = f"""
    import socket
    for _ in range(3):
        try:
            socket.create_connection(({lab.server_ip!r}, 5601), timeout=5)
        except ConnectionRefusedError:
            pass
    """
    with Gated(code, netns=lab.client) as client:
        run = tools.tcpconnect(pid=client.pid)
        client.release()
        client.proc.wait(30)
        settle(run)
    df = run.df
    assert len(df) == 3 and not df["established"].any() and set(df["state"]) == {"CLOSE"}


def test_tcpretrans_matches_the_kernels_retransmit_count(no_leaks, lab):
    rx, port = 300_000, 5602
    # one segment per packet, so each retransmission the tool sees is one RetransSegs counts
    subprocess.run(["ip", "-n", lab.client, "link", "set", lab.client_if, "gso_max_segs",
                    "1"], check=True)
    server = serve(lab, 1, rx, 10, port)
    code = f"""
    import socket
    c = socket.create_connection(({lab.server_ip!r}, {port}))
    print("connected", flush=True)
    sys.stdin.readline()
    c.sendall(b"x" * {rx})
    c.shutdown(socket.SHUT_WR)
    print(len(c.recv(100)), flush=True)
    """
    with server, Gated(code, netns=lab.client) as client:
        run = tools.tcpretrans(rport=port)
        client.release()
        assert client.wait_output() == "connected"
        before = lab.retransmits(lab.client)
        with lab.dropping():  # the client's data is lost on the way, and sent again
            client.release()
            time.sleep(1.0)
        assert client.wait_output(60) == "10"
        time.sleep(0.3)
        after = lab.retransmits(lab.client)
        run.stop()
    df = run.df
    assert after - before > 0 and len(df) == after - before
    assert set(df["raddr"]) == {lab.server_ip} and set(df["rport"]) == {port}
    assert run.table("counts")["retransmits"].sum() == len(df)


# -- memory -------------------------------------------------------------------------------


def test_oomkill_names_the_victim_and_its_trigger(no_leaks):
    group = f"/sys/fs/cgroup/memory/ebpf_magic_oom_{os.getpid()}"
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("needs the cgroup v1 memory controller at /sys/fs/cgroup/memory")
    os.mkdir(group)
    try:
        with open(f"{group}/memory.limit_in_bytes", "w") as f:
            f.write(str(32 << 20))
        code = f"""
        import os
        with open({group + '/cgroup.procs'!r}, "w") as f:
            f.write(str(os.getpid()))
        hog = []
        while True:
            hog.append(bytearray(1 << 20))
        """
        with Gated(code) as child:
            run = tools.oomkill()
            child.release()
            assert child.proc.wait(60) == -signal.SIGKILL
            settle(run)
    finally:
        os.rmdir(group)
    df = run.df[run.df["pid"] == child.pid]
    assert len(df) == 1
    row = df.iloc[0]
    assert row["trigger_pid"] == child.pid and row["comm"] == row["trigger_comm"]
    assert 16 << 10 <= row["anon_rss_kb"] <= 40 << 10


# -- recordings, listings, the magic --------------------------------------------------------


def test_a_saved_tool_run_replays_with_its_tables(no_leaks, tmp_path):
    code = """
    import os
    for _ in range(77):
        os.getppid()
    """
    with Gated(code) as child:
        run = tools.syscount(pid=child.pid, name="calls")
        child.release()
        child.proc.wait(30)
        time.sleep(0.2)
        path = run.save(tmp_path / "calls.bpfrec")
        live = run.df
        run.stop()
    replayed = tools.load(path)
    assert isinstance(replayed, tools.ToolRun) and replayed.tool.name == "syscount"
    assert replayed.options["pid"] == child.pid and not replayed.running
    pd.testing.assert_frame_equal(replayed.df, live, check_dtype=False)
    assert replayed.df.set_index("syscall").loc["getppid", "calls"] == 77
    assert list(replayed.table_names) == ["main"]
    ax = replayed.plot()
    assert ax.get_title() == "system calls"


def test_a_stopped_run_keeps_its_tables():
    with Gated("import os\nos.getppid()\n") as child:
        run = tools.syscount(pid=child.pid)
        child.release()
        child.proc.wait(30)
        time.sleep(0.2)
        run.stop()
    assert run.df.set_index("syscall").loc["getppid", "calls"] == 1
    assert not run.running and run.prog_ids() == []


def test_listing_says_which_tools_this_kernel_runs():
    df = tools.listing()
    assert list(df["tool"]) == list(tools.BUILTIN)
    assert df["available"].all()
    row = df.set_index("tool").loc["tcpaccept"]
    assert "kfunc:inet_csk_accept" in row["probes"] and row["variant"] == "syscalls"


def test_every_tool_starts_and_stops_cleanly(no_leaks):
    for name in tools.BUILTIN:
        run = tools.get(name).start()
        try:
            assert run.attached, name
            assert isinstance(run.df, pd.DataFrame), name
        finally:
            run.stop()
        assert run.prog_ids() == []


def test_magic_binds_a_tool_lists_tools_and_replays(shell, tmp_path, no_leaks):
    with Gated("import os\nfor _ in range(12): os.getppid()\n") as child:
        shell.run_line_magic("bpf", f"tool syscount -p {child.pid} --name calls -q")
        run = shell.user_ns["calls"]
        assert isinstance(run, tools.ToolRun) and run.options["pid"] == child.pid
        assert "calls" in list(shell.run_line_magic("bpf", "list")["name"])
        child.release()
        child.proc.wait(30)
        time.sleep(0.2)
        shell.run_line_magic("bpf", f"save calls {tmp_path / 'calls.bpfrec'}")
        shell.run_line_magic("bpf", "stop calls")
    assert not run.running and run.df.set_index("syscall").loc["getppid", "calls"] == 12
    shell.run_line_magic("bpf", f"load again {tmp_path / 'calls.bpfrec'}")
    again = shell.user_ns["again"]
    assert isinstance(again, tools.ToolRun)
    assert again.df.set_index("syscall").loc["getppid", "calls"] == 12
    listing = shell.run_line_magic("bpf", "tool list")
    assert list(listing.columns) == ["tool", "answers", "probes", "available", "variant"]


def test_magic_rerun_replaces_the_running_tool(shell, no_leaks):
    shell.run_line_magic("bpf", "tool runqlat -q")
    first = shell.user_ns["runqlat"]
    shell.run_line_magic("bpf", "tool runqlat --per-process -q")
    second = shell.user_ns["runqlat"]
    assert not first.running and second.running and second.options["per_process"]
    shell.run_line_magic("bpf", "stop runqlat")


def test_magic_refuses_bad_options_before_stopping_anything(shell, no_leaks):
    from IPython.core.error import UsageError

    from ebpf_magic.errors import OptionError

    shell.run_line_magic("bpf", "tool runqlat -q")
    running = shell.user_ns["runqlat"]
    with pytest.raises(OptionError, match="-p/--pid: wants a whole number, got 'nope'"):
        shell.run_line_magic("bpf", "tool runqlat -p nope")
    with pytest.raises(OptionError, match="unrecognized"):
        shell.run_line_magic("bpf", "tool runqlat --no-such-option")
    with pytest.raises(UsageError, match="no tool named 'runqlatt'"):
        shell.run_line_magic("bpf", "tool runqlatt")
    assert running.running
    shell.run_line_magic("bpf", "stop runqlat")


def test_options_narrow_to_one_process_exactly(no_leaks):
    code = """
    import os
    for _ in range(50):
        os.getppid()
    """
    with Gated(code) as a, Gated(code) as b:
        only_a = tools.syscount(pid=a.pid, per_process=True)
        both = tools.syscount(per_process=True, name="both")
        a.release()
        b.release()
        a.proc.wait(30)
        b.proc.wait(30)
        settle(only_a)
        both.stop()
    getppid = only_a.df[only_a.df["syscall"] == "getppid"]
    assert list(getppid["pid"]) == [a.pid] and list(getppid["calls"]) == [50]
    seen = both.df[both.df["syscall"] == "getppid"].set_index("pid")["calls"]
    assert seen[a.pid] == 50 and seen[b.pid] == 50


def test_ring_buffer_losses_are_counted_not_hidden(no_leaks):
    # a burst bigger than the ring: every exec is in the table or counted as lost
    code = """
    import os
    for _ in range(300):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(pid, 0)
    """
    with Gated(code) as child:
        run = tools.execsnoop(ppid=child.pid, stream_options={"max_rows": 100})
        child.release()
        child.proc.wait(60)
        settle(run, 0.5)
    stats = run.events["exits"].stats
    assert stats["received"] + stats["lost_kernel"] == 300
    assert stats["held"] == 100 and stats["dropped_cap"] == stats["received"] - 100


def test_log2_buckets_in_c_match_the_histograms_python():
    from ebpf_magic.data import histograms
    from ebpf_magic.program import Program
    from ebpf_magic.tools.snippets import LOG2

    values = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, 1 << 40, (1 << 63) + 5]
    source = LOG2 + f"""
    const volatile u32 targ_pid = 0;
    struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, {len(values)});
              __type(key, u32); __type(value, u64); }} inputs SEC(".maps");
    struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, {len(values)});
              __type(key, u32); __type(value, u32); }} slots SEC(".maps");
    u32 next = 0;
    SEC("tracepoint/syscalls/sys_enter_getppid")
    int run(void *ctx) {{
        if ((bpf_get_current_pid_tgid() >> 32) != targ_pid) return 0;
        u32 i = next++;
        u64 *v = bpf_map_lookup_elem(&inputs, &i);
        if (!v) return 0;
        u32 slot = log2_slot(*v);
        bpf_map_update_elem(&slots, &i, &slot, 0);
        return 0;
    }}
    """
    with Program(source, backend="libbpf", globals={"targ_pid": os.getpid()}) as prog:
        for i, v in enumerate(values):
            prog.maps["inputs"][i] = v
        for _ in values:  # one value per call
            os.getppid()
        got = prog.maps["slots"].df["value"].tolist()
    assert got == histograms.log2_slots(np.array(values, dtype=np.uint64)).tolist()


def test_the_documented_tool_of_ones_own_runs(no_leaks, shell):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tools.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/tools.md", "exec"), namespace)  # the docs' example, as written
    try:
        workload = """
        import os
        for _ in range(10):
            os.write(1, b"x" * 100)
        for _ in range(3):
            os.write(1, b"y" * 5000)
        """
        with Gated(workload) as child:
            run = namespace["writesize"].start(pid=child.pid)
            shell.run_line_magic("bpf", f"tool writesize -p {child.pid} --name ws -q")
            child.release()
            child.proc.communicate(timeout=30)
            run.stop()
            shell.run_line_magic("bpf", "stop ws")
        for df in (run.df, shell.user_ns["ws"].df):
            counts = df[df["count"] > 0].set_index("low_bytes")["count"].to_dict()
            assert counts == {64: 10, 4096: 3} and set(df["pid"]) == {child.pid}
    finally:
        tools.unregister("writesize")


def test_tool_function_signature_and_help():
    import inspect

    sig = inspect.signature(tools.runqlat)
    assert list(sig.parameters) == ["name", "pid", "tid", "comm", "milliseconds",
                                    "per_process", "per_thread", "interval"]
    assert "run queue" in tools.runqlat.__doc__ and "-P, --per-process" in tools.runqlat.__doc__
