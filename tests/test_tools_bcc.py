"""The tools next to BCC's own, where BCC's run on this kernel: one workload through both.

BCC's tools (Debian's ``bpfcc-tools``) compile against the kernel's BTF-made headers (as
the project's BCC cells do, so their struct reads are right) and print text; each test
starts both tools, runs a workload both watch from its start, stops both, and compares
the numbers: exact where both count events, within a stated tolerance where both sample.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ebpf_magic import tools

from workload import CLIENT, SERVER, SPIN, SPINNER, Gated, NetLab, compile_c, dd, loop_device

pytestmark = pytest.mark.kernel

SBIN = "/usr/sbin"


def bcc_env() -> dict[str, str]:
    from ebpf_magic.backend.bcc import headers

    tree = headers.find().path
    return {**os.environ, "BCC_KERNEL_SOURCE": str(tree)} if tree else dict(os.environ)



def _link(fd: Path) -> str:
    """Where a descriptor of another process leads ("" once it closed: BCC opens and closes
    files while it starts)."""
    try:
        return os.readlink(fd)
    except FileNotFoundError:
        return ""


class BCCTool:
    """One of BCC's tools, running until :meth:`stop` (its Ctrl-C); its printed output.

    It counts as started once its probes are attached: when it prints ``ready`` (a regular
    expression) or, for tools that print nothing first, when it holds a perf event.
    """

    def __init__(self, name: str, *args: str, ready: str | None = None) -> None:
        path = os.path.join(SBIN, f"{name}-bpfcc")
        if not os.path.exists(path):
            pytest.skip(f"BCC's {name} is not installed (apt-get install bpfcc-tools)")
        self.proc = subprocess.Popen([path, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=bcc_env())
        self.head: list[str] = []
        try:
            self._wait(name, ready)
        except BaseException:  # not started: its probes must not outlive the test
            self.proc.kill()
            self.proc.wait()
            raise

    def _wait(self, name: str, ready: str | None) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if ready is None:
                if self.proc.poll() is not None:
                    raise AssertionError(f"BCC's {name} ended")
                if any("perf_event" in _link(fd) for fd in
                       Path(f"/proc/{self.proc.pid}/fd").iterdir()):
                    time.sleep(0.5)  # the other CPUs' events follow
                    return
                time.sleep(0.05)
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"BCC's {name} ended: {''.join(self.head)}")
            self.head.append(line)
            if re.search(ready, line):
                return
        raise AssertionError(f"BCC's {name} did not start")

    def stop(self, settle: float = 0.5) -> str:
        time.sleep(settle)
        self.proc.send_signal(signal.SIGINT)
        # a tool blocked waiting for events sees the interrupt with its next event
        for _ in range(50):
            try:
                out, _ = self.proc.communicate(timeout=0.2)
                return "".join(self.head) + out
            except subprocess.TimeoutExpired:
                subprocess.run(["/bin/true"], check=True)
        out, _ = self.proc.communicate(timeout=60)
        return "".join(self.head) + out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def bcc():
    started: list[BCCTool] = []

    def start(name: str, *args: str, ready: str | None = None) -> BCCTool:
        tool = BCCTool(name, *args, ready=ready)
        started.append(tool)
        return tool

    yield start
    for tool in started:
        tool.kill()


def test_syscount_counts_what_bccs_counts(no_leaks, bcc):
    code = """
    import os
    for _ in range(4321):
        os.getppid()
    """
    with Gated(code) as child:
        theirs = bcc("syscount", "-p", str(child.pid), ready="Tracing")
        ours = tools.syscount(pid=child.pid)
        child.release()
        child.proc.wait(30)
        text = theirs.stop()
        ours.stop()
    bcc_calls = int(re.search(r"^getppid\s+(\d+)", text, re.M).group(1))
    assert bcc_calls == 4321
    assert ours.df.set_index("syscall").loc["getppid", "calls"] == bcc_calls


def test_exitsnoop_sees_the_exits_bccs_sees(no_leaks, bcc):
    code = """
    import os, signal, time
    kids = []
    for status in (0, 2, 5):
        pid = os.fork()
        if pid == 0:
            time.sleep(0.1)
            os._exit(status)
        kids.append(pid)
    victim = os.fork()
    if victim == 0:
        time.sleep(30)
        os._exit(0)
    os.kill(victim, signal.SIGTERM)
    for _ in range(4):
        os.wait()
    print(" ".join(map(str, kids + [victim])), flush=True)
    """
    with Gated(code, hold=True) as child:
        theirs = bcc("exitsnoop", ready="PCOMM")
        ours = tools.exitsnoop()
        child.release()
        pids = [int(p) for p in child.wait_output().split()]
        text = theirs.stop()
        ours.stop()
        child.finish()
    bcc_rows = {int(m.group(1)): m.group(2) for m in
                re.finditer(r"^\S+\s+(\d+)\s+\d+\s+\d+\s+[\d.]+\s+(.+?)\s*$", text, re.M)}
    assert [bcc_rows[p] for p in pids] == ["0", "code 2", "code 5", "signal 15 (TERM)"]
    df = ours.df.set_index("pid").loc[pids]
    ours_said = [("0" if s == 0 else f"code {s}") if sig == "" else
                 f"signal {getattr(signal, sig).value} ({sig.removeprefix('SIG')})"
                 for s, sig in zip(df["status"], df["signal"], strict=True)]
    assert ours_said == [bcc_rows[p] for p in pids]


@pytest.fixture
def lab():
    with NetLab(f"b{os.getpid() % 10000}", subnet=8) as net:
        yield net


def test_tcp_tools_agree_with_bccs_tcplife_and_tcpstates(no_leaks, bcc, lab):
    n, rx, tx, port = 4, 20_480, 5_120, 5610
    server = Gated(SERVER, netns=lab.server, args=(str(n), str(rx), str(tx), str(port)))
    server.release()
    assert server.wait_output() == "ready"
    with server, Gated(CLIENT, netns=lab.client,
                       args=(str(n), str(rx), lab.server_ip, str(port))) as client:
        life_bcc = bcc("tcplife", "-D", str(port), ready="PID")
        states_bcc = bcc("tcpstates", "-D", str(port), ready="SKADDR")
        life = tools.tcplife(rport=port)
        states = tools.tcpstates(rport=port)
        client.release()
        assert int(client.wait_output()) == n * tx
        life_text, states_text = life_bcc.stop(), states_bcc.stop()
        life.stop()
        states.stop()
    # tcplife prints KB: the same connections, the same bytes in its units
    rows = re.findall(rf"^(\d+)\s+\S+\s+{re.escape(lab.client_ip)}\s+(\d+)\s+"
                      rf"{re.escape(lab.server_ip)}\s+{port}\s+(\d+)\s+(\d+)", life_text, re.M)
    assert len(rows) == n and len(life.df) == n
    theirs = sorted((int(lport), int(tx_kb), int(rx_kb)) for _, lport, tx_kb, rx_kb in rows)
    mine = sorted((int(r.lport), r.tx_bytes // 1024, r.rx_bytes // 1024)
                  for r in life.df.itertuples())
    assert mine == theirs == sorted((lport, rx // 1024, tx // 1024) for lport, _, _ in mine)
    assert {int(pid) for pid, *_ in rows} == set(life.df["pid"]) == {client.pid}
    # tcpstates: the same transitions, one for one
    bcc_moves = [m for m in re.findall(r"([A-Z_]+[0-9]?)\s+->\s+([A-Z_]+[0-9]?)", states_text)
                 if m != ("OLDSTATE", "NEWSTATE")]
    mine_moves = list(zip(states.df["oldstate"], states.df["newstate"], strict=True))
    assert sorted(bcc_moves) == sorted(mine_moves) and len(mine_moves) >= 3 * n


def test_tcpretrans_counts_what_bccs_counts(no_leaks, bcc, lab):
    rx, port = 200_000, 5611
    subprocess.run(["ip", "-n", lab.client, "link", "set", lab.client_if, "gso_max_segs",
                    "1"], check=True)
    server = Gated(SERVER, netns=lab.server, args=("1", str(rx), "10", str(port)))
    server.release()
    assert server.wait_output() == "ready"
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
        theirs = bcc("tcpretrans", ready="TIME")
        ours = tools.tcpretrans(rport=port)
        client.release()
        assert client.wait_output() == "connected"
        with lab.dropping():
            client.release()
            time.sleep(1.0)
        assert client.wait_output(60) == "10"
        text = theirs.stop()
        ours.stop()
    bcc_count = len(re.findall(rf"{re.escape(lab.server_ip)}:{port}\b", text))
    assert bcc_count > 0 and len(ours.df) == bcc_count


def test_bitesize_counts_what_bccs_counts(no_leaks, bcc):
    with loop_device() as disk:
        theirs = bcc("bitesize", ready="Tracing")
        ours = tools.bitesize()  # as BCC's: every disk
        dd(["if=/dev/zero", f"of=/dev/{disk}", "bs=8k", "count=30", "oflag=direct"])
        dd([f"if=/dev/{disk}", "of=/dev/null", "bs=128k", "count=9", "iflag=direct"])
        text = theirs.stop()
        ours.stop()
    section = text.split("Process Name = dd", 1)[1].split("Process Name", 1)[0]
    bcc_buckets = {int(lo): int(n) for lo, _, n in
                   re.findall(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)", section, re.M) if int(n)}
    mine = ours.df[(ours.df["comm"] == "dd") & (ours.df["count"] > 0)]
    assert bcc_buckets[8] == 30 and bcc_buckets[128] == 9
    assert dict(zip(mine["low_kib"], mine["count"], strict=True)) == bcc_buckets


def test_runqlat_counts_the_waits_bccs_counts(no_leaks, bcc):
    kids = [Gated(SPIN.format(seconds=1.2), hold=True, cpu=1) for _ in range(2)]
    try:
        theirs = bcc("runqlat", "-p", str(kids[0].pid), ready="Tracing")
        ours = tools.runqlat(pid=kids[0].pid)
        for k in kids:
            k.release()
        time.sleep(1.6)
        text = theirs.stop(0)
        totals = ours.table("totals")
        ours.stop()
    finally:
        for k in kids:
            k.finish()
    bcc_count = sum(int(n) for n in re.findall(r"->\s*\d+\s*:\s*(\d+)", text))
    mine = int(totals["count"].sum())
    assert bcc_count > 20
    # both count every wait of the process; the two stop reading a moment apart
    assert abs(mine - bcc_count) <= 0.05 * bcc_count + 3


def test_profile_samples_as_many_as_bccs(no_leaks, bcc, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the workload")
    spinner = compile_c(SPINNER.format(seconds=2.0), "spinner", tmp_path)
    proc = subprocess.Popen([spinner], stdin=subprocess.PIPE)
    try:
        theirs = bcc("profile", "-p", str(proc.pid), "-F", "99", "-f", ready=None)
        ours = tools.profile(pid=proc.pid, frequency=99)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        time.sleep(2.3)
        text = theirs.stop(0)
        df = ours.df
        ours.stop()
    finally:
        proc.communicate(b"\n", timeout=30)
    bcc_samples = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.count(";") and line.rsplit(" ", 1)[-1].isdigit())
    assert bcc_samples > 50
    # both sample the same CPU time at the same rate
    assert abs(df["samples"].sum() - bcc_samples) <= 0.15 * bcc_samples + 5
    bcc_spin = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if "spin_here" in line and line.rsplit(" ", 1)[-1].isdigit())
    mine_spin = df[df["stack"].str.contains("spin_here")]["samples"].sum()
    assert bcc_spin > 0.8 * bcc_samples and mine_spin > 0.8 * df["samples"].sum()
