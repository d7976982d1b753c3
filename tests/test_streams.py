"""Event streams on a real kernel: exact rows, exact loss accounting, caps, layouts, cleanup."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pandas as pd
import pytest

from ebpf_magic.program import Program

from conftest import own_bpf_fds

pytestmark = pytest.mark.kernel

KINDS = {
    "perf": ("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e));"),
    "ringbuf": ("BPF_RINGBUF_OUTPUT(events, 16);", "events.ringbuf_output(&e, sizeof(e), 0);"),
}
MINE = "if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;"


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def my_comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


def write_program(kind: str) -> str:
    decl, submit = KINDS[kind]
    return f"""
struct write_t {{ u32 pid; u32 fd; u64 count; char comm[16]; }};
{decl}
TRACEPOINT_PROBE(syscalls, sys_enter_write) {{
    {MINE}
    if (args->fd != FD) return 0;
    struct write_t e = {{}};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.fd = args->fd;
    e.count = args->count;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    {submit}
    return 0;
}}
"""


def test_writes_appear_as_exactly_one_row_each(kind, no_leaks):
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        with Program(write_program(kind), defines={"PID": os.getpid(), "FD": fd}) as prog:
            stream = prog.events["events"]
            sizes = [i * 7 + 1 for i in range(200)]
            for n in sizes:
                os.write(fd, b"x" * n)
            assert wait_for(lambda: stream.received >= len(sizes))
            time.sleep(0.05)
            df = stream.df
            assert list(df["count"]) == sizes
            assert (df["pid"] == os.getpid()).all() and (df["fd"] == fd).all()
            assert (df["comm"] == my_comm()).all()
            assert df["count"].dtype == np.uint64 and df["fd"].dtype == np.uint32
            assert ("cpu" in df) == (kind == "perf")
            assert stream.stats["received"] == len(sizes) and stream.stats["lost_kernel"] == 0
    finally:
        os.close(fd)


def burst_program(kind: str) -> str:
    decl = {"perf": "BPF_PERF_OUTPUT(events);",
            "ringbuf": "BPF_RINGBUF_OUTPUT(events, 1);"}[kind]
    submit = KINDS[kind][1]
    return f"""
