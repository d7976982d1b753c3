"""Records of perf and ring buffers decoded from the program's own BTF, not its DWARF.

Nested structs, arrays, enums and bitfields; a struct declared inside the submitting
function; two functions each declaring their own ``struct event`` of another layout.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ebpf_magic.backend import libbpf
from ebpf_magic.backend.libbpf import _compile, _program, _records
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes as dtypes_
from ebpf_magic.program import Program

N = 25

needs_libbpf = pytest.mark.skipif(not libbpf.available()[0],
                                  reason=f"libbpf backend unavailable: {libbpf.available()[1]}")

RECORDS = """\
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); } rich SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(int));
    __uint(value_size, sizeof(u32));
} first SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); } second SEC(".maps");

enum color { RED = 1, GREEN = 2 };
struct inner { u16 a; u8 b[3]; };
struct rich { u32 pid; struct inner in; enum color c; u32 lo : 4, hi : 12; u64 tail; };

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != PID)
        return 0;
    struct rich *r = bpf_ringbuf_reserve(&rich, sizeof(*r), 0);
    if (!r)
        return 0;
    r->pid = PID;
    r->in.a = 7;
    r->in.b[0] = 1; r->in.b[1] = 2; r->in.b[2] = 3;
    r->c = GREEN;
    r->lo = 5;
    r->hi = 300;
    r->tail = 0x1122334455667788ULL;
    bpf_ringbuf_submit(r, 0);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != PID)
        return 0;
    struct event { u64 big; char tag[4]; } e = {123456789, "abc"};
    bpf_perf_event_output(ctx, &first, BPF_F_CURRENT_CPU, &e, sizeof(e));
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_getuid")
int on_getuid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != PID)
        return 0;
    struct event { u8 small; u32 word; } e = {9, 0xabcdef};
    bpf_ringbuf_output(&second, &e, sizeof(e), 0);
    return 0;
}
"""


def _wait(stream, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while stream.received < want and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)


@needs_libbpf
@pytest.mark.kernel
def test_records_decode_from_the_program_s_own_btf(no_leaks, monkeypatch, tmp_path):
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path))

    def no_dwarf(_obj):
        raise AssertionError("the DWARF was read")

    monkeypatch.setattr(_program, "dwarf_spec", no_dwarf)
    me = os.getpid()
    with Program(RECORDS, defines={"PID": me}) as prog:
        for _ in range(N):
            os.getppid()
            os.getpid()
            os.getuid()
        streams = {name: prog.events[name] for name in ("rich", "first", "second")}
        for stream in streams.values():
            _wait(stream, N)
        dtypes = {name: prog._compiled.event_dtype(name) for name in streams}
        frames = {name: s.df for name, s in streams.items()}
    assert dtypes["first"] == np.dtype({"names": ["big", "tag"], "formats": ["<u8", "S4"],
                                        "offsets": [0, 8], "itemsize": 16})
    assert dtypes["second"] == np.dtype({"names": ["small", "word"], "formats": ["u1", "<u4"],
                                         "offsets": [0, 4], "itemsize": 8})
    rich = frames["rich"]
    assert len(rich) == N and set(rich["pid"]) == {me}
    assert set(rich["in.a"]) == {7}
    assert [set(rich[f"in.b[{i}]"]) for i in range(3)] == [{1}, {2}, {3}]
    assert set(rich["c"]) == {"GREEN"}
    bits = dtypes_.bitfields(dtypes["rich"])
    assert {n: (b.bit_offset, b.bits) for n, b in bits.items()} == {"lo": (0, 4), "hi": (4, 12)}
    storage = {int(lo) | int(hi) << 8 for lo, hi in zip(rich[f"{bits['lo'].storage}[0]"],
                                                       rich[f"{bits['lo'].storage}[1]"],
                                                       strict=True)}
    assert storage == {5 | 300 << 4}
    assert set(rich["tail"]) == {0x1122334455667788}
    first, second = frames["first"], frames["second"]
    assert len(first) == N and set(first["big"]) == {123456789} and set(first["tag"]) == {"abc"}
    assert len(second) == N and set(second["small"]) == {9} and set(second["word"]) == {0xabcdef}


def test_markers_name_each_submission_s_record():
    cell = (
        "int f(void *ctx) {\n"
        "  struct S { int a; } s;\n"
        "  bpf_perf_event_output(ctx, &m1, 0, &s,\n      sizeof(s));\n"
        "  struct T *t = bpf_ringbuf_reserve(&m2, sizeof(*t), 0);\n"
        "  bpf_ringbuf_output(&m3, &s, 16, 0);\n"  # no sizeof: the data's target
        "  bpf_ringbuf_output(&m4, p, 16, 0);\n"  # nothing to name: no marker
        "#define OUT(x) bpf_ringbuf_output(&m5, &x, sizeof(x), 0)\n"
        "}\n")
    text, markers = _records.mark(cell)
    assert markers == {f"{_records.PREFIX}0": "m1", f"{_records.PREFIX}1": "m2",
                       f"{_records.PREFIX}2": "m3"}
    assert len(text.splitlines()) == len(cell.splitlines())  # every line where it was
    assert f"static __typeof__(s) {_records.PREFIX}0 " in text
    assert f"static __typeof__(*t) {_records.PREFIX}1 " in text
    assert f"static __typeof__(s) {_records.PREFIX}2 " in text
    assert "OUT(x) bpf_ringbuf_output" in text


@needs_libbpf
def test_a_marker_clang_refuses_leaves_the_cell_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path))
    # sizeof(*e) of a void pointer is 1 (a GNU extension); a static of its type cannot be
    cell = ("struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } rb "
            "SEC(\".maps\");\n"
            "SEC(\"tracepoint/syscalls/sys_enter_getppid\")\nint f(void *ctx) {\n"
            "  void *e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);\n"
            "  if (e) bpf_ringbuf_discard(e, 0);\n  return 0;\n}\n")
    assert _compile.prepare(cell).records  # a marker was tried...
    compiled = _compile.compile_cell(cell, [])
    assert compiled.obj.startswith(b"\x7fELF") and compiled.records == {}  # ...and left out
    with pytest.raises(BPFError) as err:
        _compile.compile_cell(cell.replace("return 0;", "return x;"), [])
    assert "undeclared identifier 'x'" in err.value.message
    assert _records.PREFIX not in err.value.message  # the cell's own text, as it was
