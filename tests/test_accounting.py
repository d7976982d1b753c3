"""Exact accounting on a real kernel: every event submitted is received or counted as lost.

The workload is a child process making exactly N getppid() calls; the program
streams one event per call of the pid held in its ``target`` map, into buffers
small enough to overflow. Stopping (also under load, also interrupted by
SIGINT) must leave nothing of the program in the kernel.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ebpf_magic.data.streams import READ_BYTES, StreamOptionError, StreamWarning, perf_pages
from ebpf_magic.errors import AttachError
from ebpf_magic.kernel import perfbuf, ringbuf, sysbpf
from ebpf_magic.kernel.perfbuf import PAGE_SIZE
from ebpf_magic.program import Program

from conftest import loaded_prog_ids, own_bpf_fds, uprobe_events

pytestmark = pytest.mark.kernel

DECL = {"perf": ("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e));"),
        "ringbuf": ("BPF_RINGBUF_OUTPUT(events, 1);", "events.ringbuf_output(&e, sizeof(e), 0);")}
SMALL = {"page_cnt": 1, "wakeup_bytes": 1 << 20, "poll_ms": 20, "batch_ms": 20}

# N getppid() calls, started when a byte arrives on stdin; N = 0 calls until killed
LOOP = r"""
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char go;
    if (read(0, &go, 1) != 1) return 1;
    for (long i = 0; n == 0 || i < n; i++) getppid();
    return 0;
}
"""


def source(kind: str) -> str:
    decl, submit = DECL[kind]
    return f"""
struct ev_t {{ u64 seq; u64 pad[3]; }};
{decl}
BPF_ARRAY(target, u32, 1);
BPF_ARRAY(seqs, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    int k = 0;
    u32 *pid = target.lookup(&k);
    if (!pid || *pid != (bpf_get_current_pid_tgid() >> 32)) return 0;
    u64 *s = seqs.lookup(&k);
    if (!s) return 0;
    struct ev_t e = {{}};
    e.seq = __sync_fetch_and_add(s, 1);
    {submit}
    return 0;
}}
"""


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loop")
    (d / "loop.c").write_text(LOOP)
    subprocess.run(["gcc", "-O2", "-o", str(d / "loop"), str(d / "loop.c")], check=True)
    return d / "loop"


def start_child(loop: Path, prog: Program, n: int) -> subprocess.Popen:
    """A child that makes ``n`` calls once it is the program's target."""
    child = subprocess.Popen([str(loop), str(n)], stdin=subprocess.PIPE)
    prog.maps["target"][0] = child.pid
    child.stdin.write(b"g")
    child.stdin.flush()
    return child


