"""Nothing typed into a cell ends the process: BCC compiles in a worker that may die instead.

Each crasher below once killed the Jupyter kernel (a segfault in libbcc, an LLVM
fatal error, a stack overflow in clang, a hang). Now each costs only its cell:
a short error, an earlier program still counting exactly, nothing of the
failed cell loaded, and the next compile served by a new worker.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ebpf_magic import Program
from ebpf_magic.backend.bcc import client, protocol
from ebpf_magic.errors import AttachError, CompileError
from ebpf_magic.internal import settings

from conftest import COUNT_CELL, bpftool_json, own_bpf_fds

COUNTER = """
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    calls.increment(pid);
    return 0;
}"""
GETPPID = "tracepoint:syscalls:sys_enter_getppid"

# A u128 multiply: LLVM's BPF backend has no __multi3 and exits the process.
MULTI3 = """
BPF_ARRAY(out, u64, 1);
int f(void *ctx) {
    int z = 0;
    u64 *v = out.lookup(&z);
    if (!v) return 0;
    unsigned __int128 x = *v;
    x = x * x;
    *v = (u64)(x >> 64);
    return 0;
}"""
# 5 MB of one expression: clang recurses once per operator and overflows its stack.
HUGE = "int f(void *ctx) { return " + "1+" * (5 << 19) + "1; }"
# Thousands of functions: compiles, but far slower than the lowered bound below.
SLOW = "".join(f"int f{i}(void *ctx) {{ return {i}; }}\n" for i in range(4000))

CRASHERS = {
    "segfault in libbcc": ("1\nBPF_HASH(u)", "the compiler crashed (SIGSEGV) on this cell"),
    "LLVM fatal error": (MULTI3, "the compiler exited (status 1) on this cell"),
    "5 MB cell": (HUGE, "the compiler crashed (SIGSEGV) on this cell"),
}
NOTHING_LOST = "nothing was attached, other programs are unaffected"


def programs_of(pid: int | None) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds a descriptor of (the kernel's fdinfo)."""
    ids: set[int] = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    if pid is None or not fdinfo.is_dir():
        return ids  # no such process holds nothing
    for info in fdinfo.iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        ids.update(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("prog_id:"))
    return ids


@pytest.fixture(autouse=True)
def compiled_afresh(monkeypatch):
    """Every cell here is compiled (a kept program would skip the compile these tests bound,
    crash and interrupt)."""
    monkeypatch.setattr(settings, "cache", False)


@pytest.fixture
def earlier():
    """A program started before the failing one, counting this process's getppid() calls."""
    prog = Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()})
    yield prog
    prog.stop()


def assert_still_counting(prog: Program, n: int = 25) -> None:
    before = prog.maps["calls"].get(os.getpid(), 0)
    for _ in range(n):
        os.getppid()
    assert prog.maps["calls"][os.getpid()] == before + n


@pytest.mark.kernel
@pytest.mark.parametrize("case", list(CRASHERS))
def test_crashing_compile_costs_only_the_cell(case, earlier, no_leaks):
    source, said = CRASHERS[case]
    assert_still_counting(earlier)
    worker = client.worker().pid
    mine = programs_of(os.getpid())
    with pytest.raises(CompileError) as info:
        Program(source, attach=[GETPPID])
    text = str(info.value)
    assert said in text and NOTHING_LOST in text
    if case == "LLVM fatal error":
        assert "__multi3" in text  # the worker's last words
    assert len(text.splitlines()) < 16
    assert client.worker().pid is None, "the crashed worker is gone"
    assert programs_of(os.getpid()) == mine
    assert worker is not None and not programs_of(worker)
    assert_still_counting(earlier)
    # the next cell compiles in a new worker
    with Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()}) as again:
        assert_still_counting(again)
    assert client.worker().pid not in (None, worker)


@pytest.mark.kernel
def test_compile_over_the_time_bound_is_stopped(earlier, monkeypatch, no_leaks):
    monkeypatch.setattr(settings, "compile_timeout", 1.0)
    mine = programs_of(os.getpid())
    start = time.monotonic()
    with pytest.raises(CompileError) as info:
        Program(SLOW)
    assert time.monotonic() - start < 5
    assert "the compiler took longer than 1 s on this cell and was stopped" in str(info.value)
    assert NOTHING_LOST in str(info.value)
    assert "BPFMagics.compile_timeout" in info.value.hint
    assert client.worker().pid is None
    assert programs_of(os.getpid()) == mine
    assert_still_counting(earlier)


