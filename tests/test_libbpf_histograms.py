"""Histograms from libbpf programs: plain integer-keyed maps read with ``.hist(kind=...)``."""

from __future__ import annotations

import os

import pytest

from ebpf_magic.backend import libbpf
from ebpf_magic.program import Program

_OK, _WHY = libbpf.available()
pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not _OK, reason=f"libbpf backend unavailable: {_WHY}")]

# write sizes of this process: log2 buckets in an array, buckets of 10 bytes in a hash
SOURCE = r"""
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 65);
    __type(key, u32);
    __type(value, u64);
} pow2 SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, u64);
    __type(value, u64);
} tens SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_write")
int on_write(struct trace_event_raw_sys_enter *ctx)
{
    u64 size = ctx->args[2], v = size, one = 1, *n;
    u32 slot = 0;
    if ((bpf_get_current_pid_tgid() >> 32) != PID || ctx->args[0] != FD)
        return 0;
    for (int i = 0; i < 64 && v; i++) {
        v >>= 1;
        slot++;
    }
    n = bpf_map_lookup_elem(&pow2, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    u64 ten = size / 10;
    n = bpf_map_lookup_elem(&tens, &ten);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&tens, &ten, &one, BPF_NOEXIST);
    return 0;
}
"""
# bytes per write -> how many writes of that size
WRITES = {0: 2, 1: 3, 2: 4, 3: 5, 5: 6, 100: 7, 127: 1}


@pytest.fixture(scope="module")
def written():
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        with Program(SOURCE, defines={"PID": os.getpid(), "FD": fd}) as prog:
            assert prog.backend == "libbpf"
            for size, times in WRITES.items():
                for _ in range(times):
                    os.write(fd, b"x" * size)
            yield prog.maps["pow2"].hist(kind="log2"), prog.maps["tens"].hist(kind="linear",
                                                                              step=10)
    finally:
        os.close(fd)


def test_log2_buckets_of_an_array_count_exactly(written):
    df = written[0].df
    rows = list(zip(df["low"], df["high"], df["count"], strict=True))
    # bpf_log2l's buckets: [0], [1], [2, 4), [4, 8), then empty ones up to [64, 128)
    assert rows == [(0, 1, 2), (1, 2, 3), (2, 4, 9), (4, 8, 6), (8, 16, 0), (16, 32, 0),
                    (32, 64, 0), (64, 128, 8)]


def test_linear_buckets_of_a_hash_count_exactly(written):
    df = written[1].df
    counted = {int(lo): int(c) for lo, c in zip(df["low"], df["count"], strict=True) if c}
    assert counted == {0: 20, 100: 7, 120: 1}
    assert df["high"].iloc[-1] == 130 and df["count"].sum() == sum(WRITES.values())
