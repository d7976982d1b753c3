"""The bpf(2) and perf_event_open(2) system calls, through ctypes.

Maps and event streams work on file descriptors with these calls directly, so
they do not depend on the compiler backend that created the descriptors.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import TYPE_CHECKING

from ebpf_magic.kernel import mapkinds

if TYPE_CHECKING:
    from ctypes import _CArgObject, _CData

    import numpy as np

    # memory bpf(2) reads or writes: None (NULL), an address, a ctypes object or a numpy array
    Buffer = _CData | np.ndarray | int | None

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331,
                       "riscv64": 241}
_MACHINE = platform.machine()

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_GET_NEXT_ID = 11
MAP_GET_NEXT_ID = 12
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_AND_DELETE_ELEM = 21
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27

BPF_PROG_LOAD = 5
PROG_TEST_RUN = 10
ENABLE_STATS = 32
STATS_RUN_TIME = 0  # enum bpf_stats_type

# enum bpf_prog_type, by the names bpftool uses
PROG_TYPES = {
    1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint",
    6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in",
    11: "lwt_out", 12: "lwt_xmit", 13: "sock_ops", 14: "sk_skb", 15: "cgroup_device",
    16: "sk_msg", 17: "raw_tracepoint", 18: "cgroup_sock_addr", 19: "lwt_seg6local",
    20: "lirc_mode2", 21: "sk_reuseport", 22: "flow_dissector", 23: "cgroup_sysctl",
    24: "raw_tracepoint_writable", 25: "cgroup_sockopt", 26: "tracing", 27: "struct_ops",
    28: "ext", 29: "lsm", 30: "sk_lookup", 31: "syscall", 32: "netfilter",
}

# update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (the leading fields every kernel since 4.13 fills)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64)]

    @property
    def kind(self) -> str:
        """The map kind's name (see :mod:`.mapkinds`)."""
        return mapkinds.type_name(self.type)


class ProgInfo(ctypes.Structure):
    """The leading fields of ``struct bpf_prog_info``, up to the run statistics (kernel 5.1;
    ``recursion_misses`` 5.12: older kernels leave the fields they lack zero)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32),
                ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64),
                # counted only while run statistics are enabled (see enable_stats)
                ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64),
                ("recursion_misses", ctypes.c_uint64)]

    @property
    def kind(self) -> str:
        return PROG_TYPES.get(self.type, f"type{self.type}")


def _call(nr_table: dict[str, int], *args: _CData | _CArgObject) -> int:
    nr = nr_table.get(_MACHINE)
    if nr is None:
        raise OSError(errno.ENOSYS, f"no system call number known for {_MACHINE}")
    ret = _libc.syscall(nr, *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2) with ``attr``; raise :class:`OSError` on failure."""
    return _call(_NR_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))


def perf_event_open(attr: ctypes.Structure, pid: int, cpu: int, group_fd: int = -1,
                    flags: int = 0) -> int:
    """Call perf_event_open(2); return the new file descriptor."""
    return _call(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), ctypes.c_int(pid), ctypes.c_int(cpu),
                 ctypes.c_int(group_fd), ctypes.c_ulong(flags))


def _found(cmd: int, attr: ctypes.Structure) -> bool:
    """Call bpf(2); False where it fails with ENOENT (no such entry, or no next one)."""
    try:
        bpf(cmd, attr)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def _addr(buf: Buffer) -> int:
    """An address: None is NULL, ints pass through, numpy arrays and ctypes objects resolve."""
    if buf is None:
        return 0
    if isinstance(buf, int):
        return buf
    if hasattr(buf, "ctypes"):
        return buf.ctypes.data
    return ctypes.addressof(buf)


def map_lookup(fd: int, key: Buffer, value: Buffer, flags: int = 0) -> bool:
    """Read the value of ``key`` into the ctypes buffer ``value``; False when absent."""
    return _found(MAP_LOOKUP_ELEM,
                  _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags))


def map_update(fd: int, key: Buffer, value: Buffer, flags: int = BPF_ANY) -> None:
    """Write ``value`` at ``key`` (``key`` is None for queue and stack maps)."""
    bpf(MAP_UPDATE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags))


def map_delete(fd: int, key: Buffer) -> bool:
    """Delete ``key``; False when it was not there."""
    return _found(MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key)))


