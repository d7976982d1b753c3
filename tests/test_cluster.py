"""One cell on two engines of a real ipyparallel cluster, one of them behind a veth pair.

The module starts one cluster for all its tests: a controller listening on the host side
of a veth pair, an engine on the host, and an engine in a network namespace of its own
(with its own host name) that reaches the controller only over that veth link. Both
engines share this machine's kernel, so each one's program sees the other's calls too:
every count is taken per thread id, the thread that engine's workload ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import ipyparallel as ipp
import pandas as pd
import pytest
from test_api import conforms, conforms_all

from ebpf_magic import cluster, sessions
from ebpf_magic.api import StreamView
from ebpf_magic.cluster import ClusterWarning, engine
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import runstats
from ebpf_magic.present import plots
from ebpf_magic.program import running

from conftest import ATTEMPTS, loaded_prog_ids

pytestmark = pytest.mark.kernel

NS_HOST = "ebpf-ns-engine"  # the namespaced engine's host name (its own UTS namespace)
COUNTS = """BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}"""
EVENTS = """struct call { u32 tid; u32 pid; u64 ts; };
BPF_PERF_OUTPUT(calls);
int on_getppid(void *ctx) {
    struct call c = {};
    u64 id = bpf_get_current_pid_tgid();
    c.tid = id;
    c.pid = id >> 32;
    c.ts = bpf_ktime_get_ns();
    calls.perf_submit(ctx, &c, sizeof(c));
    return 0;
}"""
GETPPID = ["tracepoint:syscalls:sys_enter_getppid=on_getppid"]


def workload(n: int) -> int:
    """Call getppid() ``n`` times on the engine; return the calling thread's id."""
    import os
    import threading

    for _ in range(n):
        os.getppid()
    return threading.get_native_id()


def getsids(n: int) -> int:
    """Call getsid() ``n`` times on the engine; return the calling thread's id."""
    import os
    import threading

    for _ in range(n):
        os.getsid(0)
    return threading.get_native_id()


def addresses() -> str:
    """The engine's IPv4 addresses, as ``ip -o -4 addr`` lists them."""
    import subprocess

    return subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout


# Functions run on engines carry their code, not a reference to this module, which the
# engines cannot import: ipyparallel runs a function of a "__main__"-like module there
# in the engine's own namespace.
for _f in (workload, getsids, addresses):
    _f.__module__ = "__engine__"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


class Net:
    """A network namespace joined to the host by a veth pair, removed on :meth:`remove`."""

    def __init__(self) -> None:
        tag = os.getpid() % 10000
        self.ns, self.host_if, self.ns_if = f"ebpfm{tag}", f"ebpfmh{tag}", f"ebpfmn{tag}"
        octet = 16 + tag % 200
        self.host_ip, self.ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.host_if, check=False)

    def exists(self) -> bool:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return self.ns in names or f" {self.host_if}@" in links


class Cluster:
    """What the tests get: the client, each engine's pid and host, the namespaced engine."""

    def __init__(self, client, pids: dict[int, int], hosts: dict[int, str], ns_engine: int,
                 ns_process: subprocess.Popen, net: Net, client_file: Path) -> None:
        self.client, self.pids, self.hosts = client, pids, hosts
        self.client_file = client_file
        self.ns_engine, self.ns_process, self.net = ns_engine, ns_process, net
        self.host_engine = next(i for i in pids if i != ns_engine)

    def run(self, counts: dict[int, int]) -> dict[int, int]:
        """Each engine's workload at once: ``{engine: calls}`` -> ``{engine: thread id}``."""
        results = {i: self.client[i].apply_async(workload, n) for i, n in counts.items()}
        return {i: r.get(60) for i, r in results.items()}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs root, ip and unshare to make a network namespace and veth pair")
    net = Net()
    ns_process = None
    ipc = None
    try:
        ipc = ipp.Cluster(n=1, controller_ip=net.host_ip, log_level=40,
                          profile_dir=str(tmp_path_factory.mktemp("ipython-profile")))
        ipc.start_controller_sync()
        ipc.start_engines_sync(n=1)
        url = Path(ipc.profile_dir, "security", f"ipcontroller-{ipc.cluster_id}-engine.json")
        ns_process = subprocess.Popen(
            ["ip", "netns", "exec", net.ns, "unshare", "--uts", "sh", "-c",
             f'hostname {NS_HOST} && exec "$0" -m ipyparallel.engine --file="$1" '
             "--log-level=40", sys.executable, str(url)])
        client = ipc.connect_client_sync()
        client.wait_for_engines(2, timeout=120)
        facts = client[:].apply_sync(engine.facts)
        pids = {i: f["pid"] for i, f in zip(client.ids, facts, strict=True)}
        hosts = {i: f["host"] for i, f in zip(client.ids, facts, strict=True)}
        [ns_engine] = [i for i, h in hosts.items() if h == NS_HOST]
        yield Cluster(client, pids, hosts, ns_engine, ns_process, net,
                      url.with_name(url.name.replace("-engine.json", "-client.json")))
        client.close()
    finally:
        if ipc is not None:
            with contextlib.suppress(Exception):
                ipc.stop_cluster_sync()
        if ns_process is not None:
            with contextlib.suppress(ProcessLookupError):
                ns_process.kill()
            ns_process.wait(10)
        net.remove()
        assert not net.exists(), "namespace or veth left behind"


