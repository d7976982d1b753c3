"""What tracing costs the traced system: a workload's rate with and without each program.

A C loop calls getppid() for a fixed amount of its own CPU time (the workload). Its rate
is calls per second of that CPU time, which a busy machine does not change (the program
runs in the calling thread, so its cost is in that time; a descheduled loop is not).
The same loop runs alone, then with one program at a time attached to
``tracepoint:syscalls:sys_enter_getppid``, each in BCC's dialect and in libbpf's:

  count   a hash map counting calls per process (``counts.increment(pid)``)
  hist    a log2 histogram of a value per call (``dist.increment(bpf_log2l(...))``)
  perf    a 32-byte record per call to a perf buffer, read by an ebpf_magic stream
  ring    the same to a ring buffer (4 MiB)

and ``count`` once more with the kernel's run statistics off. What statistics themselves
cost every BPF program on the machine while they are on is also measured directly: the
kernel's own timing (``BPF_PROG_TEST_RUN``, a million runs) of a ``return 0`` program,
with statistics on and off, alternately.

For each it prints the workload's calls per CPU-second, that as a ratio of the workload
alone measured just before it, the nanoseconds each traced call took longer
(``1e9/rate - 1e9/alone``), the kernel's own count of nanoseconds per run of the
program (``NAME.overhead``, with statistics on), and for streams the CPU time the
ebpf_magic reader thread spent per event (on another CPU, not in the workload's).
Rounds alternate the configurations; each configuration's median ratio is reported.

Run as root: ``.venv/bin/python bench/overhead.py [--seconds 1] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from ebpf_magic import backend
from ebpf_magic.kernel import runstats, sysbpf
from ebpf_magic.program import Program

TRACEPOINT = "tracepoint:syscalls:sys_enter_getppid"

GENERATOR = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    double seconds = atof(argv[1]), cpu0 = now(CLOCK_PROCESS_CPUTIME_ID);
    unsigned long long calls = 0;
    for (;;) {
        for (int i = 0; i < 4096; i++) getppid();
        calls += 4096;
        double cpu = now(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        if (cpu >= seconds) { printf("%llu %.6f\n", calls, cpu); return 0; }
    }
}
"""

BCC = {
    "count": """
BPF_HASH(counts, u32, u64);
int probe(void *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    counts.increment(pid);
    return 0;
}""",
    "hist": """
BPF_HISTOGRAM(dist);
int probe(void *ctx) {
    dist.increment(bpf_log2l(bpf_ktime_get_ns() & 0xfffff));
    return 0;
}""",
    "perf": """
struct event_t { u64 ts; u32 pid; u32 tid; char comm[16]; };
BPF_PERF_OUTPUT(events);
int probe(void *ctx) {
    struct event_t e = {};
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}""",
}
BCC["ring"] = (BCC["perf"].replace("BPF_PERF_OUTPUT(events);", "BPF_RINGBUF_OUTPUT(events, 1024);")
               .replace("events.perf_submit(ctx, &e, sizeof(e));",
                        "events.ringbuf_output(&e, sizeof(e), 0);"))

_EVENT = """
struct event_t { u64 ts; u32 pid; u32 tid; char comm[16]; };

static __always_inline void fill(struct event_t *e)
{
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}
"""
LIBBPF = {
    "count": """
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, u32);
    __type(value, u64);
} counts SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe(void *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u64 one = 1, *n = bpf_map_lookup_elem(&counts, &pid);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&counts, &pid, &one, BPF_NOEXIST);
    return 0;
}""",
    "hist": """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 64);
    __type(key, u32);
    __type(value, u64);
} dist SEC(".maps");

static __always_inline u32 log2l(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) r += 1;
    return r;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe(void *ctx)
{
    u32 slot = log2l(bpf_ktime_get_ns() & 0xfffff);
    u64 *n = bpf_map_lookup_elem(&dist, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}""",
    "perf": _EVENT + """
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(int));
    __uint(value_size, sizeof(int));
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe(void *ctx)
{
    struct event_t e = {};
    fill(&e);
    bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &e, sizeof(e));
    return 0;
}""",
    "ring": _EVENT + """
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4 << 20);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe(void *ctx)
{
    struct event_t e = {};
    fill(&e);
    bpf_ringbuf_output(&events, &e, sizeof(e), 0);
    return 0;
}""",
}
SOURCES = {"bcc": BCC, "libbpf": LIBBPF}
KINDS = ["count", "hist", "perf", "ring"]


def stats_cost(rounds: int, repeat: int = 1_000_000) -> tuple[list[float], list[float]]:
    """ns per run of a ``return 0`` program as the kernel times ``repeat`` test runs, with
    statistics on and off, ``rounds`` times each, alternately."""
    fd = sysbpf.load_return_zero("bench_stats")
    on, off = [], []
    try:
        for _ in range(rounds):
            for enabled, out in ((True, on), (False, off)):
                if enabled:
                    runstats.enable()
                else:
                    runstats.disable()
                out.append(sysbpf.test_run_duration(fd, repeat=repeat))
    finally:
        os.close(fd)
        runstats.enable()
    return on, off


