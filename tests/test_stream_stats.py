"""A stream's counters read as a small labelled table, each line saying what it counts."""

import os
import time

import pytest

from ebpf_magic import Program

pytestmark = pytest.mark.kernel

SRC = """BPF_PERF_OUTPUT(ev);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    u64 v = 1; ev.perf_submit(args, &v, sizeof(v)); return 0;
}
"""


def test_stats_is_a_labelled_table(no_leaks):
    with Program(SRC, defines={"PID": os.getpid()}, stream_options={"max_rows": 20}) as p:
        for _ in range(1050):
            os.getppid()
        stream = p.events["ev"]
        deadline = time.monotonic() + 5
        while stream.stats["received"] < 1050 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = stream.stats
    assert stats["received"] == 1050 and stats["dropped_cap"] == 1030  # still a dict
    assert repr(stats).splitlines() == [
        "received                1,050  events read from the kernel's buffer",
        "in the frame               20  events in .df now",
        "lost in kernel              0  never reached the buffer: it was full",
        "dropped by the cap      1,030  oldest events beyond max_rows, forgotten",
        "spilled to disk             0  written to the spill file instead of memory",
        "discarded while paused      0  arrived while the stream was paused",
        "cleared                     0  forgotten by clear()",
        "lost after a failure        0  taken after the stream failed; see .failure",
        "failed                      0  1 if the stream stopped delivering events",
    ]
    assert list(stats.df.index[:4]) == ["received", "in the frame", "lost in kernel",
                                        "dropped by the cap"]
    assert "<td>1,050</td>" in stats._repr_html_()
