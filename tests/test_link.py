"""The link layer: programs loaded without BCC, attached by fd, counted exactly, detached clean.

Programs are assembled here from a few instructions: each adds 1 to slot 0 of
an array map when it runs (optionally only for this process's tgid, or only for
one syscall number or ethertype), so counts are exact.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ebpf_magic import features
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import link, sysbpf, tracefs
from ebpf_magic.kernel.link import probe_events

from conftest import ETH_P_TEST, bpftool_json, own_bpf_fds, send_test_frames, settle, uprobe_events
from rawprog import prog_load

pytestmark = pytest.mark.kernel
# the module: the package's name `uprobe` is the function it defines
uprobe_mod = importlib.import_module("ebpf_magic.kernel.link.uprobe")

PROG_KPROBE, PROG_TRACEPOINT, PROG_XDP, PROG_PERF_EVENT, PROG_RAW_TRACEPOINT = 2, 5, 6, 7, 17
PROG_SOCKET_FILTER, PROG_SCHED_CLS = 1, 3
MAP_ARRAY = 2
PERF_TYPE_SOFTWARE = 1  # config 0: cpu-clock, 1: task-clock
NR_GETPPID = 110  # x86_64
XDP_PASS = 2


# -- a tiny assembler ------------------------------------------------------------------------

def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    return _insn(0x18, dst, 1, 0, fd) + _insn(0)  # BPF_LD_IMM64, src BPF_PSEUDO_MAP_FD


def _exit(ret: int) -> bytes:
    return _insn(0xB7, 0, imm=ret) + _insn(0x95)  # r0 = ret; exit


def _count(map_fd: int) -> bytes:
    """map[0] += 1 (atomically)."""
    return (_insn(0x62, 10, off=-4, imm=0)  # *(u32 *)(r10 - 4) = 0
            + _insn(0xBF, 2, 10) + _insn(0x07, 2, imm=-4)  # r2 = r10 - 4
            + _ld_map_fd(1, map_fd)
            + _insn(0x85, imm=1)  # call bpf_map_lookup_elem
            + _insn(0x15, 0, off=2, imm=0)  # if r0 == 0 skip the add
            + _insn(0xB7, 1, imm=1) + _insn(0xDB, 0, 1, 0, 0))  # lock *(u64 *)r0 += 1


def _skip_unless_pid(pid: int, skip: int) -> bytes:
    """Jump forward ``skip`` instructions unless the current tgid is ``pid``."""
    return (_insn(0x85, imm=14)  # call bpf_get_current_pid_tgid
            + _insn(0x77, 0, imm=32)  # r0 >>= 32
            + _insn(0x55, 0, off=skip, imm=pid))  # if r0 != pid goto +skip


COUNT_LEN = 9  # instructions in _count()


def counting_prog(prog_type: int, map_fd: int, *, pid: int | None = None,
                  raw_syscall: int | None = None, ethertype: int | None = None,
                  skb_protocol: int | None = None, retval: int | None = None,
                  ret: int = 0) -> int:
    """Load a program counting its runs in ``map_fd`` slot 0, under the given filters."""
    body = b""
    if skb_protocol is not None:  # __sk_buff: protocol (network order) at +16
        body += (_insn(0x61, 6, 1, 16)  # r6 = *(u32 *)(r1 + 16)
                 + _insn(0x55, 6, off=COUNT_LEN, imm=socket.htons(skb_protocol)))
    if raw_syscall is not None:  # raw sys_enter: ctx->args[1] is the syscall number
        body += _insn(0x79, 6, 1, 8)  # r6 = *(u64 *)(r1 + 8)
        body += _insn(0x55, 6, off=COUNT_LEN + (3 if pid is not None else 0), imm=raw_syscall)
    if retval is not None:  # a return probe's pt_regs: rax at +80 on x86_64
        body += _insn(0x79, 6, 1, 80) + _insn(0x55, 6, off=COUNT_LEN, imm=retval)
    if ethertype is not None:  # xdp_md: data at +0, data_end at +4
        body += (_insn(0x61, 2, 1, 0) + _insn(0x61, 3, 1, 4)
                 + _insn(0xBF, 4, 2) + _insn(0x07, 4, imm=14)
                 + _insn(0x2D, 4, 3, COUNT_LEN + 2)  # if r4 > r3 (frame too short) skip
                 + _insn(0x69, 5, 2, 12)  # r5 = *(u16 *)(r2 + 12)
                 + _insn(0x55, 5, off=COUNT_LEN, imm=socket.htons(ethertype)))
    if pid is not None:
        body += _skip_unless_pid(pid, COUNT_LEN)
    body += _count(map_fd) + _exit(ret)
    fd = prog_load(prog_type, body, "GPL", name="test_link")
    LOADED_IDS.add(sysbpf.prog_info(fd).id)
    return fd


LOADED_IDS: set[int] = set()  # kernel ids of every program these tests loaded


@pytest.fixture
def counter():
    """An array map of one u64 and a reader of its value."""
    fd = sysbpf.map_create(MAP_ARRAY, 4, 8, 1, name="test_link")
    key, value = ctypes.c_uint32(0), ctypes.c_uint64()

    def read() -> int:
        sysbpf.map_lookup(fd, key, value)
        return value.value

    read.fd = fd
    yield read
    os.close(fd)


@pytest.fixture
def prog_fds():
    """Program fds a test loads; closed (unloading them) at the end."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def bpf_links() -> list[dict]:
    """``bpftool link show``; retried, as it fails when a link goes away while it lists."""
    for _ in range(4):
        try:
            return bpftool_json("link", "show")
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    return bpftool_json("link", "show")