@pytest.fixture
def engines_of(engines):
    """The cluster as ebpf_magic.cluster.connect gives it, with a short deadline."""
    return cluster.connect(client=engines.client, timeout=20)


def gone(ids: set[int], timeout: float = 10.0) -> bool:
    """True once none of ``ids`` is loaded in the kernel."""
    deadline = time.monotonic() + timeout
    while ids & loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not ids & loaded_prog_ids()


def test_engines_are_on_two_hosts_one_over_veth(engines):
    assert set(engines.hosts.values()) == {os.uname().nodename, NS_HOST}
    ns_addr = engines.client[engines.ns_engine].apply_sync(addresses)
    assert engines.net.ns_ip in ns_addr and engines.net.host_ip not in ns_addr


def test_no_controller_is_a_short_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    began = time.monotonic()
    with pytest.raises(cluster.ClusterError, match="cannot reach the ipyparallel controller") \
            as e:
        cluster.connect(profile="nowhere", timeout=2)
    assert "ipcluster start" in e.value.hint and time.monotonic() - began < 10


def test_connect_takes_the_users_client_first_or_says_what_it_wants(engines):
    got = cluster.connect(engines.client, timeout=20)  # connect(rc), as a user writes it
    assert got.client is engines.client
    assert sorted(got.ids) == sorted(engines.hosts)
    for wrong in (object(), 42):
        with pytest.raises(cluster.ClusterError, match="takes an ipyparallel.Client or a "
                           "profile's name") as e:
            cluster.connect(wrong)
        assert "connect(rc)" in e.value.hint
    with pytest.raises(cluster.ClusterError, match="two profiles named"):
        cluster.connect("a", profile="b")


def test_map_counts_exact_per_host(engines, engines_of):
    prog = cluster.ClusterProgram(COUNTS, name="counts", engines=engines_of, attach=GETPPID)
    ids = set(prog.prog_ids())
    try:
        assert sorted(prog.attached_on) == sorted(engines.pids)
        assert prog in running()  # stopped at exit like a local program
        conforms_all(prog)  # members and signatures of the read API, not just names
        assert ids and ids <= loaded_prog_ids()
        want = {engines.host_engine: 1234, engines.ns_engine: 777}
        tids = engines.run(want)
        df = prog.maps["calls"].df
        assert list(df.columns[:2]) == ["host", "engine"]
        for i, n in want.items():
            mine = df[(df["engine"] == i) & (df["key"] == tids[i])]
            assert mine["value"].tolist() == [n]
            assert set(mine["host"]) == {engines.hosts[i]}
        assert not prog.missing
    finally:
        prog.stop()
    assert gone(ids) and prog not in running()
    with pytest.raises(Exception, match="stopped"):
        _ = prog.maps["calls"].df


def test_overhead_sums_each_function_over_the_hosts(engines, engines_of, tmp_path):
    """Both engines share this kernel, so each one's uprobe runs for both workloads: each
    host's run count is every getsid() call, and the sum is twice that."""
    prog = cluster.ClusterProgram(COUNTS.replace("on_getppid", "count"), name="cost",
                                  engines=engines_of, attach=["uprobe:c:getsid=count"])
    try:
        want = {engines.host_engine: 1500, engines.ns_engine: 700}
        tids = {i: engines.client[i].apply_sync(getsids, n) for i, n in want.items()}
        calls = prog.maps["calls"].df
        df = prog.overhead
        saved = prog.save(tmp_path / "cost.bpfrec")
    finally:
        prog.stop()
    for i, n in want.items():  # each host saw each workload's calls, on that thread
        assert calls[calls["key"] == tids[i]].groupby("engine")["value"].sum().to_dict() == \
            {i: n for i in want}
    assert list(df.columns) == ["function", "probes", "hosts", "runs", "run_time_ns",
                                "seconds", "runs_per_s", "ns_per_run", "cpu_pct"]
    [row] = df.to_dict("records")
    assert (row["function"], row["probes"], row["hosts"]) == ("count", "uprobe:c:getsid", 2)
    assert row["runs"] == int(calls["value"].sum()) >= 2 * sum(want.values())
    assert row["ns_per_run"] == pytest.approx(row["run_time_ns"] / row["runs"])
    # the recording keeps the sum (as it was when saved: the same runs, a longer window)
    same = ["function", "probes", "hosts", "runs", "run_time_ns"]
    back = sessions.load(saved).overhead
    pd.testing.assert_frame_equal(back[same], df[same], check_exact=True)
    assert back["seconds"].iloc[0] >= row["seconds"]


