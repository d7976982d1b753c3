"""Event streaming benchmark: ebpf_magic streams against BCC's per-event Python callback.

A C load generator calls getppid() at full speed for a fixed time; a tracepoint
program submits a 32-byte struct (ts, pid, tid, comm) per call. For a perf
buffer and a ring buffer, side by side in one run:

  (a) the generator alone
  (b) the program attached, nothing consuming: BCC's program with its buffers
      installed and never read (they fill, then every submission fails early)
  (b0) for reference, the program attached with no perf buffer installed at
      all (every perf submission fails at once; a ring buffer always exists)
  (c) BCC's documented path: one Python callback per event, ``table.event()``
      into a list of dicts, then a DataFrame
  (d) an ebpf_magic stream with default options (only ``max_rows`` raised so the
      frame can hold the whole burst), ending in ``stream.df``
  (d1) the same with 1 MiB buffers: perf ``page_cnt=256`` per CPU (the default
      before it was budgeted), ring ``BPF_RINGBUF_OUTPUT(events, 256)``

For (d) it also prints what the defaults cost and deliver: ``lost`` (goal 0 for
both buffer kinds at the generator's full rate), ``reader_ns/ev`` (CPU time of
the reader thread per event received), ``sustained/s`` (events received per
second of the burst: the generator's rate when nothing was lost),
``reader_max/s`` (1e9 / reader_ns/ev: the rate one reader thread could take if
it had a CPU to itself) and ``buf_MiB`` (kernel buffer memory of the stream).

events/s is end to end: events in the final DataFrame divided by the time from
starting the generator to having that DataFrame (draining and building the
DataFrame included); df_s is the part spent building the DataFrame. No
consumer can capture more events than the generator makes calls, so the best
(d)/(c) any consumer could reach in a run is (calls of (d) per second of the
generator) / (events/s of (c)); it is printed as the ceiling.

Run as root: ``.venv/bin/python bench/stream.py [--seconds 2]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.program import Program

GENERATOR = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long long calls = 0;
    for (;;) {
        for (int i = 0; i < 4096; i++) getppid();
        calls += 4096;
        clock_gettime(CLOCK_MONOTONIC, &t);
        double dt = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
        if (dt >= seconds) { printf("%llu %.6f\n", calls, dt); return 0; }
    }
}
"""

STRUCT = """
struct event_t { u64 ts; u32 pid; u32 tid; char comm[16]; };
"""
SUBMIT = {
    "perf": ("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e));"),
    "ringbuf": ("BPF_RINGBUF_OUTPUT(events, 1024);", "events.ringbuf_output(&e, sizeof(e), 0);"),
}


def source(kind: str) -> str:
    decl, submit = SUBMIT[kind]
    return STRUCT + decl + """
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct event_t e;
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    if (e.comm[0] != 'l' || e.comm[4] != 'g') return 0;  // only the load generator
    """ + submit + """
    return 0;
}
"""


def build_generator(tmp: Path) -> Path:
    c, exe = tmp / "loadgen.c", tmp / "loadgen"
    c.write_text(GENERATOR)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(c)], check=True)
    return exe


