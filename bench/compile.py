"""Compile + attach per cell, both backends against plain BCC with the same headers.

For each cell, in the same run and alternating, so machine noise hits all alike:

- (a) plain BCC: ``bcc.BPF(text=...)`` and ``attach_tracepoint`` in this process, against
  the headers ebpf_magic gives BCC here (with kernel BTF and no kernel headers: the tree
  of the kernel's own types, whole);
- (w) ebpf_magic as it was: the whole ``vmlinux.h`` (BCC cells; libbpf cells also without
  the precompiled header where they include vmlinux.h themselves, and the record type
  from the object's DWARF), nothing kept;
- (b) ebpf_magic now, compiled afresh (the cache off): against the part of ``vmlinux.h``
  the cell needs;
- (c) ebpf_magic re-running the unchanged cell: the program from the cache.

(w), (b) and (c) are ``Program(source, attach=[...])`` until attached (compile and load,
descriptors handed over, maps described, streams opened, attached by fd). A libbpf cell is
compared with plain BCC compiling the same program in BCC's dialect. Teardown is not timed;
the BCC worker is started before timing, as loading the extension does. Prints medians and
the ratios to (a): below 1 means ebpf_magic is faster.

Run as root: ``.venv/bin/python bench/compile.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ebpf_magic.backend import libbpf, prestart
from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc import program as bcc_program
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.backend.libbpf import _compile
from ebpf_magic.internal import settings
from ebpf_magic.program import Program

TP = ("syscalls", "sys_enter_getppid")
TASK_BCC = r"""
#include <linux/sched.h>
struct event { u32 pid; u32 ppid; char comm[TASK_COMM_LEN]; };
BPF_HASH(counts, u32, u64);
BPF_RINGBUF_OUTPUT(events, 16);
int on_getppid(void *ctx) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) return 0;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->ppid = task->real_parent->tgid;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    counts.increment(e->pid);
    events.ringbuf_submit(e, 0);
    return 0;
}"""
CELLS = {
    "bcc counter": (r"""
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}""", None),
    "bcc perf events": (r"""
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
}""", None),
    "bcc histogram": (r"""
BPF_HISTOGRAM(dist);
BPF_HASH(start, u32, u64);
int on_getppid(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    start.update(&tid, &ts);
    dist.increment(bpf_log2l(ts & 0xffff));
    return 0;
}""", None),
    "bcc task + ring": (TASK_BCC, None),
    # the program of "bcc task + ring" as libbpf-style C, as the issue has it
    "libbpf task + ring": (TASK_BCC, r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct event { u32 pid; u32 ppid; char comm[16]; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 10240);
         __type(key, u32); __type(value, u64); } counts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); } events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return 0;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->ppid = BPF_CORE_READ(task, real_parent, tgid);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u64 one = 1, *n = bpf_map_lookup_elem(&counts, &e->pid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&counts, &e->pid, &one, BPF_ANY);
    bpf_ringbuf_submit(e, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""),
}


def plain_bcc(bcc, source: str) -> float:
    start = time.perf_counter()
    b = bcc.BPF(text=source)
    b.attach_tracepoint(tp=":".join(TP).encode(), fn_name=b"on_getppid")
    took = time.perf_counter() - start
    b.cleanup()
    return took


_PREPARE = _compile.prepare


def _as_it_was(source: str, records: bool = True) -> _compile.Adjusted:
    """The libbpf backend's adjustments before: no record markers (the record type from
    DWARF), the precompiled header only for cells without includes."""
    adjusted = _PREPARE(source, records=False)
    adjusted.precompiled = adjusted.include_defaults
    return adjusted


def ours(source: str, how: str) -> float:
    """``Program()`` until attached: ``how`` is "was", "fresh" or "re-run"."""
    was = how == "was"
    settings.cache = how == "re-run"
    bcc_program.CUT_TYPES = not was
    _compile.SUBSET_TRIES = 0 if was else 4
    _compile.prepare = _as_it_was if was else _PREPARE
    try:
        start = time.perf_counter()
        prog = Program(source, attach=["tracepoint:" + ":".join(TP)]
                       if "SEC(" not in source else [])
        took = time.perf_counter() - start
        prog.stop()
    finally:
        settings.cache, bcc_program.CUT_TYPES, _compile.SUBSET_TRIES = True, True, 4
        _compile.prepare = _PREPARE
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    found = headers.ensure()  # both compile against the same headers
    print(f"headers: {found.source} ({found.path})")
    os.environ["BCC_KERNEL_SOURCE"] = str(found.path)
    bcc = import_bcc()
    prestart()
    cells = {n: c for n, c in CELLS.items() if c[1] is None or libbpf.available()[0]}
    for bcc_text, text in cells.values():  # warm-up: page cache, worker, cache entries
        plain_bcc(bcc, bcc_text)
        for how in ("was", "fresh", "re-run"):
            ours(text or bcc_text, how)
    hows = ("was", "fresh", "re-run")
    print(f"{'cell':<20}{'a plain BCC':>12}" + "".join(f"{h:>9}" for h in hows)
          + "".join(f"{h + '/a':>10}" for h in hows))
    ratios: dict[str, list[float]] = {h: [] for h in hows}
    for name, (bcc_text, text) in cells.items():
        times: dict[str, list[float]] = {h: [] for h in ("a", *hows)}
        for _ in range(args.rounds):
            times["a"].append(plain_bcc(bcc, bcc_text))
            for how in hows:
                times[how].append(ours(text or bcc_text, how))
        med = {k: statistics.median(v) for k, v in times.items()}
        for how in hows:
            ratios[how].append(med[how] / med["a"])
        print(f"{name:<20}{med['a']:>12.3f}" + "".join(f"{med[h]:>9.3f}" for h in hows)
              + "".join(f"{med[h] / med['a']:>10.2f}" for h in hows))
    print(f"{'geometric mean':<20}{'':>12}{'':>27}" + "".join(
        f"{statistics.geometric_mean(ratios[h]):>10.2f}" for h in hows))


if __name__ == "__main__":
    main()