def test_events_exact_per_host(engines, engines_of):
    prog = cluster.ClusterProgram(EVENTS, name="events", engines=engines_of, attach=GETPPID)
    try:
        want = {engines.host_engine: 321, engines.ns_engine: 456}
        tids = engines.run(want)
        deadline = time.monotonic() + 10
        while True:
            df = prog.events["calls"].df
            got = {i: int(((df["engine"] == i) & (df["tid"] == tids[i])).sum()) for i in want}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == want, (df.head(), df.dtypes, tids, prog.events['calls'].stats)
        assert list(df.columns[:4]) == ["host", "engine", "tid", "pid"]
        assert {i: set(df[df["engine"] == i]["host"]) for i in want} == {
            i: {engines.hosts[i]} for i in want}
        assert prog.events["calls"].stats["lost_kernel"] == 0
        conforms(prog.events["calls"], StreamView)
        by_host = prog.events["calls"].stats_by_host
        assert sorted(by_host["engine"]) == sorted(want)
        # plots take the merged frame: a rate per host counts each host's events
        rates = plots.rate_frame(df, time="ts", interval="1s", by="host")
        assert sorted(rates.columns) == sorted(engines.hosts.values())
        assert (rates.sum() * 1).astype(int).to_dict() == \
            df.groupby("host", observed=True).size().to_dict()
    finally:
        prog.stop()


XDP = """BPF_ARRAY(packets, u64, 1);
int on_packet(struct xdp_md *ctx) {
    packets.increment(0);
    return XDP_PASS;
}"""


def test_a_failing_host_does_not_stop_the_others(engines, engines_of):
    # the namespace's end of the veth pair exists on one host only
    spec = f"xdp:{engines.net.ns_if}=on_packet"
    prog = cluster.ClusterProgram(XDP, name="partial", engines=engines_of, attach=[spec])
    try:
        assert list(prog.attached_on) == [engines.ns_engine]
        assert list(prog.missing) == [engines.host_engine]
        assert "AttachError" in prog.missing[engines.host_engine].reason
        assert engines.net.ns_if in prog.missing[engines.host_engine].reason
        report = prog.report()
        assert f"{NS_HOST} (engine {engines.ns_engine}): attached xdp:" in report
        assert f"(engine {engines.host_engine}): FAILED, AttachError" in report
        with pytest.warns(ClusterWarning, match="no rows from 1 host"):
            df = prog.maps["packets"].df
        assert df["engine"].tolist() == [engines.ns_engine]
    finally:
        prog.stop()


HIST = """BPF_HISTOGRAM(dist);
int on_getppid(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    if (tid == TID_A) dist.increment(1);
    if (tid == TID_B) dist.increment(3);
    return 0;
}"""


def test_histograms_merge_across_hosts_or_per_host(engines, engines_of):
    a, b = engines.host_engine, engines.ns_engine
    tids = engines.run({a: 0, b: 0})  # the threads the workloads run on
    prog = cluster.ClusterProgram(HIST, name="hist", engines=engines_of, attach=GETPPID,
                                  defines={"TID_A": tids[a], "TID_B": tids[b]})
    try:
        assert engines.run({a: 30, b: 12}) == tids
        # both hosts share one kernel, so each host's histogram counts both workloads
        merged = prog.maps["dist"].hist()  # linear: the program counts constant slots
        assert merged.kind == "linear"
        assert merged.df[["slot", "low", "high", "count"]].values.tolist() == [
            [1, 1, 2, 60], [2, 2, 3, 0], [3, 3, 4, 24]]
        per_host = prog.maps["dist"].hist(per_host=True)
        assert per_host.section_columns == ["host"]
        assert {h: part["count"].tolist() for (h,), part in per_host.sections()} == {
            engines.hosts[a]: [30, 0, 12], engines.hosts[b]: [30, 0, 12]}
        assert f"@dist[{NS_HOST}]:" in str(per_host)
        ax = per_host.plot()  # one group of bars per host
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(
            engines.hosts.values())
        assert sorted(p.get_height() for p in ax.patches) == [0, 0, 12, 12, 30, 30]
        browser = prog.browse(interval=3600)
        try:
            browser.model.select("dist")
            view = browser.model.filter(NS_HOST)
            assert set(view["host"]) == {NS_HOST} and view["count"].sum() == 42
        finally:
            browser.close()
    finally:
        prog.stop()


BPFTRACE = """tracepoint:syscalls:sys_enter_getppid { @[tid] = count(); @h[tid] = hist(tid % 7);
    printf("%d\\n", tid); }"""


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="bpftrace is not installed "
                    "(scripts/setup.sh installs it)")