struct ev_t {{ u64 seq; u64 pad[2]; }};
{decl}
BPF_ARRAY(seqs, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    {MINE}
    int k = 0;
    u64 *s = seqs.lookup(&k);
    if (!s) return 0;
    struct ev_t e = {{}};
    e.seq = __sync_fetch_and_add(s, 1);
    {submit}
    return 0;
}}
"""


def test_overflow_is_counted_exactly(kind, no_leaks):
    # tiny buffers and a slow reader: most of a burst cannot fit
    opts = {"page_cnt": 1, "poll_ms": 300, "batch_ms": 300, "wakeup_bytes": 1 << 20}
    with Program(burst_program(kind), defines={"PID": os.getpid()},
                 stream_options=opts) as prog:
        stream = prog.events["events"]
        submitted = 20_000
        for _ in range(submitted):
            os.getppid()
        # exact without further submissions: losses after a CPU's last successful
        # write count too (no PERF_RECORD_LOST ever reports those)
        assert wait_for(lambda: stream.received + stream.lost_kernel == submitted)
        time.sleep(0.05)
        stats = stream.stats
        assert stats["lost_kernel"] > 0
        assert stats["received"] + stats["lost_kernel"] == submitted
        assert sum(stats["lost_per_cpu"].values()) == stats["lost_kernel"]
        seq = stream.df["seq"].to_numpy()
        assert len(seq) == stats["received"] and len(np.unique(seq)) == len(seq)
        assert int(prog.maps["seqs"][0]) == submitted
        assert "__ebpf_magic_lost_events" not in prog.maps


def test_max_rows_keeps_newest_and_counts_drops(no_leaks):
    with Program(burst_program("ringbuf").replace("events, 1)", "events, 64)"),
                 defines={"PID": os.getpid()}, stream_options={"max_rows": 100}) as prog:
        stream = prog.events["events"]
        for _ in range(250):
            os.getppid()
        assert wait_for(lambda: stream.received == 250)
        assert list(stream.df["seq"]) == list(range(150, 250))
        stats = stream.stats
        assert (stats["held"], stats["dropped_cap"], stats["lost_kernel"]) == (100, 150, 0)
        stream.max_rows = 10
        assert list(stream.df["seq"]) == list(range(240, 250))
        assert stream.stats["dropped_cap"] == 240


def test_spill_to_parquet_keeps_every_event(tmp_path, no_leaks):
    with Program(burst_program("ringbuf").replace("events, 1)", "events, 64)"),
                 defines={"PID": os.getpid()},
                 stream_options={"max_rows": 100, "spill": str(tmp_path)}) as prog:
        stream = prog.events["events"]
        for _ in range(1000):
            os.getppid()
        assert wait_for(lambda: stream.received == 1000)
        held = list(stream.df["seq"])
        stats = stream.stats
    assert stats["dropped_cap"] == 0 and stats["spilled"] + stats["held"] == 1000
    spilled = list(pd.read_parquet(tmp_path / "events.parquet")["seq"])
    assert spilled + held == list(range(1000))


NESTED = """
struct inner { u32 a; u16 b[3]; };
struct ev { u64 seq; struct inner in; u32 vals[4]; char comm[16]; };
BPF_PERF_OUTPUT(perf);
BPF_RINGBUF_OUTPUT(ring, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    @MINE@
    struct ev e = {};
    e.seq = 5;
    e.in.a = 0xdeadbeef; e.in.b[0] = 1; e.in.b[2] = 65535;
    e.vals[0] = 10; e.vals[3] = 40;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    perf.perf_submit(args, &e, sizeof(e));
    ring.ringbuf_output(&e, sizeof(e), 0);
    struct ev *r = ring.ringbuf_reserve(sizeof(struct ev));
    if (r) { __builtin_memcpy(r, &e, sizeof(e)); r->seq = 6; ring.ringbuf_submit(r, 0); }
    return 0;
}
""".replace("@MINE@", MINE)


def test_nested_structs_and_arrays_decode(no_leaks):
    with Program(NESTED, defines={"PID": os.getpid()}) as prog:
        os.getppid()
        assert wait_for(lambda: prog.events["perf"].received == 1
                        and prog.events["ring"].received == 2)
        for name, seqs in (("perf", [5]), ("ring", [5, 6])):
            df = prog.events[name].df
            assert list(df["seq"]) == seqs
            row = df.iloc[0]
            assert row["in.a"] == 0xDEADBEEF and df["in.a"].dtype == np.uint32
            assert [row[f"in.b[{i}]"] for i in range(3)] == [1, 0, 65535]
            assert [row[f"vals[{i}]"] for i in range(4)] == [10, 0, 0, 40]
            assert row["comm"] == my_comm()
        assert "__ebpf_magic_type_ev" not in prog.maps


TYPEDEFS = """
typedef struct { u32 a; u32 b; } pair_t;
typedef struct { u64 seq; pair_t p; char comm[16]; } ev_t;
BPF_PERF_OUTPUT(perf);
BPF_RINGBUF_OUTPUT(ring, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    @MINE@
    ev_t e = {};
    e.seq = 7; e.p.a = 1; e.p.b = 2;
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    perf.perf_submit(args, &e, sizeof(e));
    ev_t *r = ring.ringbuf_reserve(sizeof(*r));
    if (r) { __builtin_memcpy(r, &e, sizeof(e)); r->seq = 8; ring.ringbuf_submit(r, 0); }
    return 0;
}
""".replace("@MINE@", MINE)


def test_typedef_structs_decode_without_a_dtype(no_leaks):
    with Program(TYPEDEFS, defines={"PID": os.getpid()}) as prog:
        os.getppid()
        assert wait_for(lambda: prog.events["perf"].received == 1
                        and prog.events["ring"].received == 1)
        for name, seq in (("perf", 7), ("ring", 8)):
            rows = prog.events[name].df.drop(columns="cpu", errors="ignore")
            assert rows.to_dict("records") == [{"seq": seq, "p.a": 1, "p.b": 2,
                                                "comm": my_comm()}]
        assert not any(m.startswith("__ebpf_magic") for m in prog.maps)


def test_stop_releases_thread_buffers_and_fds(no_leaks):
    fds_before = sorted(own_bpf_fds())
    prog = Program(NESTED, defines={"PID": os.getpid()})
    assert any(t.name.startswith("ebpf_magic-streams") for t in threading.enumerate())
    assert len(own_bpf_fds()) > len(fds_before)
    streams = prog.events
    prog.stop()
    assert not any(t.name.startswith("ebpf_magic-streams") for t in threading.enumerate())
    assert sorted(own_bpf_fds()) == fds_before
    with open("/proc/self/maps") as f:
        mappings = f.read()
    assert "anon_inode:bpf-map" not in mappings and "perf_event" not in mappings
    streams.close()  # idempotent
    assert streams["perf"].closed and streams["perf"].df.empty


def test_stream_survives_a_program_that_submits_nothing(no_leaks):
    src = NESTED.replace("!= PID", "!= 0 || PID == PID")  # never true for any process
    with Program(src, defines={"PID": os.getpid()}, stream_options={"poll_ms": 10}) as prog:
        time.sleep(0.2)
        for name in ("perf", "ring"):
            s = prog.events[name]
            assert s.df.empty and "in.b[2]" in s.df.columns
            assert s.stats["received"] == 0 and s.stats["lost_kernel"] == 0
        assert prog.events.received == 0
        with pytest.raises(KeyError, match=r"no event stream named 'rings' \(did you mean "
                                           r"'ring'\?\); event streams: perf, ring"):
            prog.events["rings"]
        assert repr(prog.events) == "<Streams perf, ring>"


def test_controls_unknown_layouts_time_and_parquet(tmp_path, no_leaks):
    src = f"""