def build_generator(tmp: Path) -> Path:
    c, exe = tmp / "getppid_loop.c", tmp / "getppid_loop"
    c.write_text(GENERATOR)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(c)], check=True)
    return exe


def run_alone(exe: Path, seconds: float) -> float:
    """The workload's calls per second of its CPU time."""
    calls, cpu = subprocess.run([str(exe), str(seconds)], capture_output=True, text=True,
                                check=True).stdout.split()
    return int(calls) / float(cpu)


def run_traced(exe: Path, seconds: float, which: str, kind: str) -> tuple[float, float, float]:
    """The workload's calls per CPU-second with the program attached, the kernel's ns per
    run of the program, and the stream reader's CPU ns per event (NaN without a stream)."""
    attach = [] if which == "libbpf" else [f"{TRACEPOINT}=probe"]
    with Program(SOURCES[which][kind], name=f"{which}-{kind}", backend=which,
                 attach=attach) as prog:
        reader0 = prog.events.reader_cpu_s
        rate = run_alone(exe, seconds)
        cost = prog.overhead
        reader_s = prog.events.reader_cpu_s - reader0
        received = sum(s.stats["received"] for s in prog.events.values())
    ns = math.nan if cost.unmeasured else float(cost["ns_per_run"].iloc[0])
    return rate, ns, reader_s * 1e9 / received if received else math.nan


def configurations() -> list[tuple[str, str, bool]]:
    """(backend, program, statistics on) for each backend that runs here."""
    out = []
    for which in SOURCES:
        ok, why = backend.get(which).available()
        if not ok:
            print(f"{which}: skipped ({why})")
            continue
        out += [(which, kind, True) for kind in KINDS] + [(which, "count", False)]
    return out


Config = tuple[str, str, bool]  # backend, program, statistics on


def measure(exe: Path, seconds: float, rounds: int) -> dict[Config, list[tuple]]:
    """Every round's (calls/s traced, calls/s alone just before, kernel ns/run, reader
    ns/event) of each configuration."""
    runs: dict[Config, list[tuple]] = {}
    configs = configurations()
    for r in range(rounds):
        for config in configs:
            which, kind, stats_on = config
            alone = run_alone(exe, seconds)
            if stats_on:
                runstats.enable()
            else:
                runstats.disable()
            try:
                rate, ns, reader = run_traced(exe, seconds, which, kind)
            finally:
                runstats.enable()
            runs.setdefault(config, []).append((rate, alone, ns, reader))
        print(f"round {r + 1}/{rounds} done", flush=True)
    return runs


def _median_round(rounds: list[tuple]) -> tuple:
    """The round whose ratio (traced / alone) is the median one."""
    ordered = sorted(rounds, key=lambda r: r[0] / r[1])
    return ordered[len(ordered) // 2]


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def report(runs: dict[Config, list[tuple]]) -> None:
    alone_all = [r[1] for rounds in runs.values() for r in rounds]
    print(f"\nworkload alone: median {statistics.median(alone_all):,.0f} calls per CPU-second "
          f"(min {min(alone_all):,.0f}, max {max(alone_all):,.0f}, {len(alone_all)} runs)")
    print(f"{'backend':8} {'program':16} {'calls/s':>11} {'alone/s':>11} {'ratio':>6} "
          f"{'ratios':>16} {'ns added/call':>14} {'kernel ns/run':>14} {'reader ns/ev':>13}")
    added: dict[Config, float] = {}
    for config, rounds in runs.items():
        which, kind, stats_on = config
        rate, alone, ns, reader = _median_round(rounds)
        added[config] = 1e9 / rate - 1e9 / alone
        ratios = sorted(r[0] / r[1] for r in rounds)
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        label = kind if stats_on else f"{kind}, stats off"
        print(f"{which:8} {label:16} {rate:11,.0f} {alone:11,.0f} {rate / alone:6.2f} "
              f"{spread:>16} {added[config]:14,.0f} {_fmt(ns):>14} {_fmt(reader):>13}")
    for which in dict.fromkeys(w for w, _, _ in runs):
        on, off = added.get((which, "count", True)), added.get((which, "count", False))
        if on is not None and off is not None:
            print(f"{which}: run statistics add {on - off:,.0f} ns a call (count with "
                  "statistics on minus off, medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="CPU seconds of the workload per run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    status = runstats.enable()
    print(f"run statistics: {status.detail}")
    others = [p for p in runstats.holders() if p != os.getpid()]
    if others or runstats.sysctl_enabled():
        print(f"note: statistics are also enabled elsewhere ({others or 'sysctl'}), so 'stats "
              "off' is not off")
    on, off = stats_cost(args.rounds)
    print(f"run statistics: a return-0 program takes {statistics.median(on):.1f} ns a run with "
          f"them on ({min(on):.1f}-{max(on):.1f}), {statistics.median(off):.1f} ns off "
          f"({min(off):.1f}-{max(off):.1f}): {statistics.median(on) - statistics.median(off):.1f}"
          " ns a run (the kernel's own timing of a million test runs, medians)")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_generator(Path(tmp))
        report(measure(exe, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