@pytest.mark.kernel
def test_compile_over_the_memory_bound_is_stopped(earlier, monkeypatch, no_leaks):
    # the bound is set just above what an idle worker maps, so any real compile exceeds it
    monkeypatch.setattr(settings, "compile_memory", 0)
    client.worker().close()
    client.worker().request({"op": "ping"})
    status = Path(f"/proc/{client.worker().pid}/status").read_text()
    idle = int(next(ln for ln in status.splitlines() if ln.startswith("VmSize:")).split()[1])
    monkeypatch.setattr(settings, "compile_memory", (idle << 10) + (32 << 20))
    client.worker().close()
    with pytest.raises(CompileError) as info:
        Program(SLOW)
    assert "nothing was attached, other programs are unaffected" in str(info.value)
    assert "BPFMagics.compile_memory" in info.value.hint
    assert_still_counting(earlier)


@pytest.mark.kernel
def test_interrupt_while_compiling_stops_the_worker(earlier, no_leaks):
    mine = programs_of(os.getpid())
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            Program(SLOW)
    finally:
        timer.cancel()
    assert client.worker().pid is None
    assert programs_of(os.getpid()) == mine
    assert_still_counting(earlier)
    with Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()}) as again:
        assert_still_counting(again)


@pytest.mark.kernel
def test_worker_killed_between_cells_is_restarted(earlier, no_leaks):
    worker = client.worker().pid
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    os.waitid(os.P_PID, worker, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    with Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()}) as again:
        assert_still_counting(again)
        assert_still_counting(earlier)
    assert client.worker().pid not in (None, worker)


@pytest.mark.kernel
def test_worker_keeps_nothing_it_handed_over(no_leaks):
    with Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()}) as prog:
        worker = client.worker().pid
        ids = set(prog.prog_ids())
        assert ids <= programs_of(os.getpid())
        assert not programs_of(worker)
        assert own_bpf_fds(worker) == []
    loaded = {p["id"] for p in bpftool_json("prog", "show")}
    assert not ids & loaded
    assert not {m["id"] for m in bpftool_json("map", "show")} & set(prog.map_ids() or [])


@pytest.mark.kernel
def test_a_programs_descriptors_are_not_inherited_by_commands(no_leaks):
    """The maps and programs the worker handed over are close-on-exec: a command a cell runs
    (``!ls``, os.system, which pass on every inheritable fd) holds none of them."""
    child = ("import os\nprint([os.readlink(f'/proc/self/fd/{fd}') for fd in "
             "os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{fd}')])")
    with Program(COUNTER, attach=[GETPPID], defines={"PID": os.getpid()}) as prog:
        assert_still_counting(prog)
        assert any("bpf-map" in t for t in own_bpf_fds()) and \
            any("bpf-prog" in t for t in own_bpf_fds())
        listing = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                                 close_fds=False, check=True).stdout
        # its stdout, and no BPF object (paths the runner passed on may well contain "bpf")
        assert "pipe:" in listing and "anon_inode:bpf" not in listing


@pytest.mark.kernel
@pytest.mark.parametrize("case", list(CRASHERS))
def test_crash_through_the_magic_keeps_the_session(case, shell, capsys, no_leaks):
    source, said = CRASHERS[case]
    assert shell.run_cell(COUNT_CELL.format(name="good", pid=os.getpid())).success
    mine = programs_of(os.getpid())
    result = shell.run_cell("%%bpf bad\n" + source + "\n")
    assert not result.success
    out = capsys.readouterr()
    text = out.out + out.err
    assert "CompileError" in text
    assert f"{said}; {NOTHING_LOST}" in text
    assert "Traceback" not in text
    assert programs_of(os.getpid()) == mine
    assert "bad" not in shell.user_ns
    assert list(shell.run_line_magic("bpf", "list")["name"]) == ["good"]
    assert_still_counting(shell.user_ns["good"])
    shell.run_line_magic("bpf", "stop --all")


SEMAPHORE_C = r"""
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#include <stdio.h>
#include <stdlib.h>
__extension__ unsigned short demo_tick_semaphore __attribute__((unused))
    __attribute__((section(".probes")));
int main(int argc, char **argv) {
    int n = atoi(argv[1]), fired = 0;
    getchar();
    for (int i = 0; i < n; i++)
        if (demo_tick_semaphore) { fired++; DTRACE_PROBE1(demo, tick, i); }
    printf("%d\n", fired);
    return 0;
}
"""