def test_bpftrace_counts_exact_per_host(engines, engines_of):
    prog = cluster.ClusterProgram(BPFTRACE, name="bt", engines=engines_of, frontend="bpftrace")
    ids = set(prog.prog_ids())
    try:
        assert prog.backend == "bpftrace" and sorted(prog.attached_on) == sorted(engines.pids)
        assert ids and ids <= loaded_prog_ids()
        want = {engines.host_engine: 321, engines.ns_engine: 123}
        tids = engines.run(want)
        df = prog.maps["@"].df
        assert list(df.columns) == ["host", "engine", "tid", "count"]
        for i, n in want.items():
            mine = df[(df["engine"] == i) & (df["tid"] == tids[i])]
            assert mine["count"].tolist() == [n] and set(mine["host"]) == {engines.hosts[i]}
        hist = prog.maps["@h"].hist(per_host=True)
        mine = hist.df[hist.df["tid"].isin(list(tids.values()))]
        assert mine["count"].sum() == 2 * sum(want.values())  # each host sees both workloads
        deadline = time.monotonic() + 10
        while True:
            lines = prog.events["printf"].df
            seen = {i: int((lines["tid"] == t).sum()) for i, t in tids.items()}
            if seen == {i: 2 * n for i, n in want.items()} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == {i: 2 * n for i, n in want.items()}  # both hosts print both workloads
    finally:
        prog.stop()
    assert gone(ids)


RECORDED = """BPF_HASH(calls, u32, u64);
struct call { u32 tid; u32 pid; };
BPF_PERF_OUTPUT(out);
int on_getppid(void *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct call c = {tid, id >> 32};
    calls.increment(tid);
    out.perf_submit(ctx, &c, sizeof(c));
    return 0;
}"""
REPLAY = """
import json, sys
sys.modules["bcc"] = None  # no backend: importing BCC fails
sys.modules["ipyparallel"] = None  # and no cluster
import ebpf_magic
prog = ebpf_magic.load(sys.argv[1])
tids = json.loads(sys.argv[2])
calls, out = prog.maps["calls"].df, prog.events["out"].df
print(json.dumps({
    "calls": calls[calls["key"].isin(tids)].astype({"host": str}).values.tolist(),
    "out": out[out["tid"].isin(tids)].astype({"host": str}).values.tolist(),
    "hosts": [(h["engine"], h["host"], h["state"]) for h in prog.recording.host["hosts"]],
    "live": ebpf_magic.is_live()}, default=int))
"""


def _rows(df, column: str, tids: list[int]) -> list[list]:
    mine = df[df[column].isin(tids)].astype({"host": str})
    return [[v.item() if hasattr(v, "item") else v for v in row] for row in mine.values.tolist()]


def test_recording_replays_as_nobody_with_the_same_frames(engines, engines_of):
    from test_recording import run_unprivileged

    prog = cluster.ClusterProgram(RECORDED, name="recorded", engines=engines_of,
                                  attach=GETPPID)
    with tempfile.TemporaryDirectory(prefix="ebpf_cluster_replay_") as tmp:
        try:
            want = {engines.host_engine: 70, engines.ns_engine: 30}
            tids = sorted(engines.run(want).values())
            deadline = time.monotonic() + 10
            while len(_rows(prog.events["out"].df, "tid", tids)) < 2 * sum(want.values()) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)  # each host's program sees both workloads
            calls = _rows(prog.maps["calls"].df, "key", tids)
            out = _rows(prog.events["out"].df, "tid", tids)
            assert len(calls) == 4 and len(out) == 2 * sum(want.values())
            path = prog.save(Path(tmp) / "cluster.bpfrec")
        finally:
            prog.stop()
        Path(tmp).chmod(0o755)
        path.chmod(0o644)
        script = Path(tmp) / "replay.py"
        script.write_text(REPLAY)
        script.chmod(0o644)
        done = run_unprivileged([sys.executable, str(script), str(path), json.dumps(tids)],
                                Path(tmp))
    assert done.returncode == 0, done.stderr
    replayed = json.loads(done.stdout.splitlines()[-1])
    assert replayed["calls"] == calls and replayed["out"] == out
    assert sorted(replayed["hosts"]) == sorted(
        [i, h, "ran"] for i, h in engines.hosts.items())
    assert replayed["live"] is False