@pytest.fixture
def clean(no_leaks):
    """No perf/bpf fd, BPF link, or tracefs probe event of this process survives the test."""
    yield
    assert link.wait_released(timeout=60), "background release did not finish"
    ours = probe_events.group()
    assert not [e for e in uprobe_events() if ours in e], "uprobe_events entry left behind"
    left = [x for x in bpf_links() if x.get("prog_id") in LOADED_IDS]
    assert not left, f"BPF links left: {left}"


def _getppid(n: int) -> None:
    for _ in range(n):
        os.getppid()


# -- tracepoints -----------------------------------------------------------------------------

def test_tracepoint_counts_exactly_and_close_detaches(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    fds_before = own_bpf_fds()
    lk = link.tracepoint(prog_fds[0], "syscalls", "sys_enter_getppid")
    assert lk.description == "tracepoint:syscalls:sys_enter_getppid"
    # a BPF perf link, and the tracepoint's perf event under it
    assert sorted(own_bpf_fds()) == sorted([*fds_before, "anon_inode:bpf_link",
                                            "anon_inode:[perf_event]"])
    assert len(lk.fds) == 2
    assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in lk.fds)
    _getppid(1000)
    assert counter() == 1000
    lk.close()
    lk.close()  # idempotent
    assert lk.fds == ()
    _getppid(100)
    assert counter() == 1000
    assert own_bpf_fds() == fds_before


def test_tracepoint_link_is_a_context_manager(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    with link.tracepoint(prog_fds[0], "syscalls", "sys_enter_getppid") as lk:
        _getppid(7)
    assert lk.fds == ()
    _getppid(7)
    assert counter() == 7


def test_tracepoint_errors_say_what_was_tried(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd))
    with pytest.raises(link.LinkError) as info:
        link.tracepoint(prog_fds[0], "syscalls", "sys_enter_no_such_call")
    assert info.value.errno == errno.ENOENT
    assert "syscalls:sys_enter_no_such_call" in str(info.value)
    # A program of the wrong type: the kernel refuses SET_BPF, and the fd opened is closed.
    wrong = counting_prog(PROG_RAW_TRACEPOINT, counter.fd)
    prog_fds.append(wrong)
    with pytest.raises(link.LinkError) as info:
        link.tracepoint(wrong, "syscalls", "sys_enter_getppid")
    assert info.value.errno == errno.EINVAL
    assert "PERF_EVENT_IOC_SET_BPF" in str(info.value)


def test_tracepoints_resolves_wildcards():
    found = link.tracepoints("syscalls:sys_enter_getp*")
    assert ("syscalls", "sys_enter_getppid") in found
    assert ("syscalls", "sys_enter_getpid") in found
    assert all(c == "syscalls" and n.startswith("sys_enter_getp") for c, n in found)
    assert link.tracepoints("syscalls:sys_enter_getppid") == [("syscalls", "sys_enter_getppid")]
    assert link.tracepoints("nosuchcategory:*") == []
    with pytest.raises(link.LinkError):
        link.tracepoints("sys_enter_getppid")