def start(exe: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([str(exe), str(seconds)], stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, float]:
    out, _ = proc.communicate()
    calls, dt = out.split()
    return int(calls), float(dt)


def run_alone(exe: Path, seconds: float) -> dict:
    calls, dt = finish(start(exe, seconds))
    return {"calls/s": calls / dt, "events/s": 0.0}


def run_unconsumed(exe: Path, seconds: float, kind: str, install: bool = True) -> dict:
    bcc = import_bcc()
    b = bcc.BPF(text=source(kind).encode())  # TRACEPOINT_PROBE attaches itself
    try:
        if install and kind == "perf":  # installed, never polled: the rings fill and stay full
            b["events"].open_perf_buffer(lambda cpu, data, size: None, page_cnt=256)
        calls, dt = finish(start(exe, seconds))
    finally:
        b.cleanup()
    return {"calls/s": calls / dt, "events/s": 0.0}


def run_bcc(exe: Path, seconds: float, kind: str) -> dict:
    bcc = import_bcc()
    b = bcc.BPF(text=source(kind).encode())  # TRACEPOINT_PROBE attaches itself
    table = b["events"]
    rows: list[dict] = []
    lost = [0]

    def callback(*args):
        e = table.event(args[1])
        rows.append({"ts": e.ts, "pid": e.pid, "tid": e.tid, "comm": e.comm.decode()})
        return 0

    def lost_cb(n):
        lost[0] += n

    if kind == "perf":
        table.open_perf_buffer(lambda cpu, data, size: callback(cpu, data), page_cnt=256,
                               lost_cb=lost_cb)
        poll = lambda: b.perf_buffer_poll(timeout=10)  # noqa: E731
    else:
        table.open_ring_buffer(lambda ctx, data, size: callback(ctx, data))
        poll = lambda: b.ring_buffer_poll(timeout=10)  # noqa: E731
    t0 = time.monotonic()
    proc = start(exe, seconds)
    while proc.poll() is None:
        poll()
    calls, dt = finish(proc)
    for _ in range(5):  # take what is left
        poll()
    t1 = time.monotonic()
    df = pd.DataFrame(rows)
    elapsed = time.monotonic() - t0
    b.cleanup()
    # BCC's PerfEventArray.__del__ deletes its keys again from the map cleanup() closed
    getattr(table, "_open_key_fds", {}).clear()
    captured = len(df)
    return {"calls/s": calls / dt, "events/s": captured / elapsed, "lost": lost[0],
            "unaccounted": calls - captured - lost[0], "captured": captured,
            "df_s": elapsed - (t1 - t0)}


def run_stream(exe: Path, seconds: float, kind: str, small: bool = False) -> dict:
    text, options = source(kind), {"max_rows": 50_000_000}
    if small:  # 1 MiB: perf per CPU (the default before the budget), ring in all
        text = text.replace("BPF_RINGBUF_OUTPUT(events, 1024)", "BPF_RINGBUF_OUTPUT(events, 256)")
        options["page_cnt"] = 256
    with Program(text, name="bench-d", stream_options=options) as prog:
        stream = prog.events["events"]
        cpu0 = prog.events.reader_cpu_s
        t0 = time.monotonic()
        calls, dt = finish(start(exe, seconds))
        deadline = time.monotonic() + 5
        while (stream.received + stream.lost_kernel < calls
               and time.monotonic() < deadline):
            time.sleep(0.005)
        t1 = time.monotonic()
        reader_s = prog.events.reader_cpu_s - cpu0
        df = stream.df
        elapsed = time.monotonic() - t0
        stats = stream.stats
        buffer_bytes = stream.buffer_bytes
    captured = len(df)
    ns_per_event = reader_s * 1e9 / max(stats["received"], 1)
    return {"calls/s": calls / dt, "events/s": captured / elapsed,
            "lost": stats["lost_kernel"], "unaccounted": calls - captured - stats["lost_kernel"],
            "captured": captured, "df_s": elapsed - (t1 - t0),
            "reader_ns/ev": ns_per_event, "sustained/s": stats["received"] / dt,
            "reader_max/s": 1e9 / max(ns_per_event, 1e-9), "buf_MiB": buffer_bytes / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    s = args.seconds
    headers.ensure()  # BCC's own runs below use the same kernel headers as ebpf_magic
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_generator(Path(tmp))
        results = {}
        alone = run_alone(exe, s)
        for kind in ("perf", "ringbuf"):
            results[(kind, "a alone")] = alone
            results[(kind, "b attached")] = run_unconsumed(exe, s, kind)
            if kind == "perf":
                results[(kind, "b0 no buffer")] = run_unconsumed(exe, s, kind, install=False)
            results[(kind, "c bcc callback")] = run_bcc(exe, s, kind)
            results[(kind, "d ebpf_magic")] = run_stream(exe, s, kind)
            results[(kind, "d1 1 MiB buffer")] = run_stream(exe, s, kind, small=True)
    table = pd.DataFrame(results).T
    table.index.names = ["buffer", "case"]
    table = table.reindex(columns=["calls/s", "events/s", "captured", "lost", "unaccounted",
                                   "df_s"])
    formats = {c: "{:,.0f}".format for c in table.columns}
    formats["df_s"] = "{:.2f}".format
    print(table.to_string(formatters=formats, na_rep="-"))
    print("\n(d) with default options, (d1) with 1 MiB buffers:")
    for kind, case in [(k, c) for k in ("perf", "ringbuf") for c in ("d", "d1")]:
        d = results[(kind, "d ebpf_magic" if case == "d" else "d1 1 MiB buffer")]
        print(f"  {kind:8}{case:3} lost {d['lost']:,}, reader {d['reader_ns/ev']:.0f} ns/event, "
              f"sustained {d['sustained/s']:,.0f} events/s, reader max "
              f"{d['reader_max/s']:,.0f} events/s, buffers {d['buf_MiB']:.0f} MiB")
    ok = True
    for kind in ("perf", "ringbuf"):
        b, c, d = (results[(kind, k)] for k in ("b attached", "c bcc callback", "d ebpf_magic"))
        dc = d["events/s"] / max(c["events/s"], 1)
        db = d["calls/s"] / b["calls/s"]
        ceiling = d["calls/s"] / max(c["events/s"], 1)
        checks = {
            ">= 1M events/s, zero unaccounted loss": d["events/s"] >= 1e6 and d["unaccounted"] == 0,
            "default options lose nothing at full rate": d["lost"] == 0,
            "(d)/(c) >= 5": dc >= 5,
            "generator under (d) >= 80% of (b)": db >= 0.8,
        }
        print(f"\n{kind}: (d)/(c) events/s = {dc:.1f}x (ceiling {ceiling:.1f}x), "
              f"(d)/(b) generator calls/s = {db:.2f}")
        if (kind, "b0 no buffer") in results:
            b0 = results[(kind, "b0 no buffer")]["calls/s"]
            print(f"  (d)/(b0) generator calls/s = {d['calls/s'] / b0:.2f} (reference)")
        for name, met in checks.items():
            print(f"  {'MET ' if met else 'MISS'} {name}")
            ok &= met
    return 0 if ok else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root (BPF)")
    sys.exit(main())