def test_cell_on_all_hosts_reports_each_and_lists_them(engines, engines_of, shell, capsys):
    shell.run_cell("%%bpf slow --targets all -a tracepoint:syscalls:sys_enter_getppid\n" + COUNTS)
    out = capsys.readouterr().out
    for i, host in engines.hosts.items():
        assert f"slow on {host} (engine {i}): attached tracepoint:syscalls:sys_enter_getppid" \
            in out
    prog = shell.user_ns["slow"]
    ids = set(prog.prog_ids())
    want = {engines.host_engine: 55, engines.ns_engine: 89}
    tids = engines.run(want)
    df = prog.maps["calls"].df
    assert {i: df[(df["engine"] == i) & (df["key"] == tids[i])]["value"].tolist()
            for i in want} == {i: [n] for i, n in want.items()}
    [row] = shell.run_line_magic("bpf", "list").to_dict("records")
    assert row["name"] == "slow"
    assert row["state"] == "running on " + ", ".join(engines.hosts[i] for i in sorted(want))
    shell.run_line_magic("bpf", "stop slow")
    assert gone(ids)


def test_targets_choose_engines_by_id_or_host(engines, engines_of, shell, capsys):
    shell.run_cell(f"%%bpf one --targets {NS_HOST} -a tracepoint:syscalls:sys_enter_getppid\n"
                   + COUNTS)
    prog = shell.user_ns["one"]
    assert list(prog.attached_on) == [engines.ns_engine]
    shell.run_cell(f"%%bpf one --targets {engines.host_engine} "
                   "-a tracepoint:syscalls:sys_enter_getppid\n" + COUNTS)
    assert list(shell.user_ns["one"].attached_on) == [engines.host_engine]
    assert not prog.running  # the re-run stopped the first everywhere
    result = shell.run_cell("%%bpf two --targets nosuchhost\n" + COUNTS)
    assert isinstance(result.error_in_exec, cluster.ClusterError)
    assert "nosuchhost" in str(result.error_in_exec) and NS_HOST in str(result.error_in_exec)
    shell.run_line_magic("bpf", "stop one")


def has_program(name: str) -> bool:
    """Whether the engine runs a program called ``name``."""
    from ebpf_magic.cluster import engine

    try:
        engine.program(name)
    except Exception:  # noqa: BLE001 - any failure means it has none
        return False
    return True


has_program.__module__ = "__engine__"


def test_interrupted_start_leaves_nothing_on_any_engine(engines, engines_of):
    sent = len(engines.client.history)
    for i in engines.pids:  # the engines are busy, so the start waits behind this
        engines.client[i].apply_async(time.sleep, 2.0)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            cluster.ClusterProgram(COUNTS, name="interrupted", engines=engines_of,
                                   attach=GETPPID)
    finally:
        timer.join()
    assert len(engines.client.history) - sent >= 4, "interrupted before the start was sent"
    # each engine started it after the sleep, then stopped it
    assert engines.client[:].apply_sync(has_program, "interrupted") == [False, False]


def test_two_notebooks_programs_of_one_name_do_not_replace_each_other(engines, engines_of):
    other = cluster.connect(client=engines.client, timeout=20)  # as a second notebook would
    first = cluster.ClusterProgram(COUNTS, name="same", engines=engines_of, attach=GETPPID)
    try:
        second = cluster.ClusterProgram(COUNTS, name="same", engines=other, attach=GETPPID)
        try:
            tids = engines.run({i: 25 for i in engines.pids})
            for prog in (first, second):
                df = prog.maps["calls"].df
                assert df[df["key"].isin(tids.values())]["value"].tolist() == [25] * 4
        finally:
            second.stop()
        assert first.running and first.missing == {}
        # the second's stop took nothing of the first's: its counts stand, and it still counts
        df = first.maps["calls"].df
        assert df[df["key"].isin(tids.values())]["value"].tolist() == [25] * 4
        more = engines.run({i: 10 for i in engines.pids})
        df = first.maps["calls"].df
        # each host's program counts both workloads; a thread may be the first round's again
        assert sorted(df[df["key"].isin(more.values())]["value"].tolist()) == sorted(
            10 + 25 * (tid in tids.values()) for tid in more.values() for _ in range(2))
    finally:
        first.stop()


EXITS = """
import sys
import ipyparallel
from ebpf_magic import cluster
engines = cluster.connect(client=ipyparallel.Client(sys.argv[1]))
prog = cluster.ClusterProgram(sys.argv[2], name="left-running",
                              attach=["tracepoint:syscalls:sys_enter_getppid=on_getppid"])
print(sorted(prog.attached_on))
"""