@pytest.mark.kernel
def test_usdt_probe_behind_a_semaphore_keeps_firing(tmp_path, no_leaks):
    # BCC enables the semaphore in the worker and disables it when the worker lets go
    # of the program: the kernel must hold it up for as long as the probe is attached.
    if not shutil.which("gcc"):
        pytest.fail("gcc and <sys/sdt.h> (systemtap-sdt-dev) are needed; scripts/setup.sh "
                    "installs them")
    (tmp_path / "sem.c").write_text(SEMAPHORE_C)
    binary = tmp_path / "sem"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(tmp_path / "sem.c")], check=True)
    proc = subprocess.Popen([str(binary), "77"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        src = """
        BPF_ARRAY(ticks, u64, 1);
        int on_tick(struct pt_regs *ctx) { int zero = 0; ticks.increment(zero); return 0; }"""
        with Program(src, attach=[f"usdt:{binary}:demo:tick"], pid=proc.pid) as prog:
            out, _ = proc.communicate(b"\n", timeout=30)
            assert int(out) == 77  # the semaphore was up for every iteration
            assert prog.maps["ticks"][0] == 77
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.kernel
def test_wildcard_kprobe_is_resolved_here(no_leaks):
    with pytest.raises(AttachError) as info:
        Program("int f(void *ctx) { return 0; }", attach=["kprobe:no_such_function_xyz_*"])
    assert "no kernel function matches 'no_such_function_xyz_*'" in str(info.value)


def test_dtypes_cross_the_socket_unchanged():
    inner = np.dtype({"names": ["a", "b"], "formats": ["u1", "<u8"], "offsets": [0, 8],
                      "itemsize": 16})
    cases = [
        np.dtype("<u4"), np.dtype("S16"), np.dtype(("<i8", (2, 3))),
        np.dtype({"names": ["pid", "comm", "in", "tail"],
                  "formats": ["<u4", "S16", inner, ("<u2", (3,))],
                  "offsets": [0, 4, 24, 40], "itemsize": 48}),
        np.dtype({"names": ["as_u64", "as_bytes"], "formats": ["<u8", ("u1", (8,))],
                  "offsets": [0, 0], "itemsize": 8}),  # a union
    ]
    for dt in cases:
        wire = json.loads(json.dumps(protocol.dtype_to_json(dt)))
        assert protocol.dtype_from_json(wire) == dt
    assert protocol.dtype_from_json(protocol.dtype_to_json(None)) is None


def test_a_reply_carries_more_descriptors_than_one_ancillary_message_can():
    """A cell with hundreds of maps and programs: every descriptor arrives, in order."""
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = [os.open("/dev/null", os.O_RDONLY) for _ in range(600)]
    try:
        protocol.send(a, {"n": len(sent)}, sent)
        message, got = protocol.receive(b)
        try:
            assert message == {"n": 600} and len(got) == 600
            assert [os.fstat(fd).st_ino for fd in got] == [os.fstat(fd).st_ino for fd in sent]
            assert set(got).isdisjoint(sent)
        finally:
            for fd in got:
                os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)
        a.close()
        b.close()


# A stand-in worker speaking the protocol by hand: it says it is ready, takes one request,
# then sends a reply's header and the first bytes of its body, and stalls.
STALLING_WORKER = r"""
import json, os, socket, struct, sys, time
sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
def send(message, cut=None):
    body = json.dumps(message).encode()
    sock.sendall(struct.pack("<QI", len(body), 0) + body[:cut])
send({"ok": True, "pid": os.getpid()})
size, _ = struct.unpack("<QI", sock.recv(12, socket.MSG_WAITALL))
sock.recv(size, socket.MSG_WAITALL)
send({"ok": True, "functions": []}, cut=5)
time.sleep(120)
"""


def test_a_worker_stalling_mid_reply_is_stopped_within_the_bound(monkeypatch):
    """Once a reply's header arrives, the rest is waited for only until the request's
    deadline: the cell gets its CompileError on time and the worker is killed."""
    real_popen = subprocess.Popen

    def stalling(argv, **kwargs):
        assert argv[1:3] == ["-m", "ebpf_magic.backend.bcc.worker"]
        return real_popen([argv[0], "-c", STALLING_WORKER, *argv[3:]], **kwargs)

    monkeypatch.setattr(client.subprocess, "Popen", stalling)
    worker = client.Worker()
    try:
        worker.start()
        pid = worker.pid
        start = time.monotonic()
        with pytest.raises(CompileError, match="the compiler took longer than 3 s on this "
                                               "cell and was stopped"):
            worker.request({"op": "compile", "source": "int x;"}, timeout=3)
        assert time.monotonic() - start < 3.5
        assert worker.pid is None
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    finally:
        worker.close()


def test_received_descriptors_are_not_inherited_by_commands(tmp_path):
    """A descriptor that came over the socket is close-on-exec: a command a cell runs
    (``!ls``, os.system) does not get it, even when it inherits every inheritable fd."""
    import socket

    marker = tmp_path / "received-descriptor"
    marker.write_text("x")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = os.open(marker, os.O_RDONLY)
    try:
        protocol.send(a, {"n": 1}, [sent])
        _message, [got] = protocol.receive(b)
        try:
            assert os.readlink(f"/proc/self/fd/{got}") == str(marker)
            assert not os.get_inheritable(got)
            listing = subprocess.run(["ls", "-l", "/proc/self/fd/"], capture_output=True,
                                     text=True, close_fds=False, check=True).stdout
            assert str(marker) not in listing
        finally:
            os.close(got)
    finally:
        os.close(sent)
        a.close()
        b.close()