def map_lookup_and_delete(fd: int, key: Buffer, value: Buffer) -> bool:
    """Pop into ``value`` (queue/stack maps use ``key=None``); False when empty."""
    return _found(MAP_LOOKUP_AND_DELETE_ELEM,
                  _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)))


def map_get_next_key(fd: int, key: Buffer, next_key: Buffer) -> bool:
    """Store the key after ``key`` (None: the first) in ``next_key``; False at the end."""
    return _found(MAP_GET_NEXT_KEY,
                  _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(next_key)))


def map_lookup_batch(fd: int, in_batch: Buffer, out_batch: Buffer, keys: Buffer,
                     values: Buffer, count: int) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH step; returns (entries read, whether the map is exhausted).

    ``in_batch`` is None for the first call; pass the previous ``out_batch`` after.
    Raises ``OSError(EINVAL/ENOTSUPP)`` where the map kind has no batch operations.
    """
    attr = _BatchAttr(in_batch=_addr(in_batch), out_batch=_addr(out_batch),
                      keys=_addr(keys), values=_addr(values), count=count, map_fd=fd)
    exhausted = not _found(MAP_LOOKUP_BATCH, attr)
    return attr.count, exhausted


def map_update_batch(fd: int, keys: Buffer, values: Buffer, count: int,
                     flags: int = BPF_ANY) -> int:
    """Write ``count`` keys and values in one call; return how many were written."""
    attr = _BatchAttr(keys=_addr(keys), values=_addr(values), count=count, map_fd=fd,
                      elem_flags=flags)
    bpf(MAP_UPDATE_BATCH, attr)
    return attr.count


def map_info(fd: int) -> MapInfo:
    """The kernel's description of the map behind ``fd``."""
    info = MapInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                      info=ctypes.addressof(info)))
    return info


def prog_info(fd: int) -> ProgInfo:
    """The kernel's description of the program behind ``fd``."""
    info = ProgInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                      info=ctypes.addressof(info)))
    return info


def loaded_prog_ids() -> list[int]:
    """Ids of every BPF program loaded in the kernel (needs CAP_SYS_ADMIN)."""
    ids, attr = [], _IdAttr(id=0)
    while _found(PROG_GET_NEXT_ID, attr):
        ids.append(attr.next_id)
        attr.id = attr.next_id
    return ids


def possible_cpus() -> int:
    """Number of possible CPUs, the stride of per-CPU map values."""
    return _cpu_list_len("/sys/devices/system/cpu/possible")


def online_cpus() -> list[int]:
    """Ids of the online CPUs, where perf buffers are opened."""
    return _cpu_list("/sys/devices/system/cpu/online")


def _cpu_list(path: str) -> list[int]:
    with open(path) as f:
        text = f.read().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _cpu_list_len(path: str) -> int:
    return max(_cpu_list(path)) + 1


LINK_CREATE = 28


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("_rest", ctypes.c_uint64 * 4)]


def link_create(prog_fd: int, target: int, attach_type: int, flags: int = 0) -> int:
    """Create a BPF link (XDP: ``target`` is the ifindex); closing the fd detaches it."""
    return bpf(LINK_CREATE, _LinkCreateAttr(prog_fd=prog_fd, target_fd=target,
                                            attach_type=attach_type, flags=flags))


ITER_CREATE = 33
BPF_TRACE_ITER = 28  # enum bpf_attach_type


class _IterLinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("iter_info", ctypes.c_uint64), ("iter_info_len", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("_rest", ctypes.c_uint64 * 2)]


class _IterCreateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


def iter_link_create(prog_fd: int, info: bytes = b"") -> int:
    """A BPF link for iterator program ``prog_fd``; ``info`` is its ``bpf_iter_link_info``
    (a map's fd, a task's tid/pid) or empty. Reading its iterators runs the program."""
    buf = ctypes.create_string_buffer(info, len(info)) if info else None
    return bpf(LINK_CREATE, _IterLinkCreateAttr(
        prog_fd=prog_fd, attach_type=BPF_TRACE_ITER,
        iter_info=ctypes.addressof(buf) if buf is not None else 0, iter_info_len=len(info)))


def iter_create(link_fd: int) -> int:
    """BPF_ITER_CREATE: a new readable fd whose reads run the iterator behind ``link_fd``."""
    return bpf(ITER_CREATE, _IterCreateAttr(link_fd=link_fd))