BPF_PERF_OUTPUT(raw);
struct t_ev {{ u64 ts; u64 boot; }};
BPF_RINGBUF_OUTPUT(timed, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    {MINE}
    u64 v = 0x1122334455667788;
    raw.perf_submit(args, &v, sizeof(v));
    struct t_ev e = {{bpf_ktime_get_ns(), bpf_ktime_get_boot_ns()}};
    timed.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}}
"""
    got = []
    with Program(src, defines={"PID": os.getpid()},
                 stream_options={"time": {"ts": "monotonic"}}) as prog:
        raw, timed = prog.events["raw"], prog.events["timed"]
        timed.on_event(got.append)
        os.getppid()
        assert wait_for(lambda: raw.received == 1 and timed.received == 1)
        # a scalar submission has no struct layout: raw bytes until a dtype is given
        assert raw.df["data"][0][:8] == (0x1122334455667788).to_bytes(8, "little")
        raw.set_dtype(np.uint64)
        assert raw.df["value"].tolist() == [0x1122334455667788]
        now = pd.Timestamp.now("UTC").tz_localize(None)
        assert abs(timed.df["ts"][0] - now) < pd.Timedelta(seconds=5)
        timed.set_time("boot", "boottime")
        assert abs(timed.df["boot"][0] - now) < pd.Timedelta(seconds=5)
        assert len(got) == 1 and set(got[0]) == {"ts", "boot"}
        timed.pause()
        os.getppid()
        assert wait_for(lambda: timed.received == 2)
        assert len(timed.df) == 1 and timed.stats["discarded_paused"] == 1
        timed.resume()
        os.getppid()
        assert wait_for(lambda: timed.received == 3)
        assert len(timed.df) == 2
        path = timed.to_parquet(tmp_path / "t.parquet")
        assert len(pd.read_parquet(path)) == 2
        timed.clear()
        assert timed.df.empty and timed.stats["received"] == 3


def test_live_view_updates_in_background_and_stops_with_the_program(no_leaks):
    with Program(burst_program("ringbuf").replace("events, 1)", "events, 64)"),
                 defines={"PID": os.getpid()}) as prog:
        stream = prog.events["events"]
        view = stream.live(rows=5, interval=0.05)
        assert "0 received" in view.value
        for _ in range(30):
            os.getppid()
        assert wait_for(lambda: "30 received" in view.value)
        assert view.value.count("<tr") == 6  # header and the 5 newest events
    assert wait_for(lambda: not any(t.name == "ebpf_magic-live-events"
                                    for t in threading.enumerate()))
    assert "stopped" in view.value