def test_exit_of_the_notebook_process_stops_the_program_everywhere(engines):
    done = subprocess.run([sys.executable, "-c", EXITS, str(engines.client_file), COUNTS],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == str(sorted(engines.pids))
    assert engines.client[:].apply_sync(has_program, "left-running") == [False, False]


def test_a_killed_notebook_leaves_programs_that_stop_all_releases(engines):
    script = EXITS.replace("print(sorted(prog.attached_on))",
                           "print(sorted(prog.attached_on), flush=True)\n"
                           "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", script, str(engines.client_file), COUNTS],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    left = engines.client[:].apply_sync(engine.programs)
    assert [sorted(p.values()) for p in left] == [["left-running"]] * 2
    assert engines.client[:].apply_sync(engine.stop_all) == [list(p) for p in left]
    assert engines.client[:].apply_sync(engine.programs) == [{}, {}]


def test_unreachable_engine_times_out_with_a_message(engines):
    engines_short = cluster.connect(client=engines.client, timeout=2)
    prog = cluster.ClusterProgram(COUNTS, name="partition", engines=engines_short,
                                  attach=GETPPID)
    try:
        engines.run({i: 10 for i in engines.pids})
        # the namespace's end of the veth link goes down: the host side stays up (its
        # address is the controller's), the namespaced engine is cut off
        _ip("-n", engines.net.ns, "link", "set", engines.net.ns_if, "down")
        try:
            began = time.monotonic()
            with pytest.warns(ClusterWarning, match=f"{NS_HOST} .*: no answer within 2 s"):
                df = prog.maps["calls"].df
            assert time.monotonic() - began < 5
            assert set(df["engine"]) == {engines.host_engine}
            assert "no answer" in prog.missing[engines.ns_engine].reason
        finally:
            _ip("-n", engines.net.ns, "link", "set", engines.net.ns_if, "up")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the link is back: the host answers again
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ClusterWarning)
                df = prog.maps["calls"].df
            if not prog.missing:
                break
        assert set(df["engine"]) == set(engines.pids)
    finally:
        prog.stop()


def test_a_start_that_times_out_is_stopped_on_that_engine(engines, engines_of):
    late, prompt = engines.ns_engine, engines.host_engine
    engines.client[late].apply_async(time.sleep, 10.0)  # the start waits behind this
    prog = cluster.ClusterProgram(COUNTS, name="late", engines=engines_of, attach=GETPPID,
                                  timeout=6)  # long enough to compile on the other
    try:
        assert list(prog.attached_on) == [prompt]
        assert "no answer within 6 s" in prog.missing[late].reason
        # the engine ran the start once the sleep ended, and then its stop
        assert engines.client[late].apply_sync(has_program, "late") is False
        assert engines.client[late].apply_sync(engine.programs) == {}
    finally:
        prog.stop()


def test_saving_keeps_snapshots_and_every_hosts_facts(engines, engines_of, shell, tmp_path):
    shell.run_cell("%%bpf saved --targets all -a tracepoint:syscalls:sys_enter_getppid\n" + COUNTS)
    prog = shell.user_ns["saved"]
    ids = sorted(engines.pids)
    names = ", ".join(engines.hosts[i] for i in ids)
    try:
        taken = sessions.record_snapshots(prog, every=0.2)
        tids = engines.run({i: 40 for i in ids})
        deadline = time.monotonic() + 10
        while len(taken.snapshots) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(taken.snapshots) >= 2
        kept = len(taken.snapshots)
        shell.run_line_magic("bpf", f"save saved {tmp_path / 'anon.bpfrec'} --no-hostname")
        named = sessions.save(prog, tmp_path / "named.bpfrec")
    finally:
        shell.run_line_magic("bpf", "stop saved")
    taken.stop()
    assert set(taken.snapshots[-1].maps["calls"]["engine"]) == set(ids)
    assert prog.host_facts()["hostname"] == names  # the hosts it ran on, once stopped too
    anon = sessions.load(tmp_path / "anon.bpfrec")
    assert len(anon.snapshots) >= kept + 1  # the recorder's, then the final one
    final = anon.maps["calls"].df
    assert sorted(final[final["key"].isin(tids.values())]["value"]) == [40] * 4
    host = anon.recording.host
    assert host["hostname"] is None and "hosts" in host
    assert [(h["engine"], h["host"], h["state"], h["kernel"], h["cpus"]) for h in host["hosts"]
            ] == [(i, None, "ran", os.uname().release, os.cpu_count()) for i in ids]
    host = sessions.load(named).recording.host
    assert host["hostname"] == names and host["cpus"] == len(ids) * os.cpu_count()
    assert [(h["engine"], h["host"]) for h in host["hosts"]] == [
        (i, engines.hosts[i]) for i in ids]


def test_a_read_while_stopping_is_the_stopped_error(engines, engines_of):
    prog = cluster.ClusterProgram(COUNTS, name="stopping", engines=engines_of, attach=GETPPID)
    for i in engines.pids:  # the engines are busy: the stop waits there
        engines.client[i].apply_async(time.sleep, 1.0)
    stopping = threading.Thread(target=prog.stop)
    stopping.start()
    try:
        time.sleep(0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ClusterWarning)  # not "no rows from 2 hosts"
            with pytest.raises(BPFError, match="stopped on every host"):
                _ = prog.maps["calls"].df
    finally:
        stopping.join()
    assert not prog.running


