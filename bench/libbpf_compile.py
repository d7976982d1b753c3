"""Compile time of a cell: BCC vs clang with vmlinux.h, parsed as text or precompiled.

The same small program (a tracepoint writing a 16-byte struct to a perf
buffer) is compiled and loaded, in the same run, by:

- (a) BCC (``--backend bcc``, its dialect, against the headers ebpf_magic gives it here);
- (b) clang and libbpf, vmlinux.h and libbpf's headers included as text;
- (c) clang and libbpf with the precompiled header the backend caches;
- (d) clang and libbpf with the part of vmlinux.h the cell needs (what the backend does).

Nothing is taken from the cache of compiled programs.

The first (cold) compile of (c) also generates vmlinux.h and the precompiled
header when they are not cached yet; it is reported apart. Prints the median of
``--runs`` compiles and the ratios to (a).

Run as root: ``.venv/bin/python bench/libbpf_compile.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ebpf_magic.backend import compile_program
from ebpf_magic.backend.libbpf import _compile
from ebpf_magic.internal import settings

BCC_SRC = r"""
struct data_t { u64 pid; u64 cookie; };
BPF_PERF_OUTPUT(my_map);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    struct data_t data = {bpf_get_current_pid_tgid(), 0x12345678};
    my_map.perf_submit(args, &data, sizeof(data));
    return 0;
}
"""
LIBBPF_SRC = r"""
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(int));
    __uint(value_size, sizeof(u32));
} my_map SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_write")
int bpf_prog1(void *ctx)
{
    struct S { u64 pid; u64 cookie; } data = {bpf_get_current_pid_tgid(), 0x12345678};
    bpf_perf_event_output(ctx, &my_map, BPF_F_CURRENT_CPU, &data, sizeof(data));
    return 0;
}
"""


def timed_load(source: str, backend: str) -> float:
    start = time.perf_counter()
    compile_program(source, cflags=[], usdt=[], backend=backend).close()
    return time.perf_counter() - start


def timed_clang(use_pch: bool, cut: bool = False) -> float:
    _compile.SUBSET_TRIES = 4 if cut else 0
    try:
        start = time.perf_counter()
        _compile.compile_cell(LIBBPF_SRC, [], use_pch=use_pch)
        return time.perf_counter() - start
    finally:
        _compile.SUBSET_TRIES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    settings.cache = False
    cold = timed_clang(True)
    timed_load(BCC_SRC, "bcc")  # starts BCC's worker
    rows = {
        "a bcc compile+load": [timed_load(BCC_SRC, "bcc") for _ in range(args.runs)],
        "b clang, headers as text": [timed_clang(False) for _ in range(args.runs)],
        "c clang, precompiled header": [timed_clang(True) for _ in range(args.runs)],
        "d clang, part of vmlinux.h": [timed_clang(True, cut=True) for _ in range(args.runs)],
        "c' clang+libbpf load (pch)": [timed_load(LIBBPF_SRC, "libbpf")
                                       for _ in range(args.runs)],
    }
    base = statistics.median(rows["a bcc compile+load"])
    print(f"first compile with an empty cache (vmlinux.h, pch if missing): {cold:.3f} s")
    print(f"{'':30} {'median s':>9} {'vs a':>7}")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"{name:30} {med:9.3f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