@pytest.mark.parametrize("wait", [False, True])
def test_close_all_detaches_many_tracepoints(clean, counter, prog_fds, monkeypatch, wait):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, pid=os.getpid()))
    # every sys_enter_get* but getpid, which the uprobe below counts
    names = [x for x in link.tracepoints("syscalls:sys_enter_get*") if x[1] != "sys_enter_getpid"]
    assert len(names) > 10
    ours = probe_events.group()
    fds_before = own_bpf_fds()
    links = [link.tracepoint(prog_fds[0], c, n) for c, n in names]
    monkeypatch.setattr(uprobe_mod, "ROUTES", ("tracefs",))
    links.append(link.uprobe(prog_fds[1], LIBC_PATH, GETPID_OFFSET))
    before = counter()
    _getppid(50)
    _getpid(5)
    assert counter() - before == 55
    link.close_all(links, wait=wait)
    # every program is detached when close_all returns, released or not (its closing
    # threads made get* calls of their own, e.g. gettid, before their links were closed)
    detached = counter()
    _getppid(50)
    _getpid(5)
    assert counter() == detached
    assert all(lk.closed and lk.fds == () for lk in links)
    prog_ids = {sysbpf.prog_info(fd).id for fd in prog_fds}
    assert not [x for x in bpf_links() if x.get("prog_id") in prog_ids]
    if wait:
        assert not [e for e in uprobe_events() if ours in e]
        assert own_bpf_fds() == fds_before
    assert link.wait_released(timeout=60)
    assert own_bpf_fds() == fds_before
    assert not [e for e in uprobe_events() if ours in e]


def test_close_all_of_nothing_and_of_closed_links(clean, counter, prog_fds):
    link.close_all([])
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    lk = link.tracepoint(prog_fds[0], "syscalls", "sys_enter_getppid")
    lk.close()
    link.close_all([lk, lk])
    assert link.wait_released(timeout=10)


# -- raw tracepoints -------------------------------------------------------------------------

def test_raw_tracepoint_counts_exactly(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_RAW_TRACEPOINT, counter.fd, pid=os.getpid(),
                                  raw_syscall=NR_GETPPID))
    with link.raw_tracepoint(prog_fds[0], "sys_enter") as lk:
        assert lk.description == "raw_tracepoint:sys_enter"
        _getppid(500)
        assert counter() == 500
    _getppid(10)
    assert counter() == 500


def test_raw_tracepoint_unknown_name(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_RAW_TRACEPOINT, counter.fd))
    with pytest.raises(link.LinkError) as info:
        link.raw_tracepoint(prog_fds[0], "no_such_raw_tracepoint")
    assert info.value.errno == errno.ENOENT
    assert "BPF_RAW_TRACEPOINT_OPEN of raw_tracepoint:no_such_raw_tracepoint" in str(info.value)


# -- perf events -----------------------------------------------------------------------------

def test_perf_event_samples_on_every_cpu(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_PERF_EVENT, counter.fd))
    fds_before = own_bpf_fds()
    lk = link.perf_event(prog_fds[0], PERF_TYPE_SOFTWARE, 0, sample_freq=1000)  # cpu-clock
    assert len(lk.fds) == 2 * len(sysbpf.online_cpus())  # a BPF link and an event per CPU
    assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in lk.fds)
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        pass
    lk.close()
    fired = counter()
    assert fired > 0
    assert own_bpf_fds() == fds_before
    time.sleep(0.05)
    assert counter() == fired


def test_perf_event_failing_on_one_cpu_keeps_nothing_open(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_PERF_EVENT, counter.fd))
    fds_before = own_bpf_fds()
    with pytest.raises(link.LinkError) as info:
        link.perf_event(prog_fds[0], PERF_TYPE_SOFTWARE, 0, sample_freq=100, cpus=[0, 4095])
    assert info.value.errno in (errno.EINVAL, errno.ENODEV, errno.ENXIO)
    assert str(info.value).startswith("perf_event_open for perf_event:1:0 on CPU 4095: ")
    assert own_bpf_fds() == fds_before  # CPU 0's event and link were closed again


def test_perf_event_on_chosen_cpus_by_period(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_PERF_EVENT, counter.fd, pid=os.getpid()))
    # task-clock of this process: one run per 1 ms of its CPU time
    with link.perf_event(prog_fds[0], PERF_TYPE_SOFTWARE, 1, sample_period=1_000_000,
                         pid=os.getpid(), cpus=[-1]) as lk:
        assert len(lk.fds) == 2
        cpu0 = time.process_time()
        while counter() < 50 and time.process_time() - cpu0 < 5:
            pass
        spent = time.process_time() - cpu0
    fired = counter()
    # 50 runs in 50 ms of CPU time, give or take the clock's granularity
    assert fired >= 50 and spent < 0.2
    time.sleep(0.02)
    assert counter() == fired