def open_sockets() -> int:
    """Sockets this process holds open."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the directory's own, closed by now
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(link.startswith("socket:") for link in links)


def test_alternating_profiles_keep_one_client_each(engines, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    for name in ("a", "b"):  # two profiles whose controller is the test cluster's
        security = tmp_path / f"profile_{name}" / "security"
        security.mkdir(parents=True)
        (security / "ipcontroller-client.json").symlink_to(engines.client_file)
    first = {p: cluster.current(p) for p in ("a", "b")}
    try:
        assert first["a"].client is not first["b"].client
        sockets = open_sockets()
        for _ in range(4):  # as cells with --profile a, then --profile b, would
            for p in ("a", "b"):
                now = cluster.current(p)
                assert now.client is first[p].client
                assert now.select("all") == sorted(engines.pids)
        assert open_sockets() == sockets
    finally:
        for e in first.values():
            e.close()
    again = cluster.current("a")  # a closed client is connected to again
    try:
        assert again.client is not first["a"].client
        assert again.select("all") == sorted(engines.pids)
    finally:
        again.close()


def test_a_stream_failed_on_every_host_counts_once(engines, engines_of, tmp_path):
    spill = tmp_path / "spill"
    prog = cluster.ClusterProgram(EVENTS, name="spilling", engines=engines_of, attach=GETPPID,
                                  stream_options={"max_rows": 10, "spill": str(spill)})
    try:
        spill.rmdir()
        spill.write_text("")  # the spill directory is gone: spilling fails on every host
        engines.run({i: 50 for i in engines.pids})
        deadline = time.monotonic() + 10
        while prog.events["calls"].stats_by_host["failed"].sum() < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert prog.events["calls"].stats_by_host["failed"].tolist() == [1, 1]
        assert prog.events["calls"].stats["failed"] == 1
    finally:
        prog.stop()


def test_tail_is_the_newest_events_of_all_hosts_by_time(engines, engines_of):
    prog = cluster.ClusterProgram(EVENTS, name="newest", engines=engines_of, attach=GETPPID,
                                  stream_options={"time": {"ts": "monotonic"}})
    try:
        engines.run({engines.host_engine: 5})
        engines.run({engines.ns_engine: 5})
        deadline = time.monotonic() + 10
        while len(prog.events["calls"].df) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)  # each host's program sees both workloads
        for _ in range(50):  # until no event arrives while the tail is read
            before = prog.events["calls"].df
            tail = prog.events["calls"].tail(4)
            after = prog.events["calls"].df
            if len(before) == len(after):
                break
        assert len(after) >= 20 and len(tail) == 4
        newest = after.sort_values("ts", kind="stable").tail(4).reset_index(drop=True)
        pd.testing.assert_frame_equal(tail, newest)
        assert tail["ts"].is_monotonic_increasing
    finally:
        prog.stop()


def test_killed_engine_loses_its_rows_only_and_leaks_nothing(engines, engines_of):
    prog = cluster.ClusterProgram(EVENTS, name="killed", engines=engines_of, attach=GETPPID)
    dead, alive = engines.ns_engine, engines.host_engine
    dead_ids, alive_ids = set(prog.prog_ids(dead)), set(prog.prog_ids(alive))
    assert dead_ids and alive_ids and (dead_ids | alive_ids) <= loaded_prog_ids()
    try:
        tids = engines.run({alive: 100, dead: 100})
        os.kill(engines.pids[dead], signal.SIGKILL)
        assert gone(dead_ids), "the killed engine's programs stayed loaded"
        assert alive_ids <= loaded_prog_ids()
        tids.update(engines.run({alive: 250}))  # the other host keeps streaming
        deadline = time.monotonic() + 10
        while True:
            with pytest.warns(ClusterWarning, match=f"(?s)no rows from 1 host.*{NS_HOST}"):
                df = prog.events["calls"].df
            got = int(((df["engine"] == alive) & (df["tid"] == tids[alive])).sum())
            if got >= 350 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == 350
        assert set(df["engine"]) == {alive}
        miss = prog.missing[dead]
        assert miss.host == NS_HOST and miss.gone
        assert "died" in miss.reason or "left the cluster" in miss.reason
        with pytest.warns(ClusterWarning):
            assert "missing " + NS_HOST in prog.summary()["state"]
    finally:
        began = time.monotonic()
        prog.stop()
        assert time.monotonic() - began < 10
    assert gone(alive_ids)


def identity() -> tuple[int, int]:
    """The engine's user id and effective capability mask."""
    import os

    status = open("/proc/self/status").read()
    return os.getuid(), int(status.split("CapEff:")[1].split()[0], 16)


identity.__module__ = "__engine__"


def environment() -> dict[str, str]:
    """The environment the engine's process was started with."""
    return dict(v.split("=", 1) for v in open("/proc/self/environ").read().split("\0") if v)