def settles(stream, total: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stream.received + stream.lost_kernel >= total:
            time.sleep(0.05)  # and stays there
            return stream.received + stream.lost_kernel == total
        time.sleep(0.01)
    return False


def accounted(stats: dict) -> int:
    """Where every received event went."""
    return sum(stats[k] for k in ("held", "dropped_cap", "spilled", "discarded_paused",
                                  "cleared", "lost_reader"))


def exact_runs(loop: Path, kind: str, runs: int, n: int) -> list[tuple[int, int]]:
    """(received, lost) of each of ``runs`` bursts of ``n`` events, asserting exactness."""
    out = []
    with Program(source(kind), stream_options=SMALL) as prog:
        stream = prog.events["events"]
        for run in range(runs):
            received, lost = stream.received, stream.lost_kernel
            assert start_child(loop, prog, n).wait() == 0
            assert settles(stream, received + lost + n), (
                f"run {run}: {stream.received - received} received + "
                f"{stream.lost_kernel - lost} lost != {n}")
            out.append((stream.received - received, stream.lost_kernel - lost))
        assert int(prog.maps["seqs"][0]) == runs * n
        stats = stream.stats
        assert accounted(stats) == stats["received"] and stats["failed"] == 0
        seq = stream.df["seq"].to_numpy()
        assert len(np.unique(seq)) == len(seq) == stats["held"]
    return out


@pytest.mark.parametrize("kind", sorted(DECL))
def test_every_burst_into_small_buffers_is_received_or_lost(loop, kind, no_leaks):
    runs = exact_runs(loop, kind, runs=20, n=20_000)
    assert sum(lost for _, lost in runs) > 0, "the buffers never overflowed"
    assert sum(received for received, _ in runs) > 0


def test_perf_losses_counted_by_the_program_where_the_kernel_cannot(loop, monkeypatch,
                                                                    no_leaks):
    monkeypatch.setattr(perfbuf, "lost_format_supported", lambda: False)
    with Program(source("perf"), stream_options=SMALL) as prog:
        stream = prog.events["events"]
        assert stream._reader.lost_fd is not None and not stream._reader.read_lost
    runs = exact_runs(loop, "perf", runs=5, n=20_000)
    assert sum(lost for _, lost in runs) > 0


@pytest.mark.parametrize("kind", sorted(DECL))
def test_stop_under_load_accounts_for_every_event_submitted(loop, kind, no_leaks):
    for _ in range(3):
        prog = Program(source(kind), stream_options=SMALL)
        seqs = os.dup(prog.maps["seqs"].handle.fd)  # read after the program is gone
        try:
            stream = prog.events["events"]
            child = start_child(loop, prog, 0)
            try:
                while int(prog.maps["seqs"][0]) < 50_000:
                    time.sleep(0.005)
                prog.stop()
            finally:
                child.kill()
                child.wait()
            submitted = np.zeros(1, np.uint64)
            sysbpf.map_lookup(seqs, np.zeros(1, np.uint32), submitted)
        finally:
            os.close(seqs)
        stats = stream.stats
        assert stats["received"] + stats["lost_kernel"] == int(submitted[0])
        assert stats["received"] > 0 and stats["lost_kernel"] > 0
        assert accounted(stats) == stats["received"]


UPROBE = """
BPF_ARRAY(calls, u64, 1);
BPF_PERF_OUTPUT(perf);
BPF_RINGBUF_OUTPUT(ring, 4);
int on_getpid(void *ctx) {
    int k = 0;
    calls.increment(k);
    u64 v = 1;
    ring.ringbuf_output(&v, sizeof(v), 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 v = 2;
    perf.perf_submit(args, &v, sizeof(v));
    return 0;
}
"""


def gone(ids: list[int]) -> bool:
    """Whether the kernel has freed the programs ``ids`` (it frees them lazily)."""
    deadline = time.monotonic() + 2
    while set(ids) & loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not set(ids) & loaded_prog_ids()


def assert_released(ids: list[int], fds_before: list[str]) -> None:
    assert sorted(own_bpf_fds()) == fds_before
    assert gone(ids)
    assert not [e for e in uprobe_events() if "getpid" in e]
    assert not any(t.name.startswith("ebpf_magic-streams") for t in threading.enumerate())


def innermost_file(e: BaseException) -> str:
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename


def test_sigint_during_stop_is_delivered_after_everything_is_released(no_leaks):
    fds_before = sorted(own_bpf_fds())
    main = threading.main_thread().ident
    attach = ["uprobe:c:getpid=on_getpid"]
    prog = Program(UPROBE, attach=attach)
    t0 = time.perf_counter()
    prog.stop()
    duration = time.perf_counter() - t0
    rng = random.Random(9)
    inside = 0
    for _ in range(20):
        prog = Program(UPROBE, attach=attach)
        ids = prog.prog_ids()
        os.getpid()
        assert int(prog.maps["calls"][0]) >= 1
        timer = threading.Timer(rng.uniform(0, duration * 1.2), signal.pthread_kill,
                                (main, signal.SIGINT))
        try:
            timer.start()
            prog.stop()
            timer.join()
            time.sleep(0.001)  # a signal sent after stop() lands here
        except KeyboardInterrupt as e:
            timer.join()
            inside += innermost_file(e).endswith("program.py")
        if prog.running:  # interrupted before stop() began: a second stop() does it all
            prog.stop()
        assert not prog.running
        assert_released(ids, fds_before)
        prog.stop()  # idempotent
    assert inside >= 5, f"only {inside} of 20 interrupts landed inside stop()"


def test_sigint_during_a_failed_start_rolls_back_everything(no_leaks):
    fds_before = sorted(own_bpf_fds())
    main = threading.main_thread().ident
    bad = ["uprobe:c:getpid=on_getpid", "tracepoint:nosuch:event=on_getpid"]
    t0 = time.perf_counter()
    with pytest.raises(AttachError):
        Program(UPROBE, attach=bad)
    duration = time.perf_counter() - t0
    rng = random.Random(9)
    for _ in range(12):  # in the compiler, while attaching, while rolling back
        timer = threading.Timer(rng.uniform(0, duration), signal.pthread_kill,
                                (main, signal.SIGINT))
        with pytest.raises((KeyboardInterrupt, AttachError)):
            try:
                timer.start()
                Program(UPROBE, attach=bad)
            finally:
                timer.join()
                time.sleep(0.001)
        assert sorted(own_bpf_fds()) == fds_before


SPILL = """
struct ev_t { u64 seq; };
BPF_RINGBUF_OUTPUT(events, 64);
BPF_ARRAY(seqs, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    int k = 0;
    u64 *s = seqs.lookup(&k);
    if (!s) return 0;
    struct ev_t e = { __sync_fetch_and_add(s, 1) };
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
"""


def test_a_failing_reader_is_reported_and_counts_what_it_drops(tmp_path, no_leaks):
    spill = tmp_path / "spill"
    with Program(SPILL, defines={"PID": os.getpid()},
                 stream_options={"max_rows": 100, "spill": str(spill)}) as prog:
        stream = prog.events["events"]
        for _ in range(100):
            os.getppid()
        assert settles(stream, 100)
        assert stream.stats["failed"] == 0
        spill.rmdir()
        spill.write_text("")  # the spill directory is gone: spilling must fail
        for _ in range(900):  # the store is full: these must go to the spill file
            os.getppid()
        assert settles(stream, 1000)
        elsewhere = threading.Thread(target=lambda: stream.stats)  # e.g. a live view's
        elsewhere.start()
        elsewhere.join()
        with pytest.warns(StreamWarning, match="stopped delivering events"):
            df = stream.df
        assert list(df["seq"]) == list(range(100))
        stats = stream.stats
        assert stats["failed"] == 1 and "FileExistsError" in stream.failure
        assert (stats["held"], stats["lost_reader"], stats["spilled"]) == (100, 900, 0)
        assert accounted(stats) == stats["received"] == 1000
        assert "failed" in repr(stream)
        assert "FileExistsError" in stream.live(rows=1, interval=0.05).value
    assert stream.stats["lost_reader"] == 900


READER = {"perf": perfbuf.PerfBuffer, "ringbuf": ringbuf.RingBuffer}


def unwoken(kind: str) -> str:
    """The counting program with 1 MiB buffers whose ring buffer never wakes the reader."""
    return (source(kind).replace("BPF_RINGBUF_OUTPUT(events, 1)", "BPF_RINGBUF_OUTPUT(events, 256)")
            .replace("ringbuf_output(&e, sizeof(e), 0)", "ringbuf_output(&e, sizeof(e), 1)"))


def failing_read(self, *args):
    raise OSError(5, "injected read failure")


@pytest.mark.parametrize("kind", sorted(DECL))
def test_a_final_drain_that_fails_counts_what_it_leaves(loop, kind, monkeypatch, no_leaks):
    # the reader sleeps through the burst (no wake-up, a 60 s poll): stop() must drain it all
    options = {"page_cnt": 256, "wakeup_bytes": 1 << 30, "poll_ms": 60_000, "batch_ms": 0}
    n = 5_000
    prog = Program(unwoken(kind), stream_options=options)
    try:
        stream = prog.events["events"]
        assert start_child(loop, prog, n).wait() == 0
        assert int(prog.maps["seqs"][0]) == n
        assert stream.received == 0
        monkeypatch.setattr(READER[kind], "read", failing_read)
    finally:
        prog.stop()
    with pytest.warns(StreamWarning, match="stopped delivering events"):
        stats = stream.stats
    assert stats["received"] + stats["lost_kernel"] == n
    assert (stats["lost_reader"], stats["held"], stats["failed"]) == (n, 0, 1)
    assert accounted(stats) == stats["received"]
    assert "injected read failure" in stream.failure


def test_a_buffer_that_cannot_even_be_skipped_says_so(loop, monkeypatch, no_leaks):
    options = {"page_cnt": 256, "wakeup_bytes": 1 << 30, "poll_ms": 60_000, "batch_ms": 0}
    prog = Program(unwoken("perf"), stream_options=options)
    try:
        stream = prog.events["events"]
        assert start_child(loop, prog, 100).wait() == 0
        monkeypatch.setattr(perfbuf.PerfBuffer, "read", failing_read)
        monkeypatch.setattr(perfbuf.PerfBuffer, "discard", failing_read)
    finally:
        prog.stop()
    with pytest.warns(StreamWarning, match="could not be counted .OSError: .Errno 5. injected"):
        assert stream.stats["failed"] == 1


@pytest.mark.parametrize("kind", sorted(DECL))
def test_a_reader_whose_reads_fail_counts_every_event_it_skips(loop, kind, monkeypatch, no_leaks):
    monkeypatch.setattr(READER[kind], "read", failing_read)
    n = 20_000
    with Program(source(kind), stream_options=SMALL) as prog:
        stream = prog.events["events"]
        assert start_child(loop, prog, n).wait() == 0
        assert settles(stream, n)
        with pytest.warns(StreamWarning, match="injected read failure"):
            stats = stream.stats
        assert stats["lost_reader"] == stats["received"] > 0 and stats["held"] == 0
    assert stream.stats["received"] + stream.stats["lost_kernel"] == n


def test_counters_survive_clear(no_leaks):
    with Program(SPILL, defines={"PID": os.getpid()},
                 stream_options={"max_rows": 100}) as prog:
        stream = prog.events["events"]
        for _ in range(250):
            os.getppid()
        assert settles(stream, 250)
        stream.clear()
        stats = stream.stats
        assert (stats["held"], stats["dropped_cap"], stats["cleared"]) == (0, 150, 100)
        stream.max_rows = 10
        for _ in range(20):
            os.getppid()
        assert settles(stream, 270)
        stats = stream.stats
        assert (stats["held"], stats["dropped_cap"], stats["cleared"]) == (10, 160, 100)
        assert accounted(stats) == stats["received"] == 270


@pytest.mark.parametrize("options", [{"max_rows": -5}, {"max_rows": 10**13},
                                     {"max_rows": "10"}, {"max_rows": 1.5},
                                     {"max_rows": True}, {"page_cnt": 3},
                                     {"page_cnt": 0}, {"poll_ms": 0}, {"wakeup_bytes": -1},
                                     {"max_row": 10}, {"spill": "/dev/null/x"}])
def test_bad_stream_options_are_refused_before_anything_loads(options, no_leaks):
    fds_before = sorted(own_bpf_fds())
    t0 = time.monotonic()
    with pytest.raises(StreamOptionError) as info:
        Program(SPILL, defines={"PID": 1}, stream_options=options)
    assert time.monotonic() - t0 < 0.1, "refused only after compiling"
    assert len(str(info.value).splitlines()) <= 2 and info.value.hint
    assert sorted(own_bpf_fds()) == fds_before


def test_default_perf_rings_split_a_budget_across_cpus(no_leaks):
    mib = 1 << 20
    sizes = {n: perf_pages(n) * PAGE_SIZE for n in (1, 2, 4, 8, 64, 256, 1024)}
    assert sizes == {1: 16 * mib, 2: 16 * mib, 4: 16 * mib, 8: 8 * mib, 64: mib,
                     256: mib // 4, 1024: mib // 4}
    with Program(SPILL.replace("BPF_RINGBUF_OUTPUT(events, 64)", "BPF_PERF_OUTPUT(events)")
                 .replace("events.ringbuf_output(&e, sizeof(e), 0)",
                          "events.perf_submit(args, &e, sizeof(e))"),
                 defines={"PID": os.getpid()}) as prog:
        cpus = len(sysbpf.online_cpus())
        assert prog.events["events"].buffer_bytes == cpus * perf_pages(cpus) * PAGE_SIZE
        for _ in range(10):
            os.getppid()
        assert settles(prog.events["events"], 10)
        assert prog.events.reader_cpu_s > 0


SHRINK = """
import os, time, warnings
from ebpf_magic.program import Program
src = '''
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    u64 v = 7;
    events.perf_submit(args, &v, sizeof(v));
    return 0;
}
'''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Program(src, defines={"PID": os.getpid()}) as prog:
        stream = prog.events["events"]
        os.getppid()
        deadline = time.monotonic() + 5
        while stream.received < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(stream.buffer_bytes, stream.received, len(caught), str(caught[0].message))
"""


def test_default_perf_rings_shrink_to_the_locked_memory_limit():
    if not (shutil.which("setpriv") and shutil.which("prlimit")):
        pytest.skip("needs setpriv and prlimit (util-linux) to run without CAP_IPC_LOCK")
    out = subprocess.run(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
                          "prlimit", "--memlock=65536:65536", sys.executable, "-c", SHRINK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    size, received, warned, message = out.stdout.split(" ", 3)
    cpus = len(sysbpf.online_cpus())
    assert int(size) < cpus * perf_pages(cpus) * PAGE_SIZE and int(received) == 1
    assert warned == "1" and "locked-memory limit" in message


@pytest.mark.parametrize("kind", sorted(DECL))
def test_a_full_buffer_is_read_in_pieces_without_losing_a_record(loop, kind, no_leaks):
    # 1 MiB buffers and a reader that sleeps: each read finds more than one piece
    text = source(kind).replace("BPF_RINGBUF_OUTPUT(events, 1)", "BPF_RINGBUF_OUTPUT(events, 256)")
    options = {"page_cnt": 256, "wakeup_bytes": 1 << 30, "poll_ms": 500, "batch_ms": 0}
    n = 20_000  # 800-960 KiB of records: two pieces, cut inside a record
    assert n * 40 > READ_BYTES
    with Program(text, stream_options=options) as prog:
        stream = prog.events["events"]
        assert start_child(loop, prog, n).wait() == 0
        assert settles(stream, n)
        assert stream.lost_kernel == 0
        assert sorted(stream.df["seq"]) == list(range(n))
