"""BCC cells: types the decoder cannot express are said, and kernel structs read from BTF."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ebpf_magic.program import Program

N = 50

# Bitfields: BCC describes them, numpy cannot express them; BCC's perf-event field list
# even drops their widths.
BITFIELDS = """\
struct flags { u32 a : 3; u32 b : 5; u32 rest; u32 more; };
BPF_HASH(seen, u32, struct flags);
BPF_PERF_OUTPUT(out);
BPF_RINGBUF_OUTPUT(ring, 8);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    struct flags f = {};
    f.a = 5; f.b = 17; f.rest = 1234; f.more = 7;
    seen.update(&pid, &f);
    out.perf_submit(args, &f, sizeof(f));
    struct flags *r = ring.ringbuf_reserve(sizeof(struct flags));
    if (!r) return 0;
    r->a = 5; r->b = 17; r->rest = 1234; r->more = 7;
    ring.ringbuf_submit(r, 0);
    return 0;
}
"""
# the first word: a = 5 in bits 0-2, b = 17 in bits 3-7
WORDS = [5 | 17 << 3, 1234, 7]


def _wait(stream, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while stream.received < want and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.kernel
def test_bitfield_types_are_said_and_read_as_bytes(no_leaks):
    me = os.getpid()
    with Program(BITFIELDS, defines={"PID": me}) as prog:
        for _ in range(N):
            os.getppid()
        _wait(prog.events["out"], N)
        _wait(prog.events["ring"], N)
        raw_value = prog.maps["seen"][me]
        out, ring = prog.events["out"].df, prog.events["ring"].df
        warnings = [w for w in prog.warnings if "raw bytes" in w]
        prog.events["out"].set_dtype(np.dtype([("flags", "<u4"), ("rest", "<u4"),
                                               ("more", "<u4")]))
        typed = prog.events["out"].df
    assert warnings == [
        "map 'seen' is read as raw bytes: its type could not be decoded (value: it has "
        "bitfields, which numpy cannot express). Read it as bytes (.peek_raw(), .snapshot()) "
        "or declare the type without bitfields.",
        "stream 'out' is read as raw bytes: its record type could not be decoded (its fields "
        "include bitfields, which numpy cannot express). Give its layout with "
        ".events['out'].set_dtype(numpy dtype or ctypes type).",
        "stream 'ring' is read as raw bytes: its record type could not be decoded (its "
        "fields include bitfields, which numpy cannot express). Give its layout with "
        ".events['ring'].set_dtype(numpy dtype or ctypes type).",
    ]
    assert list(np.frombuffer(raw_value, "<u4")) == WORDS
    for df in (out, ring):
        assert len(df) == N
        assert {list(np.frombuffer(bytes(d), "<u4")[:3]) == WORDS for d in df["data"]} == {True}
    assert len(typed) == N
    assert set(typed["flags"]) == {WORDS[0]} and set(typed["rest"]) == {WORDS[1]}
