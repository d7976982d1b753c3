"""BCC cells: types the decoder cannot express are said, and kernel structs read from BTF."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from ebpf_magic.program import Program

N = 50

# Bitfields: BCC describes them, numpy cannot express them; BCC's perf-event field list
# even drops their widths.
BITFIELDS = """\
struct flags { u32 a : 3; u32 b : 5; u32 rest; u32 more; };
BPF_HASH(seen, u32, struct flags);
BPF_PERF_OUTPUT(out);
BPF_RINGBUF_OUTPUT(ring, 8);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    struct flags f = {};
    f.a = 5; f.b = 17; f.rest = 1234; f.more = 7;
    seen.update(&pid, &f);
    out.perf_submit(args, &f, sizeof(f));
    struct flags *r = ring.ringbuf_reserve(sizeof(struct flags));
    if (!r) return 0;
    r->a = 5; r->b = 17; r->rest = 1234; r->more = 7;
    ring.ringbuf_submit(r, 0);
    return 0;
}
"""
# the first word: a = 5 in bits 0-2, b = 17 in bits 3-7
WORDS = [5 | 17 << 3, 1234, 7]


def _wait(stream, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while stream.received < want and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.kernel
def test_bitfield_types_are_said_and_read_as_bytes(no_leaks):
    me = os.getpid()
    with Program(BITFIELDS, defines={"PID": me}) as prog:
        for _ in range(N):
            os.getppid()
        _wait(prog.events["out"], N)
        _wait(prog.events["ring"], N)
        raw_value = prog.maps["seen"][me]
        out, ring = prog.events["out"].df, prog.events["ring"].df
        warnings = [w for w in prog.warnings if "raw bytes" in w]
        prog.events["out"].set_dtype(np.dtype([("flags", "<u4"), ("rest", "<u4"),
                                               ("more", "<u4")]))
        typed = prog.events["out"].df
    assert warnings == [
        "map 'seen' is read as raw bytes: its type could not be decoded (value: it has "
        "bitfields, which numpy cannot express). Read it as bytes (.peek_raw(), .snapshot()) "
        "or declare the type without bitfields.",
        "stream 'out' is read as raw bytes: its record type could not be decoded (its fields "
        "include bitfields, which numpy cannot express). Give its layout with "
        ".events['out'].set_dtype(numpy dtype or ctypes type).",
        "stream 'ring' is read as raw bytes: its record type could not be decoded (its "
        "fields include bitfields, which numpy cannot express). Give its layout with "
        ".events['ring'].set_dtype(numpy dtype or ctypes type).",
    ]
    assert list(np.frombuffer(raw_value, "<u4")) == WORDS
    for df in (out, ring):
        assert len(df) == N
        assert {list(np.frombuffer(bytes(d), "<u4")[:3]) == WORDS for d in df["data"]} == {True}
    assert len(typed) == N
    assert set(typed["flags"]) == {WORDS[0]} and set(typed["rest"]) == {WORDS[1]}


# -- kernel structs read at the running kernel's offsets (types from BTF) ------------------

TASK = """\
#include <linux/sched.h>
struct reading { u32 tgid; u32 parent_tgid; u32 helper_tgid; u32 tid; };
BPF_PERF_OUTPUT(readings);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 id = bpf_get_current_pid_tgid();
    if (id >> 32 != PID) return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct reading r = {};
    r.tgid = task->tgid;
    r.parent_tgid = task->real_parent->tgid;
    r.helper_tgid = id >> 32;
    r.tid = (u32)id;
    readings.perf_submit(args, &r, sizeof(r));
    return 0;
}
"""


def _btf_headers():
    """The headers BCC compiles against here; skips unless they are the kernel's BTF types."""
    from ebpf_magic.backend.bcc import headers

    found = headers.ensure()
    if found.source != headers.BTF_SOURCE:
        pytest.skip(f"BCC compiles against {found.source} headers here, not BTF types "
                    f"({found.why_not_btf or 'the kernel has its own headers'})")
    return found


def _getppid_from_threads(n_per_thread: int, threads: int = 2) -> set[int]:
    """Call getppid() ``n_per_thread`` times in each of ``threads`` threads; their tids."""
    tids: set[int] = set()

    def work() -> None:
        tids.add(threading.get_native_id())
        for _ in range(n_per_thread):
            os.getppid()
    running = [threading.Thread(target=work) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    return tids


@pytest.mark.kernel
@pytest.mark.kernel_feature  # BTF, and no headers of its own
def test_bcc_reads_task_struct_right_with_btf_types(no_leaks, monkeypatch):
    found = _btf_headers()
    me, parent = os.getpid(), os.getppid()
    with Program(TASK, defines={"PID": me}) as prog:
        assert not [w for w in prog.warnings if "headers" in w]
        tids = _getppid_from_threads(N)
        _wait(prog.events["readings"], 2 * N)
        df = prog.events["readings"].df
    assert len(df) == 2 * N
    assert set(df["tid"]) == tids
    assert (df["tgid"] == me).all() and (df["parent_tgid"] == parent).all()
    # the same program against the distribution headers behind the tree reads elsewhere
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(found.fallback))
    with Program(TASK, defines={"PID": me}) as prog:
        os.getppid()
        _wait(prog.events["readings"], 1)
        wrong = prog.events["readings"].df
    assert len(wrong) == 1 and wrong["helper_tgid"][0] == me
    assert (wrong["tgid"][0], wrong["parent_tgid"][0]) != (me, parent)


