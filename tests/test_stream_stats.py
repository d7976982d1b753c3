"""A stream's counters read as a small labelled table, each line saying what it counts."""

import os
import time

import pytest

from ebpf_magic import Program

SRC = """BPF_PERF_OUTPUT(ev);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    u64 v = 1; ev.perf_submit(args, &v, sizeof(v)); return 0;
}
"""


@pytest.mark.kernel
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


class _LossesUnreadableAtClose:
    """A reader with nothing to read whose loss count fails once the stream closes it."""

    fds: list[int] = []
    buffer_bytes = 4096

    def __init__(self) -> None:
        self.closing = False

    def read(self, max_bytes: int):
        return iter(())

    def discard(self) -> int:
        return 0

    def lost(self) -> dict[int, int]:
        if self.closing:
            raise OSError(9, "Bad file descriptor")
        return {0: 7, 1: 5}

    def close(self) -> None:
        pass


@pytest.mark.filterwarnings("ignore::UserWarning")  # the failure's warning, asserted below
def test_a_loss_count_unreadable_at_close_keeps_the_last_count_and_says_so():
    import numpy as np

    from ebpf_magic.data.streams import Stream, Streams

    reader = _LossesUnreadableAtClose()
    stream = Stream("ev", "ringbuf", np.dtype([("v", "<u8")]), 100, reader=reader)
    streams = Streams({"ev": stream}, poll_s=0.01, batch_s=0.01)
    assert stream.stats["lost_kernel"] == 12
    reader.closing = True
    streams.close()
    stats = stream.stats
    assert stats["lost_kernel"] == 12 and stats["failed"] == 1
    assert "loss count could not be read at close" in stream.failure
