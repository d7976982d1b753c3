"""The link layer: programs loaded without BCC, attached by fd, counted exactly, detached clean.

Programs are assembled here from a few instructions: each adds 1 to slot 0 of
an array map when it runs (optionally only for this process's tgid, or only for
one syscall number or ethertype), so counts are exact.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ebpf_magic import kernel, link, sysbpf
from ebpf_magic.link import probe_events
from ebpf_magic.link import uprobe as uprobe_mod

from conftest import bpftool_json, own_bpf_fds, uprobe_events

pytestmark = pytest.mark.kernel

PROG_KPROBE, PROG_TRACEPOINT, PROG_XDP, PROG_PERF_EVENT, PROG_RAW_TRACEPOINT = 2, 5, 6, 7, 17
MAP_ARRAY = 2
NR_GETPPID = 110  # x86_64
ETH_P_TEST = 0x88B5  # IEEE local experimental ethertype
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
                  ret: int = 0) -> int:
    """Load a program counting its runs in ``map_fd`` slot 0, under the given filters."""
    body = b""
    if raw_syscall is not None:  # raw sys_enter: ctx->args[1] is the syscall number
        body += _insn(0x79, 6, 1, 8)  # r6 = *(u64 *)(r1 + 8)
        body += _insn(0x55, 6, off=COUNT_LEN + (3 if pid is not None else 0), imm=raw_syscall)
    if ethertype is not None:  # xdp_md: data at +0, data_end at +4
        body += (_insn(0x61, 2, 1, 0) + _insn(0x61, 3, 1, 4)
                 + _insn(0xBF, 4, 2) + _insn(0x07, 4, imm=14)
                 + _insn(0x2D, 4, 3, COUNT_LEN + 2)  # if r4 > r3 (frame too short) skip
                 + _insn(0x69, 5, 2, 12)  # r5 = *(u16 *)(r2 + 12)
                 + _insn(0x55, 5, off=COUNT_LEN, imm=socket.htons(ethertype)))
    if pid is not None:
        body += _skip_unless_pid(pid, COUNT_LEN)
    body += _count(map_fd) + _exit(ret)
    return sysbpf.prog_load(prog_type, body, "GPL", name="test_link")


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


@pytest.fixture
def clean(no_leaks):
    """No perf/bpf fd, BPF link, or tracefs probe event of this process survives the test."""
    links_before = {x["id"] for x in bpftool_json("link", "show")}
    yield
    ours = probe_events.group()
    assert not [e for e in uprobe_events() if ours in e], "uprobe_events entry left behind"
    new_links = [x for x in bpftool_json("link", "show") if x["id"] not in links_before
                 and any(p["pid"] == os.getpid() for p in x.get("pids", []))]
    assert not new_links, f"BPF links left: {new_links}"


def _getppid(n: int) -> None:
    for _ in range(n):
        os.getppid()


# -- tracepoints -----------------------------------------------------------------------------

def test_tracepoint_counts_exactly_and_close_detaches(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    fds_before = own_bpf_fds()
    lk = link.tracepoint(prog_fds[0], "syscalls", "sys_enter_getppid")
    assert lk.description == "tracepoint:syscalls:sys_enter_getppid"
    assert len(lk.fds) == 1
    assert len(own_bpf_fds()) == len(fds_before) + 1
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


def test_close_all_detaches_many_tracepoints(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_TRACEPOINT, counter.fd, pid=os.getpid()))
    names = link.tracepoints("syscalls:sys_enter_get*")
    links = [link.tracepoint(prog_fds[0], c, n) for c, n in names]
    assert len(names) > 10
    _getppid(50)
    assert counter() == 50
    link.close_all(links)
    assert all(lk.fds == () for lk in links)
    _getppid(50)
    assert counter() == 50


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
    lk = link.perf_event(prog_fds[0], 1, 0, sample_freq=1000)  # software cpu-clock
    assert len(lk.fds) == len(sysbpf.online_cpus())
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        pass
    lk.close()
    fired = counter()
    assert fired > 0
    assert own_bpf_fds() == fds_before
    time.sleep(0.05)
    assert counter() == fired


def test_perf_event_on_chosen_cpus_by_period(clean, counter, prog_fds):
    prog_fds.append(counting_prog(PROG_PERF_EVENT, counter.fd, pid=os.getpid()))
    # task-clock of this process: one run per 1 ms of its CPU time
    with link.perf_event(prog_fds[0], 1, 1, sample_period=1_000_000, pid=os.getpid(),
                         cpus=[-1]) as lk:
        assert len(lk.fds) == 1
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            pass
    assert counter() > 50