environment.__module__ = "__engine__"


# Run as the notebook kernels' account with their capabilities: what a cell could do to an
# engine's process, whose environment and descriptors hold the cluster's key.
KERNEL_REACH = ATTEMPTS + r"""
import json, sys
from ebpf_magic.setup import launcher
launcher.become(launcher.account(), launcher.wanted())
pid = int(sys.argv[1])
print(json.dumps({
    "environ": attempt(lambda: open(f"/proc/{pid}/environ", "rb").read()),
    "fds": attempt(lambda: os.listdir(f"/proc/{pid}/fd")),
    "ptrace": attempt(lambda: ptrace(pid)),
    "signal": attempt(lambda: os.kill(pid, 0)),
}))
"""


def assert_out_of_kernels_reach(pid: int, key: bytes) -> None:
    """The engine holds ``key``, and a notebook kernel's process can neither read nor touch it."""
    held = Path(f"/proc/{pid}/environ").read_bytes() + b"".join(
        Path(f"/proc/{pid}/fd", fd).read_bytes() for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"))
    assert key in held
    done = subprocess.run([sys.executable, "-I", "-c", KERNEL_REACH, str(pid)],
                          capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == dict.fromkeys(("environ", "fds", "ptrace", "signal"),
                                                    "PermissionError")


def assert_confined_engine_counts(client, name: str) -> None:
    """Engine 0 runs as the engines' account with only BPF rights and counts exactly."""
    from ebpf_magic.setup import engine_launcher, launcher

    uid, caps = client[0].apply_sync(identity)
    entry = launcher.account(engine_launcher.ACCOUNT)
    assert uid == entry.pw_uid
    assert caps == launcher.mask(launcher.wanted())
    # nothing of root's environment but the allowlist: filtering it again changes nothing
    env = client[0].apply_sync(environment)
    assert env == launcher.account_env(entry, env, keep=engine_launcher.ENV_KEPT)
    assert env["HOME"] == entry.pw_dir and not any(k.startswith(("PYTHON", "LD_"))
                                                   for k in env)
    prog = cluster.ClusterProgram(COUNTS, name=name, attach=GETPPID,
                                  engines=cluster.connect(client=client, timeout=60))
    try:
        tid = client[0].apply_sync(workload, 42)
        df = prog.maps["calls"].df
        assert df[df["key"] == tid]["value"].tolist() == [42]
        # its launcher passed it a statistics descriptor: what the program costs is measured
        cost = prog.overhead
        assert cost.unmeasured == "" and int(cost["runs"].sum()) >= 42
    finally:
        prog.stop()


def test_engine_through_the_launcher_keeps_only_bpf_rights(tmp_path):
    from traitlets.config import Config

    from ebpf_magic.setup import engine_launcher as launch

    if os.geteuid() != 0:
        pytest.skip("only an engine started by root changes user")
    config = Config()
    config.EngineLauncher.engine_cmd = launch.engine_cmd()
    with ipp.Cluster(n=1, config=config, log_level=40, profile_dir=str(tmp_path)) as client:
        client.wait_for_engines(1, timeout=120)
        assert_confined_engine_counts(client, "confined")
        pid = client[0].apply_sync(engine.facts)["pid"]
        assert pid in runstats.holders()
        key = json.loads(Path(tmp_path, "security", next(
            f for f in os.listdir(tmp_path / "security") if f.endswith("-engine.json")))
            .read_text())["key"].encode()
        assert_out_of_kernels_reach(pid, key)


def test_engine_through_the_launcher_reads_its_connection_file(tmp_path):
    """``--file=PATH`` names root's file: the engine gets a copy it can open, as its account."""
    from ebpf_magic.setup import engine_launcher as launch

    if os.geteuid() != 0:
        pytest.skip("only an engine started by root changes user")
    ipc = ipp.Cluster(n=0, log_level=40, profile_dir=str(tmp_path))
    process = None
    try:
        ipc.start_controller_sync()
        url = Path(ipc.profile_dir, "security", f"ipcontroller-{ipc.cluster_id}-engine.json")
        deadline = time.monotonic() + 30
        while not url.exists() and time.monotonic() < deadline:  # the controller writes it
            time.sleep(0.1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPP_")}
        process = subprocess.Popen([*launch.engine_cmd(), f"--file={url}", "--log-level=40"],
                                   env=env)
        client = ipc.connect_client_sync()
        client.wait_for_engines(1, timeout=60)
        assert client[0].apply_sync(engine.facts)["pid"] == process.pid
        assert_confined_engine_counts(client, "confined_file")
        assert_out_of_kernels_reach(process.pid, json.loads(url.read_text())["key"].encode())
        client.close()
    finally:
        if process is not None:
            process.kill()
            process.wait(10)
        with contextlib.suppress(Exception):
            ipc.stop_cluster_sync()
