"""Every map kind filled by a real program from a workload the test controls, read as .df."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from ebpf_magic.data.maps import frame, normalize_dtype
from ebpf_magic.kernel import sysbpf
from ebpf_magic.program import Program

from conftest import bpftool_json

SRC = r"""
struct key_t { u32 pid; char comm[16]; };
struct val_t { u64 calls; u64 bytes; };
BPF_HASH(calls, struct key_t, struct val_t);
BPF_ARRAY(arr, u64, 4);
BPF_PERCPU_ARRAY(pcpu, u64, 2);
BPF_PERCPU_ARRAY(pcpu32, u32, 2);
BPF_PERCPU_HASH(pcpu_hash, u32, u64);
BPF_TABLE("lru_hash", u64, u64, sizes, 8);
BPF_QUEUE(queue, u64, 16);
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    struct key_t k = {};
    k.pid = pid;
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    struct val_t zero = {}, *v = calls.lookup_or_try_init(&k, &zero);
    if (v) { v->calls++; v->bytes += 10; }
    int i0 = 0, i2 = 2;
    arr.increment(i0);
    u64 *two = arr.lookup(&i2);
    if (two) *two = 42;
    pcpu.increment(i0);
    pcpu32.increment(i0);
    u64 one = 1, *c = pcpu_hash.lookup(&pid);
    if (c) (*c)++; else pcpu_hash.update(&pid, &one);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID || args->fd != FD) return 0;
    u64 n = args->count;
    u64 one = 1, *c = sizes.lookup(&n);
    if (c) (*c)++; else sizes.update(&n, &one);
    queue.push(&n, 0);
    return 0;
}
"""

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def prog():
    r, w = os.pipe()
    with Program(SRC, defines={"PID": os.getpid(), "FD": w}) as p:
        for _ in range(7):
            os.getppid()
        for n in (3, 3, 5, 11):
            os.write(w, b"x" * n)
            os.read(r, 64)
        yield p
    os.close(r)
    os.close(w)


def test_hash_struct_key_and_value_as_columns(prog):
    df = prog.maps["calls"].df
    comm = Path("/proc/self/comm").read_text().strip()[:15]
    assert list(df.columns) == ["pid", "comm", "calls", "bytes"]
    assert df.to_dict("records") == [{"pid": os.getpid(), "comm": comm, "calls": 7,
                                      "bytes": 70}]
    assert prog.maps["calls"][(os.getpid(), comm)] == {"calls": 7, "bytes": 70}


def test_array_lists_every_index(prog):
    df = prog.maps["arr"].df
    assert df["key"].tolist() == [0, 1, 2, 3]
    assert df["value"].tolist() == [7, 0, 42, 0]


def test_percpu_array_has_a_column_per_cpu_and_a_total(prog):
    df = prog.maps["pcpu"].df
    ncpu = sysbpf.possible_cpus()
    assert list(df.columns) == ["key"] + [f"value[cpu{i}]" for i in range(ncpu)] + ["total"]
    assert df["total"].tolist() == [7, 0]
    assert df.filter(like="[cpu").sum(axis=1).tolist() == [7, 0]


def test_percpu_values_narrower_than_8_bytes_take_8_byte_slots(prog):
    m = prog.maps["pcpu32"]
    ncpu = sysbpf.possible_cpus()
    assert m.df["total"].tolist() == [7, 0]
    m[1] = [10 + cpu for cpu in range(ncpu)]
    assert m[1] == [10 + cpu for cpu in range(ncpu)]
    assert m.df.loc[1, [f"value[cpu{cpu}]" for cpu in range(ncpu)]].tolist() == \
        [10 + cpu for cpu in range(ncpu)]
    entry = bpftool_json("map", "lookup", "id", str(sysbpf.map_info(m.handle.fd).id),
                         "key", "1", "0", "0", "0")  # the kernel's own view of what was written
    assert [int(v["value"][0], 16) for v in entry["values"]] == [10 + cpu for cpu in range(ncpu)]


def test_percpu_hash(prog):
    df = prog.maps["pcpu_hash"].df
    assert df["key"].tolist() == [os.getpid()]
    assert df["total"].tolist() == [7]


def test_lru_hash_counts_write_sizes(prog):
    df = prog.maps["sizes"].df.sort_values("key")
    assert dict(zip(df["key"], df["value"], strict=True)) == {3: 2, 5: 1, 11: 1}


def test_queue_shows_its_head_and_pops_in_order(prog):
    q = prog.maps["queue"]
    assert q.df["value"].tolist() == [3]
    assert [q.pop() for _ in range(4)] == [3, 3, 5, 11]
    with pytest.raises(KeyError):
        q.pop()
    q.push(99)
    assert q.peek() == 99 and q.df["value"].tolist() == [99]
    assert q.pop() == 99


def test_perf_array_is_metadata_only(prog):
    df = prog.maps["events"].df
    assert df.loc[0, "kind"] == "perf_event_array"
    assert df.loc[0, "map"] == "events"


def test_batch_and_per_key_snapshots_agree(prog):
    m = prog.maps["sizes"]
    keys, values = m.snapshot()
    k2, v2 = m._snapshot_per_key()
    assert sorted(zip(keys.tolist(), values.tolist(), strict=True)) == \
        sorted(zip(k2.tolist(), v2.tolist(), strict=True))
    assert len(m) == 3


def test_python_writes_reach_the_kernel_map(prog):
    m = prog.maps["sizes"]
    m[1000] = 5
    assert 1000 in m and m[1000] == 5
    assert 1000 in m.df["key"].tolist()
    del m[1000]
    assert 1000 not in m
    row = prog.maps["calls"].df.iloc[0].to_dict()
    key = prog.maps["calls"].row_key(row)
    prog.maps["calls"].set_cell(key, "bytes", 123)
    assert prog.maps["calls"][key]["bytes"] == 123


def test_maps_listing(prog):
    df = prog.maps.df.set_index("map")
    assert df.loc["calls", "key"] == "struct {u32 pid, char[16] comm}"
    assert df.loc["arr", "entries"] == 4
    assert df.loc["sizes", "max_entries"] == 8
    with pytest.raises(KeyError, match=r"no map named 'size' \(did you mean 'sizes'\?\)"):
        prog.maps["size"]
    assert prog.maps._ipython_key_completions_() == list(prog.maps)
    assert repr(prog.maps) == f"<Maps {', '.join(prog.maps)}>"


def test_frame_from_arrays_needs_no_kernel():
    kdt = normalize_dtype(np.dtype([("pid", "<u4"), ("__pad_1", "S1", (4,)),
                                    ("comm", "S1", (8,))]))
    assert kdt.names == ("pid", "comm") and kdt["comm"] == np.dtype("S8")
    keys = np.zeros(2, kdt)
    keys["pid"], keys["comm"] = [1, 2], [b"a", b"bc"]
    values = np.array([[1, 2], [3, 4]], dtype=np.uint64)  # per-CPU: 2 CPUs
    df = frame(keys, values)
    assert df.to_dict("records") == [
        {"pid": 1, "comm": "a", "value[cpu0]": 1, "value[cpu1]": 2, "total": 3},
        {"pid": 2, "comm": "bc", "value[cpu0]": 3, "value[cpu1]": 4, "total": 7}]


def test_falls_back_to_per_key_reads_without_batch_ops(prog, monkeypatch):
    m = prog.maps["sizes"]
    expected = m.df.sort_values("key").reset_index(drop=True)

    def no_batch(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(sysbpf, "map_lookup_batch", no_batch)
    got = m.df.sort_values("key").reset_index(drop=True)
    assert got.equals(expected)
    assert m._batch_ok is False
    m._batch_ok = True