# -- uprobes ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None)


def _file_offset(addr: int) -> tuple[str, int]:
    """The mapped file and file offset of code address ``addr`` in this process."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= addr < hi and len(fields) >= 6:
            return fields[5], addr - lo + int(fields[2], 16)
    raise LookupError(hex(addr))


LIBC_PATH, GETPID_OFFSET = _file_offset(ctypes.cast(_libc.getpid, ctypes.c_void_p).value)


def _getpid(n: int) -> None:
    for _ in range(n):
        _libc.getpid()


@pytest.fixture(params=["pmu", "tracefs"])
def route(request, monkeypatch):
    """Run a uprobe test through the perf PMU, then through a tracefs uprobe_events entry."""
    monkeypatch.setattr(uprobe_mod, "ROUTES", (request.param,))
    return request.param


def test_uprobe_counts_libc_getpid_exactly(clean, counter, prog_fds, route):
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, pid=os.getpid()))
    ours = probe_events.group()
    with link.uprobe(prog_fds[0], LIBC_PATH, GETPID_OFFSET) as lk:
        assert len(lk.fds) == 2
        in_tracefs = [e for e in uprobe_events() if ours in e]
        assert len(in_tracefs) == (1 if route == "tracefs" else 0)
        if route == "tracefs":
            assert in_tracefs[0].startswith(f"p:{ours}/")
            path, offset = in_tracefs[0].split()[1].rsplit(":", 1)
            assert (path, int(offset, 16)) == (LIBC_PATH, GETPID_OFFSET)
        _getpid(300)
        assert counter() == 300
    _getpid(10)
    assert counter() == 300


def test_uretprobe_for_one_pid(clean, counter, prog_fds, route):
    # no tgid filter, pid= does it; counted only where getpid's return value is in rax
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, retval=os.getpid()))
    ours = probe_events.group()
    with link.uprobe(prog_fds[0], LIBC_PATH, GETPID_OFFSET, retprobe=True,
                     pid=os.getpid()) as lk:
        assert lk.description.startswith("uretprobe:")
        if route == "tracefs":
            assert [e for e in uprobe_events() if e.startswith(f"r:{ours}/")]
        subprocess.run([sys.executable, "-c", "import os\nfor _ in range(100): os.getpid()"],
                       check=True)
        _getpid(40)
    assert counter() == 40


def test_uprobe_errors(clean, counter, prog_fds, route):
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    with pytest.raises(link.LinkError) as info:
        link.uprobe(prog_fds[0], "/no/such/binary", 0x10)
    assert info.value.errno == errno.ENOENT
    tried = {"pmu": "perf_event_open for uprobe:/no/such/binary:0x10: ",
             "tracefs": "adding uprobe event "}[route]
    assert str(info.value).startswith(tried) and "/no/such/binary" in str(info.value)


def test_a_path_cannot_inject_lines_into_uprobe_events(clean, counter, prog_fds,
                                                      monkeypatch):
    """A binary's path comes from a traced process's maps, where a file may have any name:
    one with a newline would, written to uprobe_events, define a probe of its choosing."""
    monkeypatch.setattr(uprobe_mod, "ROUTES", ("tracefs",))
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    injected = f"{LIBC_PATH}:0x{GETPID_OFFSET:x}\np:ebpf_magic_injected/e {LIBC_PATH}"
    before = uprobe_events()
    try:
        with pytest.raises(link.LinkError) as info:
            link.uprobe(prog_fds[0], injected, GETPID_OFFSET)
        assert info.value.errno == errno.EINVAL
        assert "holds whitespace or a control character, which uprobe_events cannot take" in \
            str(info.value)
        assert uprobe_events() == before
    finally:
        if any("ebpf_magic_injected" in e for e in uprobe_events()):
            probe_events.remove("uprobe", "ebpf_magic_injected", "e")
            for e in uprobe_events():
                if e.startswith(f"p:{probe_events.group()}/"):
                    grp, event = e.split()[0][2:].split("/")
                    probe_events.remove("uprobe", grp, event)


def test_uprobe_on_a_missing_file_does_not_fall_back_to_tracefs(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    with pytest.raises(link.LinkError) as info:
        link.uprobe(prog_fds[0], "/no/such/binary", 0x10)
    assert info.value.errno == errno.ENOENT
    assert str(info.value).startswith("perf_event_open for uprobe:/no/such/binary:0x10: ")


TARGET_C = r"""
#include <stdio.h>
#include <stdlib.h>
/* a USDT-style semaphore, in file-backed data: the kernel counts attached probes in it */
__attribute__((section(".probes"))) unsigned short ebm_semaphore = 0;
__attribute__((noinline)) void ebm_probe(void) { __asm__ volatile(""); }
int main(void) {
    char line[32];
    while (fgets(line, sizeof line, stdin)) {
        for (int i = atoi(line); i > 0; i--) ebm_probe();
        printf("%u\n", ebm_semaphore);
        fflush(stdout);
    }
    return 0;
}
"""


def _elf_file_offset(binary: Path, symbol: str) -> int:
    """File offset of ``symbol`` in ``binary``, from nm's address and readelf's sections."""
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True).stdout
    addr = next(int(ln.split()[0], 16) for ln in nm.splitlines() if ln.endswith(" " + symbol))
    sections = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True,
                              check=True).stdout
    for line in sections.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[0].startswith("[") and fields[2] != "NOBITS":
            try:
                start, offset, size = (int(fields[i], 16) for i in (3, 4, 5))
            except ValueError:
                continue
            if start <= addr < start + size:
                return addr - start + offset
    raise LookupError(symbol)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A small binary with a probe-able function and a semaphore in its data."""
    if shutil.which("cc") is None or shutil.which("readelf") is None:
        pytest.skip("needs a C compiler and binutils to build the uprobe target")
    tmp = tmp_path_factory.mktemp("uprobe_target")
    (tmp / "target.c").write_text(TARGET_C)
    subprocess.run(["cc", "-O1", "-o", str(tmp / "target"), str(tmp / "target.c")], check=True)
    return tmp / "target"


