"""Compile + attach per cell: ebpf_magic (BCC in a worker process) vs plain BCC in-process.

For each cell, in the same run and alternating, so machine noise hits both:

- (a) plain BCC: ``bcc.BPF(text=...)`` and ``attach_tracepoint`` in this process;
- (b) ebpf_magic: ``Program(source, attach=[...])`` until it is attached (compile and
  load in the warm worker, descriptors handed over, maps described, streams opened,
  attached here by fd).

Teardown (``cleanup()`` / ``stop()``) is not timed. The worker is started before
timing, as loading the extension does. Prints medians and the ratio (b)/(a):
below 1 means ebpf_magic is faster.

Run as root: ``.venv/bin/python bench/compile.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ebpf_magic.backend import prestart
from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.program import Program

TP = ("syscalls", "sys_enter_getppid")
CELLS = {
    "counter": r"""
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}""",
    "perf events": r"""
struct event_t { u64 ts; u32 pid; u32 tid; char comm[16]; };
BPF_PERF_OUTPUT(events);
int on_getppid(void *ctx) {
    struct event_t e = {};
    e.ts = bpf_ktime_get_ns();
    u64 id = bpf_get_current_pid_tgid();
    e.pid = id >> 32;
    e.tid = id;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}""",
    "histogram": r"""
BPF_HISTOGRAM(dist);
BPF_HASH(start, u32, u64);
int on_getppid(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    start.update(&tid, &ts);
    dist.increment(bpf_log2l(ts & 0xffff));
    return 0;
}""",
}


def plain_bcc(bcc, source: str) -> float:
    start = time.perf_counter()
    b = bcc.BPF(text=source)
    b.attach_tracepoint(tp=":".join(TP).encode(), fn_name=b"on_getppid")
    took = time.perf_counter() - start
    b.cleanup()
    return took


def ours(source: str) -> float:
    start = time.perf_counter()
    prog = Program(source, attach=["tracepoint:" + ":".join(TP)])
    took = time.perf_counter() - start
    prog.stop()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    headers.ensure()  # both compile against the same headers
    bcc = import_bcc()
    prestart()
    for source in CELLS.values():  # warm-up: headers in the page cache, worker imported
        plain_bcc(bcc, source)
        ours(source)
    print(f"{'cell':<14}{'a plain BCC s':>14}{'b ebpf_magic s':>16}{'b/a':>7}")
    ratios = []
    for name, source in CELLS.items():
        a, b = [], []
        for _ in range(args.rounds):
            a.append(plain_bcc(bcc, source))
            b.append(ours(source))
        ma, mb = statistics.median(a), statistics.median(b)
        ratios.append(mb / ma)
        print(f"{name:<14}{ma:>14.3f}{mb:>16.3f}{mb / ma:>7.2f}")
    print(f"{'geometric mean':<44}{statistics.geometric_mean(ratios):>7.2f}")


if __name__ == "__main__":
    main()