@pytest.mark.kernel
@pytest.mark.kernel_feature  # BTF, and no headers of its own
def test_a_program_needing_the_headers_falls_back_to_them_and_says_so(no_leaks):
    from ebpf_magic.backend.bcc import headers

    _btf_headers()
    # a macro of a header no BCC tool includes: the BTF tree has the header, empty
    cell = ("#include <linux/ioctl.h>\n#include <uapi/linux/nbd.h>\nBPF_ARRAY(ioctl, u64, 1);\n"
            "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
            "    int k = 0; u64 v = NBD_SET_SOCK; ioctl.update(&k, &v); return 0;\n}\n")
    with Program(cell) as prog:
        os.getppid()
        value = prog.maps["ioctl"][0]
        warnings = prog.warnings
    assert value == 0xAB00  # _IO(0xab, 0)
    release = headers.ensure().release
    assert warnings == [f"compiled against the {release} kernel headers: with this kernel's "
                        "own types (from BTF) it did not compile (use of undeclared identifier "
                        "'NBD_SET_SOCK'), so its reads of kernel structs (task_struct, sock, "
                        "...) can be wrong"]


@pytest.mark.kernel
@pytest.mark.kernel_feature  # BTF, and no headers of its own
def test_a_cell_s_own_error_is_compiled_once_and_shown_as_the_btf_types_gave_it(monkeypatch):
    from ebpf_magic.backend.bcc import program as bcc_program
    from ebpf_magic.errors import CompileError

    found = _btf_headers()
    sources = []
    compile_once = bcc_program.BccProgram._compile

    def counted(self, request):
        sources.append(request["env"].get("BCC_KERNEL_SOURCE"))
        return compile_once(self, request)

    monkeypatch.setattr(bcc_program.BccProgram, "_compile", counted)
    cell = "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n    int x = ;\n    return 0;\n}\n"
    with pytest.raises(CompileError, match="expected expression"):
        Program(cell)
    assert sources == [str(found.path)]  # no second compile against the fallback headers


# -- BCC's own tools, compiled by BCC with BCC_KERNEL_SOURCE naming the BTF tree -----------

def _tool(name: str) -> str:
    for path in (f"/usr/sbin/{name}-bpfcc", f"/usr/share/bcc/tools/{name}"):
        if os.access(path, os.X_OK):
            return path
    pytest.skip(f"BCC's {name} tool is not installed (Debian package bpfcc-tools)")


class _Tool:
    """A BCC tool running with the BTF tree, its output read once it printed its header."""

    def __init__(self, name: str, headers) -> None:
        env = {**os.environ, "BCC_KERNEL_SOURCE": str(headers.path), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([_tool(name)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.header = self.proc.stdout.readline()  # printed once compiled and attached

    def stop(self) -> list[list[str]]:
        """Interrupt the tool; its output rows, split into columns."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        assert self.header, err
        return [line.split() for line in out.splitlines() if line.strip()]


def _exits(n: int, code: int) -> list[int]:
    pids = []
    for _ in range(n):
        child = subprocess.Popen(["/bin/sh", "-c", f"exit {code}"])
        child.wait()
        pids.append(child.pid)
    return pids


@pytest.mark.kernel
@pytest.mark.kernel_feature  # BTF, and no headers of its own
def test_bcc_exitsnoop_reports_right_pids_with_btf_types():
    found = _btf_headers()
    tool = _Tool("exitsnoop", found)
    try:
        pids = _exits(N, 3)
        time.sleep(0.5)
    finally:
        rows = tool.stop()
    assert tool.header.split()[:3] == ["PCOMM", "PID", "PPID"]
    # PCOMM PID PPID TID AGE(s) EXIT_CODE ("code 3")
    mine = {int(r[1]): r for r in rows if r[1].isdigit() and int(r[1]) in pids}
    assert sorted(mine) == sorted(pids)
    # the parent is this process, the thread is the process's only one, the code is 3
    assert [(int(r[2]), int(r[3]), r[-2], r[-1]) for r in mine.values()] == \
        [(os.getpid(), pid, "code", "3") for pid in mine]


TX, RX, CONNECTIONS = 300_000, 100_000, 5


def _connections() -> tuple[int, set[int]]:
    """CONNECTIONS loopback TCP connections sending TX bytes and receiving RX; server port,
    client ports."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        for _ in range(CONNECTIONS):
            conn, _ = server.accept()
            with conn:
                got = 0
                while got < TX:
                    got += len(conn.recv(65536))
                conn.sendall(b"y" * RX)
    thread = threading.Thread(target=serve)
    thread.start()
    ports = set()
    for _ in range(CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port)) as s:
            ports.add(s.getsockname()[1])
            s.sendall(b"x" * TX)
            got = 0
            while got < RX:
                got += len(s.recv(65536))
    thread.join()
    server.close()
    return port, ports


@pytest.mark.kernel
@pytest.mark.kernel_feature  # BTF, and no headers of its own
def test_bcc_tcplife_reports_right_pids_and_bytes_with_btf_types():
    found = _btf_headers()
    tool = _Tool("tcplife", found)
    try:
        port, ports = _connections()
        time.sleep(0.5)
    finally:
        rows = tool.stop()
    # PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS
    assert tool.header.split()[:4] == ["PID", "COMM", "LADDR", "LPORT"]
    client = [r for r in rows if r[3].isdigit() and int(r[3]) in ports and int(r[5]) == port]
    server = [r for r in rows if r[3].isdigit() and int(r[3]) == port and int(r[5]) in ports]
    assert len(client) == len(server) == CONNECTIONS
    assert {int(r[0]) for r in client} == {os.getpid()}
    assert {(int(r[6]), int(r[7])) for r in client} == {(TX // 1024, RX // 1024)}
    assert {(int(r[6]), int(r[7])) for r in server} == {(RX // 1024, TX // 1024)}