def test_uprobe_semaphore_counts_while_attached(clean, counter, prog_fds, route, target):
    proc = subprocess.Popen([str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)

    def call(n: int) -> int:
        proc.stdin.write(f"{n}\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())

    try:
        assert call(0) == 0
        prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, pid=proc.pid))
        with link.uprobe(prog_fds[0], str(target), _elf_file_offset(target, "ebm_probe"),
                         ref_ctr_offset=_elf_file_offset(target, "ebm_semaphore")):
            assert call(123) == 1  # the kernel raised the semaphore of the running process
        assert call(7) == 0
        assert counter() == 123
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("backend", ["bcc", "libbpf"])
def test_uprobe_refused_for_another_tracers_semaphore_says_so(clean, counter, prog_fds, target,
                                                              backend):
    """A uprobe held with a USDT reference counter (as BCC's tools register theirs) makes the
    kernel refuse a plain one at the same address with EINVAL; the error names that cause,
    not a missing symbol."""
    from ebpf_magic import Program
    from ebpf_magic.errors import AttachError

    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    source = {"bcc": "int f(void *ctx) { return 0; }",
              "libbpf": '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n'
                        'SEC("uprobe") int f(void *ctx) { return 0; }\n'
                        'char LICENSE[] SEC("license") = "GPL";'}[backend]
    with link.uprobe(prog_fds[0], str(target), _elf_file_offset(target, "ebm_probe"),
                     ref_ctr_offset=_elf_file_offset(target, "ebm_semaphore")):
        with pytest.raises(AttachError) as info:
            Program(source, attach=[f"uprobe:{target}:ebm_probe=f"], backend=backend)
    assert "ref_ctr_offset mismatch" in info.value.hint
    assert "Another tracer holds a uprobe at this address" in info.value.hint
    assert "function symbol" not in info.value.hint


UPROBE_CHILD = textwrap.dedent(f"""
    import os, sys, time
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from rawprog import prog_load
    from ebpf_magic.kernel import link
    import importlib, struct
    uprobe = importlib.import_module("ebpf_magic.kernel.link.uprobe")
    exit0 = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    prog = prog_load(2, exit0, "GPL")
    if sys.argv[1] == "tracefs":
        uprobe.ROUTES = ("tracefs",)
    lk = link.uprobe(prog, sys.argv[2], int(sys.argv[3]))
    print(lk.description, flush=True)
    if sys.argv[4] == "count":
        for _ in range(int(sys.argv[5])):
            os.getpid()
        lk.close()
        print("closed", flush=True)
    else:
        time.sleep(60)
""")


def _child(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", UPROBE_CHILD, *args],
                            stdout=subprocess.PIPE, text=True, **kw)


@pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv"), reason="needs setpriv (util-linux)")
def test_uprobe_without_cap_sys_admin_falls_back_to_tracefs(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    child = subprocess.Popen(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--",
         sys.executable, "-c", UPROBE_CHILD, "auto", LIBC_PATH, str(GETPID_OFFSET), "count",
         "0"], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    description, closed = out.splitlines()
    assert f"(ebpf_magic_{child.pid}/p_" in description  # the PMU refused: tracefs was used
    assert closed == "closed"
    assert not [e for e in uprobe_events() if f"ebpf_magic_{child.pid}/" in e]


def test_first_attach_of_a_process_removes_stale_probe_events(clean):
    killed = _child("tracefs", LIBC_PATH, str(GETPID_OFFSET), "sleep")
    try:
        assert killed.stdout.readline()
    finally:
        killed.kill()
        killed.wait()
        killed.stdout.close()
    group = f"ebpf_magic_{killed.pid}/"
    assert [s for s in link.stale_probe_events() if s.startswith(group)]
    # The sweep never waits for an entry the kernel still holds for a moment after the
    # kill; a later process's first attach removes it.
    for delay in (0.1, 0.5, 2.0):
        time.sleep(delay)
        sweeper = _child("pmu", LIBC_PATH, str(GETPID_OFFSET), "count", "0")
        sweeper.communicate(timeout=30)
        assert sweeper.returncode == 0
        if not [s for s in link.stale_probe_events() if s.startswith(group)]:
            break
    assert not [e for e in uprobe_events() if group in e]


def test_stale_entries_named_the_bcc_way_are_found_by_their_pid_suffix(clean):
    dead = _dead_pid()
    live = os.getppid()
    root = tracefs.root()
    names = {pid: f"p_ebm_test_0x{GETPID_OFFSET:x}_bcc_{pid}" for pid in (dead, live)}
    fd = os.open(root / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        for name in names.values():
            os.write(fd, f"p:uprobes/{name} {LIBC_PATH}:0x{GETPID_OFFSET:x}\n".encode())
    finally:
        os.close(fd)
    try:
        stale = link.stale_probe_events()
        assert f"uprobes/{names[dead]}" in stale
        assert f"uprobes/{names[live]}" not in stale
        assert f"uprobes/{names[dead]}" in link.remove_stale_probe_events()
        assert not [e for e in uprobe_events() if names[dead] in e]
        assert [e for e in uprobe_events() if names[live] in e]
    finally:
        for name in names.values():
            probe_events.remove("uprobe", "uprobes", name)
    assert not [e for e in uprobe_events() if "_ebm_test_" in e]


def test_entries_of_another_pid_namespace_are_never_judged(clean, monkeypatch):
    """A pid names a process only within its namespace: another's entries are left alone."""
    dead = _dead_pid()
    here = probe_events.pid_namespace()
    other = here + 1
    groups = {"plain": f"ebpf_magic_{dead}", "other_ns": f"ebpf_magic_{dead}_ns{other}",
              "bcc": "uprobes"}
    events = {"plain": "p_ns_test_0", "other_ns": "p_ns_test_1", "bcc": f"p_ns_test_bcc_{dead}"}
    fd = os.open(tracefs.root() / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        for k in groups:
            os.write(fd, f"p:{groups[k]}/{events[k]} {LIBC_PATH}:0x{GETPID_OFFSET:x}\n".encode())
    finally:
        os.close(fd)
    names = {k: f"{groups[k]}/{events[k]}" for k in groups}
    try:
        stale = link.stale_probe_events()
        assert names["plain"] in stale and names["bcc"] in stale  # this is the initial ns
        assert names["other_ns"] not in stale
        # seen from inside another namespace: only entries naming that namespace count
        monkeypatch.setattr(probe_events, "pid_namespace", lambda: other)
        assert probe_events.group() == f"ebpf_magic_{os.getpid()}_ns{other}"
        stale = link.stale_probe_events()
        assert names["other_ns"] in stale
        assert names["plain"] not in stale and names["bcc"] not in stale
    finally:
        for k in groups:
            probe_events.remove("uprobe", groups[k], events[k])
    assert not [e for e in uprobe_events() if "p_ns_test_" in e]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_probe_events_of_killed_process_are_removed(clean, counter, prog_fds,
                                                          monkeypatch):
    monkeypatch.setattr(uprobe_mod, "ROUTES", ("tracefs",))
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, pid=os.getpid()))
    killed = _child("tracefs", LIBC_PATH, str(GETPID_OFFSET), "sleep")
    alive = _child("tracefs", LIBC_PATH, str(GETPID_OFFSET), "sleep")
    try:
        for child in (killed, alive):
            assert child.stdout.readline()  # attached
        mine = link.uprobe(prog_fds[0], LIBC_PATH, GETPID_OFFSET)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        stale = link.stale_probe_events()
        killed_group = f"ebpf_magic_{killed.pid}"
        assert [s for s in stale if s.startswith(killed_group + "/")]
        assert not [s for s in stale if s.startswith((f"ebpf_magic_{alive.pid}/",
                                                      probe_events.group() + "/"))]
        assert [e for e in uprobe_events() if killed_group in e]
        row = features.check_probe_events()
        assert row.status == features.WARN and killed_group in row.detail
        removed = link.remove_stale_probe_events()
        assert [s for s in removed if s.startswith(killed_group + "/")]
        assert not [e for e in uprobe_events() if killed_group in e]
        assert link.stale_probe_events() == []
        assert features.check_probe_events().status == features.OK
        # live entries, the other process's and ours, are untouched and still work
        assert [e for e in uprobe_events() if f"ebpf_magic_{alive.pid}/" in e]
        before = counter()
        _getpid(25)
        assert counter() - before == 25
        mine.close()
    finally:
        for child in (killed, alive):
            child.kill()
            child.wait()
            child.stdout.close()
    # the cleanup above killed the other child too: now its entry is stale, and goes
    assert [s for s in link.remove_stale_probe_events()
            if s.startswith(f"ebpf_magic_{alive.pid}/")]
    assert not [e for e in uprobe_events() if f"ebpf_magic_{alive.pid}/" in e]


# -- kprobes ---------------------------------------------------------------------------------

NO_KPROBES = ("this kernel has no kprobes (built without CONFIG_KPROBES: no kprobe_events in "
              "tracefs, no kprobe PMU)")


@pytest.mark.kernel_feature
@pytest.mark.skipif(not kernel.kprobes_supported(), reason=NO_KPROBES)
@pytest.mark.parametrize("route", ["pmu", "tracefs"])
def test_kprobe_counts_getppid_exactly(clean, counter, prog_fds, route, monkeypatch):
    kprobe = importlib.import_module("ebpf_magic.kernel.link.kprobe")
    monkeypatch.setattr(kprobe, "ROUTES", (route,))
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd, pid=os.getpid()))
    with link.kprobe(prog_fds[0], "__x64_sys_getppid"):
        _getppid(200)
    with link.kprobe(prog_fds[0], "__x64_sys_getppid", retprobe=True):
        _getppid(100)
    _getppid(10)
    assert counter() == 300