def map_delete_batch(fd: int, keys: Buffer, count: int) -> int:
    """Delete ``count`` keys in one call; return how many were deleted."""
    attr = _BatchAttr(keys=_addr(keys), count=count, map_fd=fd)
    bpf(MAP_DELETE_BATCH, attr)
    return attr.count


MAP_CREATE = 0
RAW_TRACEPOINT_OPEN = 17
PERF_FLAG_FD_CLOEXEC = 1 << 3


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _RawTracepointAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("cookie", ctypes.c_uint64)]


class PerfEventAttr(ctypes.Structure):
    """``struct perf_event_attr`` up to ``config2`` (PERF_ATTR_SIZE_VER1)."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("wakeup", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64),
                ("config2", ctypes.c_uint64)]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> int:
    """Create a map; return its file descriptor (close-on-exec, as every bpf(2) fd)."""
    return bpf(MAP_CREATE, _MapCreateAttr(map_type=map_type, key_size=key_size,
                                          value_size=value_size, max_entries=max_entries,
                                          map_flags=flags, map_name=name.encode()[:15]))


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: attach ``prog_fd`` to raw tracepoint ``name``.

    ``name`` is None for programs whose target was fixed at load (fentry, fexit, LSM).
    Closing the returned fd detaches.
    """
    buf = ctypes.create_string_buffer(name.encode()) if name is not None else None
    return bpf(RAW_TRACEPOINT_OPEN,
               _RawTracepointAttr(name=ctypes.addressof(buf) if buf is not None else 0,
                                  prog_fd=prog_fd))


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(2) with an integer argument; raise :class:`OSError` on failure."""
    ret = _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_ulong(arg))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


def prog_load(prog_type: int, insns: bytes, license: str, kern_version: int = 0,
              name: str = "", expected_attach_type: int = 0, log_size: int = 0) -> int:
    """BPF_PROG_LOAD of raw instructions; return the program's descriptor.

    :class:`OSError` when the kernel refuses it; with ``log_size`` its message carries
    the verifier's log (up to that many bytes).
    """
    code = ctypes.create_string_buffer(insns, len(insns))
    text = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(text),
                         kern_version=kern_version, prog_name=name.encode()[:15],
                         expected_attach_type=expected_attach_type)
    if log is not None:
        attr.log_level, attr.log_size, attr.log_buf = 1, log_size, ctypes.addressof(log)
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        said = log.value.decode(errors="replace").strip() if log is not None else ""
        raise OSError(e.errno, f"{e.strerror}: {said}" if said else e.strerror) from None


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32)]


def enable_stats() -> int:
    """BPF_ENABLE_STATS: run statistics are counted machine-wide while the returned
    descriptor (or any other such) is open. Needs CAP_SYS_ADMIN; kernel >= 5.8."""
    return bpf(ENABLE_STATS, _EnableStatsAttr(type=STATS_RUN_TIME))


def prog_fd_by_id(prog_id: int) -> int:
    """A descriptor of the loaded program ``prog_id`` (needs CAP_SYS_ADMIN)."""
    return bpf(PROG_GET_FD_BY_ID, _IdAttr(id=prog_id))


def load_return_zero(name: str = "") -> int:
    """Load the smallest socket filter, ``return 0``: a program to run with :func:`test_run`."""
    # BPF_MOV64_IMM(BPF_REG_0, 0); BPF_EXIT_INSN(), in this machine's byte order
    code = struct.pack("=BBhi", 0xB7, 0, 0, 0) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    return prog_load(1, code, "GPL", name=name)


def test_run(prog_fd: int, data: bytes = bytes(64), repeat: int = 1) -> int:
    """BPF_PROG_TEST_RUN: run ``prog_fd`` on ``data`` ``repeat`` times; its return value."""
    return _test_run(prog_fd, data, repeat).retval


def test_run_duration(prog_fd: int, data: bytes = bytes(64), repeat: int = 1) -> int:
    """The kernel's average nanoseconds per run over ``repeat`` test runs of ``prog_fd``."""
    return _test_run(prog_fd, data, repeat).duration


def _test_run(prog_fd: int, data: bytes, repeat: int) -> _TestRunAttr:
    buf = ctypes.create_string_buffer(data, len(data))
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_in=ctypes.addressof(buf),
                        repeat=repeat)
    bpf(PROG_TEST_RUN, attr)
    return attr