@pytest.mark.kernel_feature
@pytest.mark.skipif(kernel.kprobes_supported(), reason="this kernel has kprobes")
def test_kprobe_without_kprobes_says_so(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_KPROBE, counter.fd))
    with pytest.raises(link.LinkError) as info:
        link.kprobe(prog_fds[0], "vfs_read")
    assert info.value.errno == errno.ENOENT
    assert "kprobe_events does not exist" in str(info.value)
    assert "without kprobes" in str(info.value)


# -- XDP -------------------------------------------------------------------------------------

def _xdp_attached(dev: str) -> bool:
    out = subprocess.run(["ip", "-j", "-d", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    return '"xdp"' in out


def test_xdp_counts_frames_on_a_veth(clean, counter, prog_fds, veth):
    sender, receiver = veth
    prog_fds.append(counting_prog(PROG_XDP, counter.fd, ethertype=ETH_P_TEST, ret=XDP_PASS))
    ifindex = socket.if_nametoindex(receiver)
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETH_P_TEST) + bytes(46)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((sender, 0))
        with link.xdp(prog_fds[0], ifindex, 1 << 1) as lk:  # XDP_FLAGS_SKB_MODE
            assert _xdp_attached(receiver)
            prog_id = sysbpf.prog_info(prog_fds[0]).id
            assert [x for x in bpf_links() if x.get("type") == "xdp"
                    and x.get("prog_id") == prog_id]
            with pytest.raises(link.LinkError) as busy:
                link.xdp(prog_fds[0], ifindex, 1 << 1)
            assert busy.value.errno == errno.EBUSY
            assert "detach it first" in str(busy.value)
            for _ in range(20):
                s.send(frame)
            deadline = time.monotonic() + 2
            while counter() < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert counter() == 20
            assert lk.description.startswith(f"xdp:ifindex {ifindex}")
        assert not _xdp_attached(receiver)
        s.send(frame)
        time.sleep(0.05)
    assert counter() == 20


def test_xdp_device_names_the_devices_and_modes_there_are():
    assert link.xdp_device("lo") == (1, 1 << 1)  # skb mode unless told
    assert link.xdp_device("lo@drv") == (1, 1 << 2)
    with pytest.raises(link.LinkError) as info:
        link.xdp_device("nosuchdev0")
    assert info.value.errno == errno.ENODEV and info.value.what == "no network device 'nosuchdev0'"
    assert "lo" in info.value.hint.removeprefix("Devices here: ").split(", ")
    with pytest.raises(link.LinkError, match="unknown XDP mode 'fast'") as info:
        link.xdp_device("lo@fast")
    assert info.value.hint == "Modes: @skb, @drv, @hw"


# -- traffic control and socket filters ------------------------------------------------------

def _tc(dev: str, what: str, *rest: str) -> str:
    """``tc WHAT show dev DEV [REST]`` (what: qdisc or filter)."""
    return subprocess.run(["tc", what, "show", "dev", dev, *rest], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.parametrize("route", ["tcx", "clsact"])
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_tc_counts_frames_on_a_veth_and_leaves_nothing(clean, counter, prog_fds, veth, route,
                                                       direction):
    sender, receiver = veth
    dev = receiver if direction == "ingress" else sender
    prog_fds.append(counting_prog(PROG_SCHED_CLS, counter.fd, skb_protocol=ETH_P_TEST, ret=0))
    prog_id = sysbpf.prog_info(prog_fds[0]).id
    with link.tc(prog_fds[0], socket.if_nametoindex(dev), direction, name="count_frames",
                 routes=(route,)) as lk:
        if route == "tcx":
            assert [x for x in bpf_links() if x.get("prog_id") == prog_id]
            assert "clsact" not in _tc(dev, "qdisc")
        else:
            assert "clsact" in _tc(dev, "qdisc")
            assert "count_frames" in _tc(dev, "filter", direction)
        send_test_frames(sender, 20)
        assert settle(counter, 20) == 20
        assert lk.description.endswith(f":{direction}" + (" (clsact)" if route == "clsact"
                                                           else ""))
    assert "clsact" not in _tc(dev, "qdisc")  # the qdisc the link made is gone
    assert not [x for x in bpf_links() if x.get("prog_id") == prog_id]
    send_test_frames(sender, 5)
    assert settle(counter, 25) == 20


def test_tc_keeps_a_clsact_qdisc_it_did_not_make(clean, counter, prog_fds, veth):
    sender, receiver = veth
    subprocess.run(["tc", "qdisc", "add", "dev", receiver, "clsact"], check=True)
    prog_fds.append(counting_prog(PROG_SCHED_CLS, counter.fd, skb_protocol=ETH_P_TEST, ret=0))
    with link.tc(prog_fds[0], socket.if_nametoindex(receiver), "ingress", name="mine",
                 routes=("clsact",)):
        send_test_frames(sender, 7)
        assert settle(counter, 7) == 7
    assert "clsact" in _tc(receiver, "qdisc")  # someone else's: kept
    assert "mine" not in _tc(receiver, "filter", "ingress")  # our filter: removed


def test_tc_names_a_bad_direction_and_device():
    with pytest.raises(link.LinkError, match="tc direction 'sideways'") as info:
        link.tc(-1, 1, "sideways")
    assert "ingress or egress" in info.value.hint
    with pytest.raises(link.LinkError, match="no network device 'nosuchdev0'"):
        link.device_index("nosuchdev0")


def test_socket_filter_on_a_socket_pair_counts_and_drops(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_SOCKET_FILTER, counter.fd, ret=0))  # keeps 0 bytes
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        with link.socket_filter(prog_fds[0], b.fileno()) as lk:
            assert lk.description == f"socket:fd {b.fileno()}"
            for i in range(10):
                a.send(b"m%d" % i)
            assert counter() == 10
            with pytest.raises(BlockingIOError):  # every message dropped by the filter
                b.recv(64)
        a.send(b"after")  # detached: delivered, not counted
        assert b.recv(64) == b"after"
        assert counter() == 10


def test_socket_filter_holds_its_own_descriptor(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_SOCKET_FILTER, counter.fd, ret=0xFFFF))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lk = link.socket_filter(prog_fds[0], b.fileno())
    b.close()  # the caller's descriptor goes; the link's duplicate keeps the socket
    lk.close()  # detaches without error
    a.close()
    with pytest.raises(link.LinkError, match="is not a socket"):
        r, w = os.pipe()
        try:
            link.socket_filter(prog_fds[0], r)
        finally:
            os.close(r)
            os.close(w)
    assert counter() == 0
