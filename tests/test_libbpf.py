"""The libbpf backend on the real kernel: libbpf-style C, clang, kernel types from BTF."""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ebpf_magic.backend import choose_backend, libbpf
from ebpf_magic.errors import AttachError, BPFError, CompileError, VerifierError
from ebpf_magic.program import Program

from conftest import bpftool_json, loaded_map_ids, loaded_prog_ids

_OK, _WHY = libbpf.available()
needs_libbpf = pytest.mark.skipif(not _OK, reason=f"libbpf backend unavailable: {_WHY}")

# The kernel's samples/bpf/trace_output_kern.c as the seed gives it, on a tracepoint
# (this kernel has no kprobes), with no #include lines.
SEED = """\
struct bpf_map_def SEC("maps") my_map = {
	.type = BPF_MAP_TYPE_PERF_EVENT_ARRAY,
	.key_size = sizeof(int),
	.value_size = sizeof(u32),
	.max_entries = 2,
};

SEC("tracepoint/syscalls/sys_enter_write")
int bpf_prog1(struct pt_regs *ctx)
{
	struct S {
		u64 pid;
		u64 cookie;
	} data;

	data.pid = bpf_get_current_pid_tgid();
	data.cookie = 0x12345678;

	bpf_perf_event_output(ctx, &my_map, FLAGS, &data, sizeof(data));

	return 0;
}
"""

CORE = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct event { u32 tgid; u32 parent_tgid; u32 helper_tgid; u32 tid; };

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
#ifdef PARENT
    if (BPF_CORE_READ(task, real_parent, tgid) != PARENT)
        return 0;
#endif
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    e->tgid = BPF_CORE_READ(task, tgid);
    e->parent_tgid = BPF_CORE_READ(task, real_parent, tgid);
    e->helper_tgid = id >> 32;
    e->tid = (u32)id;
    bpf_ringbuf_submit(e, 0);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


def _writes_on_cpus(n_per_cpu: int, cpus: list[int]) -> int:
    """Fork a child making ``n_per_cpu`` write(2) calls pinned on each of ``cpus``; its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                for _ in range(n_per_cpu):
                    os.write(w, b"")
        finally:
            os._exit(0)
    os.close(w)
    os.close(r)
    os.waitpid(pid, 0)
    return pid


def _wait_rows(stream, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while stream.received < want and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # anything beyond ``want`` would show up too


def _links_of(prog_ids: set[int]) -> list[dict]:
    """The kernel's links (bpftool's view) that attach any of ``prog_ids``."""
    return [ln for ln in bpftool_json("link", "show") if ln.get("prog_id") in prog_ids]


def _released(listing, ids: set[int], timeout: float = 5.0) -> bool:
    """Whether ``ids`` leave the kernel's ``listing`` (it frees maps from a work queue)."""
    deadline = time.monotonic() + timeout
    while listing() & ids:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- choosing a backend (no kernel needed) -----------------------------------------


def test_dialect_chooses_backend():
    assert choose_backend(SEED) == "libbpf"
    assert choose_backend(CORE) == "libbpf"
    assert choose_backend("BPF_HASH(c, u32);\nint kprobe__x(void *ctx) { return 0; }") == "bcc"
    assert choose_backend("TRACEPOINT_PROBE(sched, sched_switch) { return 0; }") == "bcc"
    assert choose_backend("int f(void *ctx) { return 0; }") == "bcc"
    assert choose_backend(SEED, "bcc") == "bcc"
    with pytest.raises(BPFError, match="unknown backend 'gcc'"):
        choose_backend(SEED, "gcc")


def test_legacy_map_rewritten_in_place():
    from ebpf_magic.backend.libbpf import _compile

    adjusted = _compile.prepare(SEED)
    text = adjusted.text
    assert adjusted.include_defaults and adjusted.notes == [_compile.LICENSE_NOTE]
    assert "bpf_map_def" not in text
    assert ("struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); __uint(key_size, sizeof(int)); "
            "__uint(value_size, sizeof(u32)); __uint(max_entries, 2); } my_map SEC(\".maps\");"
            in text)
    # every line of the cell keeps its number; the output call counts its failures, and a
    # static of the record's type names that type in the object's BTF
    call = "bpf_perf_event_output(ctx, &my_map, FLAGS, &data, sizeof(data))"
    out, seed = text.splitlines()[7:len(SEED.splitlines())], SEED.splitlines()[7:]
    at = next(i for i, line in enumerate(seed) if call in line)
    assert out[:at] + out[at + 1:] == seed[:at] + seed[at + 1:]
    assert out[at] == ("\t({ static __typeof__(data) __ebpf_magic_rec_0 __attribute__((used, "
                       f"section(\".ebpf_magic.records\"))); ({{ long __em_r = {call}; "
                       "if (__em_r) { __u32 __em_k = 0; "
                       "__u64 *__em_v = bpf_map_lookup_elem(&__ebpf_magic_lost_my_map, "
                       "&__em_k); if (__em_v) (*__em_v)++; } __em_r; }); });")
    assert adjusted.lost_maps == {"my_map": "__ebpf_magic_lost_my_map"}
    assert adjusted.records == {"__ebpf_magic_rec_0": "my_map"}
    assert text.rstrip().endswith('char LICENSE[] SEC("license") = "GPL";')
    other_order = SEED.replace('struct bpf_map_def SEC("maps") my_map',
                               'struct bpf_map_def my_map SEC("maps")')
    assert _compile.prepare(other_order).text == text


# -- the real kernel ------------------------------------------------------------------


@needs_libbpf
@pytest.mark.kernel
def test_seed_current_cpu_rows_from_every_cpu(no_leaks):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    # one slot for more CPUs than that: the map grows to one slot per CPU, with a note
    cell = SEED.replace("FLAGS", "BPF_F_CURRENT_CPU").replace("max_entries = 2", "max_entries = 1")
    with Program(cell) as prog:
        assert "my_map: max_entries 1 raised to" in " ".join(prog.notes)
        assert prog.warnings == []
        assert prog.backend == "libbpf"
        assert prog.attached == ["tracepoint:syscalls:sys_enter_write=bpf_prog1"]
        child = _writes_on_cpus(500, cpus)
        stream = prog.events["my_map"]
        _wait_rows(stream, 500 * len(cpus))
        df = stream.df
    mine = df[(df["pid"].to_numpy() >> np.uint64(32)) == child]
    assert len(mine) == 500 * len(cpus)
    assert (mine["cookie"] == 0x12345678).all()
    assert sorted(mine["cpu"].unique()) == cpus


@needs_libbpf
@pytest.mark.kernel
def test_seed_flags_zero_only_cpu0_and_warns(no_leaks):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or cpus[0] != 0:
        pytest.skip(f"needs CPU 0 and another CPU; this process may run on {cpus}")
    # the seed's own first line: vmlinux.h has those types, so the include is left out
    with Program("#include <linux/ptrace.h>\n" + SEED.replace("FLAGS", "0")) as prog:
        assert prog.warnings == [libbpf.FLAGS_ZERO_WARNING.format(map="my_map")]
        assert prog.notes[0].startswith("<linux/ptrace.h> left out")
        assert len(prog.notes) == 2 and "GPL was assumed" in prog.notes[1]
        child = _writes_on_cpus(300, [0, cpus[1]])
        stream = prog.events["my_map"]
        _wait_rows(stream, 300)
        df = stream.df
        lost = stream.lost_per_cpu
    mine = df[(df["pid"].to_numpy() >> np.uint64(32)) == child]
    assert len(mine) == 300  # the writes made on CPU 0; the others were never delivered
    # ...but counted as lost where they were made: the child's 300 and any other writer's
    assert 0 not in lost and lost.get(cpus[1], 0) >= 300


def _getppid_in_threads(n: int, threads: int) -> int:
    """Fork a child whose ``threads`` threads each call getppid() ``n`` times; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            workers = [threading.Thread(target=lambda: [os.getppid() for _ in range(n)])
                       for _ in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


@needs_libbpf
@pytest.mark.kernel
def test_core_reads_true_pid_and_parent(no_leaks):
    with Program(CORE) as prog:
        child = _getppid_in_threads(1000, 2)
        stream = prog.events["events"]
        _wait_rows(stream, 2000)
        df = stream.df
        assert stream.stats["lost_kernel"] == 0
    mine = df[df["helper_tgid"] == child]
    assert len(mine) == 2000
    assert (mine["tgid"] == child).all()
    assert (mine["parent_tgid"] == os.getpid()).all()
    assert mine["tid"].nunique() == 2 and child not in set(mine["tid"])


@needs_libbpf
@pytest.mark.kernel
def test_stop_leaves_nothing_in_kernel_views(no_leaks):
    prog = Program(CORE)
    # other processes may load programs meanwhile: follow this program's own ids
    prog_ids, map_ids = set(prog.prog_ids()), set(prog.map_ids())
    assert prog_ids <= loaded_prog_ids() and len(prog_ids) == 1
    assert map_ids <= loaded_map_ids() and len(map_ids) == 1
    assert len(_links_of(prog_ids)) == 1
    prog.stop()
    prog.stop()
    assert _released(loaded_prog_ids, prog_ids)
    assert _released(loaded_map_ids, map_ids)
    assert not _links_of(prog_ids)


@needs_libbpf
@pytest.mark.kernel
def test_verifier_rejection_is_short_and_leaves_nothing(no_leaks):
    bad = """\
SEC("tracepoint/syscalls/sys_enter_getppid")
int bad(void *ctx)
{
    int *p = (int *)bpf_get_current_task();
    return *p;
}
"""
    progs, maps = loaded_prog_ids(), loaded_map_ids()
    with pytest.raises(VerifierError) as err:
        Program(bad)
    assert "rejected bad()" in err.value.message
    assert "invalid mem access" in err.value.message
    assert len(err.value.message.splitlines()) <= 14
    assert not [p for p in bpftool_json("prog", "show")
                if p["id"] not in progs and p.get("name") == "bad"]
    assert not [m for m in bpftool_json("map", "show")
                if m["id"] not in maps and m.get("name", "").startswith("cell")]


@needs_libbpf
@pytest.mark.kernel
def test_kprobe_section_names_the_tracepoint(no_leaks):
    from ebpf_magic.kernel import host as kernel

    if kernel.kprobes_supported():
        pytest.skip("this kernel has kprobes: the attach succeeds")
    cell = SEED.replace("FLAGS", "BPF_F_CURRENT_CPU").replace(
        "tracepoint/syscalls/sys_enter_write", "kprobe/sys_write")
    with pytest.raises(AttachError) as err:
        Program(cell)
    assert 'SEC("kprobe/sys_write")' in err.value.message
    assert 'SEC("tracepoint/syscalls/sys_enter_write")' in err.value.hint


@needs_libbpf
@pytest.mark.kernel
def test_compile_error_names_cell_line(no_leaks):
    cell = SEED.replace("FLAGS", "BPF_F_CURRENT_CPU").replace("0x12345678", "cookie_value")
    with pytest.raises(CompileError) as err:
        Program(cell, line_offset=1)
    line = SEED.splitlines().index("\tdata.cookie = 0x12345678;") + 1
    assert f"cell, line {line + 1}: error: use of undeclared identifier 'cookie_value'" \
        in err.value.message


@needs_libbpf
@pytest.mark.kernel
def test_clang_fatal_error_is_short(no_leaks):
    cell = """\
SEC("tracepoint/syscalls/sys_enter_getppid")
int wide(void *ctx)
{
    volatile unsigned __int128 a = bpf_ktime_get_ns();
    volatile unsigned __int128 b = a * a;
    return (int)(b >> 64);
}
"""
    with pytest.raises(CompileError) as err:
        Program(cell)
    assert "__multi3" in err.value.message
    assert "128-bit" in err.value.hint
    assert len(str(err.value).splitlines()) < 12


@needs_libbpf
@pytest.mark.kernel
def test_clang_crash_is_a_compile_error(no_leaks, tmp_path, monkeypatch):
    fake = tmp_path / "clang"
    fake.write_text("#!/bin/sh\necho 'PLEASE submit a bug report' >&2\nkill -SEGV $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("EBPF_MAGIC_CLANG", str(fake))
    with pytest.raises(CompileError, match=r"clang crashed compiling the cell \(SIGSEGV\)"):
        Program(SEED.replace("FLAGS", "0"), backend="libbpf")


@needs_libbpf
@pytest.mark.kernel
def test_clang_stack_overflow_is_a_compile_error(no_leaks):
    # 5 MB of one expression: clang recurses once per operator and overflows its stack
    huge = ('SEC("tp/syscalls/sys_enter_getppid") int f(void *ctx) { return '
            + "1+" * (5 << 19) + "1; }")
    with pytest.raises(CompileError, match="clang crashed") as err:
        Program(huge)
    assert "compiler limit" in err.value.hint
    with Program(CORE) as prog:  # and the next cell compiles, attaches and counts as usual
        assert prog.attached == ["tracepoint:syscalls:sys_enter_getppid=on_getppid"]
        child = _getppid_in_threads(25, 1)
        stream = prog.events["events"]
        _wait_rows(stream, 25)
        df = stream.df
    assert len(df[df["helper_tgid"] == child]) == 25


@needs_libbpf
@pytest.mark.kernel
def test_cell_reports_backend_and_warns(shell, capsys, no_leaks):
    shell.run_cell_magic("bpf", "seed", SEED.replace("FLAGS", "0"))
    out = capsys.readouterr()
    prog = shell.user_ns["seed"]
    try:
        # notes and warnings are displayed lines, never stderr (red in a notebook)
        license_note = f"note: {prog.notes[0]}"
        assert "GPL was assumed" in license_note
        assert out.out.splitlines() == [
            license_note, f"warning: {libbpf.FLAGS_ZERO_WARNING.format(map='my_map')}",
            "seed: attached tracepoint:syscalls:sys_enter_write=bpf_prog1; "
            "maps: my_map; events: my_map; backend: libbpf"]
        assert out.err == ""
        # a SEC() without a target is attached by -a; --backend names the backend; the
        # second cell's own note is shown too
        shell.run_cell_magic("bpf", "plain -a tracepoint:syscalls:sys_enter_getppid "
                             "--backend libbpf",
                             'SEC("tracepoint") int on_getppid(void *ctx) { return 0; }')
        assert capsys.readouterr().out.splitlines() == [
            license_note,
            "plain: attached tracepoint:syscalls:sys_enter_getppid=on_getppid; backend: libbpf"]
    finally:
        prog.stop()
        if "plain" in shell.user_ns:
            shell.user_ns["plain"].stop()


@needs_libbpf
@pytest.mark.kernel
def test_function_without_section_is_a_short_error(no_leaks):
    with pytest.raises(BPFError) as err:
        Program("int on_getppid(void *ctx) { return 0; }", backend="libbpf")
    assert err.value.message.startswith("on_getppid() has no SEC() name")
    assert 'SEC("tracepoint/CATEGORY/NAME")' in err.value.hint


@needs_libbpf
@pytest.mark.kernel
def test_ring_overflow_received_plus_lost_is_submitted(no_leaks):
    small = CORE.replace("1 << 20", "4096")  # one page: a burst overflows it
    with Program(small, defines={"PARENT": os.getpid()},
                 stream_options={"batch_ms": 50, "poll_ms": 200}) as prog:
        assert list(prog.maps) == ["events"]  # the loss counter stays hidden
        _getppid_in_threads(20000, 1)
        stream = prog.events["events"]
    stats = stream.stats
    assert stats["lost_kernel"] > 0
    assert stats["received"] + stats["lost_kernel"] == 20000
    assert len(stream.df) == stats["received"]


STRUCT_KEYS = """\
enum shade { SHADE_LIGHT = 1, SHADE_DARK = 2 };
struct call_key {
    struct { u32 pid; u16 tag; } inner;
    u8 arr[3];
    char name[8];
    enum shade shade;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct call_key);
    __type(value, u64);
    __uint(max_entries, 64);
} calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count(void *ctx)
{
    struct call_key k = {};
    u64 one = 1, *n;
    k.inner.pid = bpf_get_current_pid_tgid() >> 32;
    if (k.inner.pid != PID)
        return 0;
    k.inner.tag = 7;
    k.arr[1] = 9;
    __builtin_memcpy(k.name, "ppid", 5);
    k.shade = SHADE_DARK;
    n = bpf_map_lookup_elem(&calls, &k);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&calls, &k, &one, BPF_NOEXIST);
    return 0;
}
"""


@needs_libbpf
@pytest.mark.kernel
def test_struct_keys_from_btf_roundtrip(no_leaks):
    with Program(STRUCT_KEYS, defines={"PID": os.getpid()}) as prog:
        for _ in range(250):
            os.getppid()
        calls = prog.maps["calls"]
        df = calls.df
        assert len(df) == 1
        row = df.iloc[0]
        assert (row["inner.pid"], row["inner.tag"], row["name"]) == (os.getpid(), 7, "ppid")
        assert [row[f"arr[{i}]"] for i in range(3)] == [0, 9, 0]
        assert row["shade"] == "SHADE_DARK"
        assert row["value"] == 250
        key = calls.row_key(row.to_dict())
        assert calls[key] == 250
        calls[key] = 1000
        os.getppid()
        assert calls[key] == 1001
        del calls[key]
        assert len(calls) == 0


BCC_COUNTER = """\
BPF_HASH(seen, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    seen.increment(pid);
    return 0;
}
"""


@needs_libbpf
@pytest.mark.kernel
def test_bcc_and_libbpf_in_one_process(no_leaks):
    import ctypes

    from ebpf_magic.backend.bcc import symbolize_user

    with Program(BCC_COUNTER) as bcc_prog:
        assert bcc_prog.backend == "bcc"
        symbolize_user(os.getpid(), [0])  # BCC's library, and its libbpf, in this process
        # another user of the process's libbpf replaces its print callback (BCC does so
        # on every compile): the verifier's log must still reach the error
        ctypes.CDLL("libbpf.so.1").libbpf_set_print(None)
        bad = ('SEC("tp/syscalls/sys_enter_getppid") int bad(void *c) '
               '{ return *(int *)bpf_get_current_task(); }')
        with pytest.raises(VerifierError, match="invalid mem access"):
            Program(bad)
        with Program(CORE) as core:
            child = _getppid_in_threads(100, 1)
            _wait_rows(core.events["events"], 100)
            df = core.events["events"].df
        assert (df["helper_tgid"] == child).sum() == 100
        assert bcc_prog.maps["seen"][child] == 100


@needs_libbpf
@pytest.mark.kernel
def test_kernel_type_name_clash_says_rename(no_leaks):
    cell = STRUCT_KEYS.replace("call_key", "key")
    with pytest.raises(CompileError) as err:
        Program(cell, defines={"PID": 1})
    assert "cell, line 2: error: redefinition of 'key'" in err.value.message
    assert "vmlinux.h" in err.value.hint and "rename" in err.value.hint


PROBE_KINDS = """\
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 16);
} counts SEC(".maps");

static void bump(u32 slot)
{
    u64 one = 1, *n = bpf_map_lookup_elem(&counts, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        bpf_map_update_elem(&counts, &slot, &one, BPF_NOEXIST);
}

static bool mine(void) { return bpf_get_current_pid_tgid() >> 32 == PID; }

SEC("raw_tp/sys_enter")
int raw(struct bpf_raw_tracepoint_args *ctx)
{
    if (mine() && ctx->args[1] == NR_GETPPID) bump(1);
    return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(typed, struct pt_regs *regs, long id)
{
    if (mine() && id == NR_GETPPID) bump(2);
    return 0;
}

SEC("uprobe")
int on_getpid(void *ctx) { bump(3); return 0; }

SEC("uprobe/libc.so.6:getpid")
int on_getpid_sec(void *ctx) { if (mine()) bump(4); return 0; }

SEC("perf_event")
int sample(void *ctx) { if (mine()) bump(5); return 0; }
"""


@needs_libbpf
@pytest.mark.kernel
def test_probe_kinds_from_sections_and_specs(no_leaks):
    import ctypes

    libc = ctypes.CDLL(None)
    nr_getppid = {"x86_64": 110, "aarch64": 173}.get(os.uname().machine)
    if nr_getppid is None:
        pytest.skip(f"getppid's syscall number on {os.uname().machine} is not in this test")
    n, me = 300, os.getpid()
    # raw_tp/sys_enter and tp_btf/sys_enter are variants of one probe: both are chosen here
    with Program(PROBE_KINDS, defines={"PID": me, "NR_GETPPID": nr_getppid}, pid=me,
                 attach=["uprobe:c:getpid=on_getpid", "software:cpu-clock:100000=sample"],
                 programs=["raw", "typed", "on_getpid", "on_getpid_sec", "sample"]) as prog:
        assert prog.attached == [
            "rawtracepoint:sys_enter=raw", "rawtracepoint:sys_enter=typed",
            "uprobe:libc.so.6:getpid=on_getpid_sec", f"uprobe:c:getpid (pid {me})=on_getpid",
            f"software:cpu-clock:100000 (pid {me})=sample"]
        for _ in range(n):
            os.getppid()
            libc.getpid()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:  # on CPU, for the cpu-clock samples
            pass
        counts = {int(k): int(v) for k, v in prog.maps["counts"].items()}
    assert {k: counts.get(k) for k in (1, 2, 3, 4)} == {1: n, 2: n, 3: n, 4: n}
    assert counts.get(5, 0) > 0


@needs_libbpf
@pytest.mark.kernel
def test_vmlinux_with_kernel_headers_is_a_short_error(no_leaks):
    cell = '#include "vmlinux.h"\n#include <linux/ptrace.h>\n' + SEED.replace("FLAGS", "0")
    with pytest.raises(CompileError) as err:
        Program(cell)
    lines = err.value.message.splitlines()
    assert len(lines) <= 2 * 6 + 2 and lines[-1].startswith("... and ")
    assert 'include "vmlinux.h"' in err.value.hint and "not the others" in err.value.hint


@needs_libbpf
@pytest.mark.kernel
def test_rerun_cell_replaces_program(shell, no_leaks):
    cell = SEED.replace("FLAGS", "BPF_F_CURRENT_CPU")
    shell.run_cell_magic("bpf", "seed -q", cell)
    first = set(shell.user_ns["seed"].prog_ids())
    shell.run_cell_magic("bpf", "seed -q", cell)
    second = set(shell.user_ns["seed"].prog_ids())
    try:
        assert first and second and not first & second
        assert _released(loaded_prog_ids, first)
        assert not _links_of(first) and len(_links_of(second)) == 1
    finally:
        shell.user_ns["seed"].stop()
    assert _released(loaded_prog_ids, second)


def test_missing_clang_is_a_short_error(monkeypatch):
    monkeypatch.setenv("EBPF_MAGIC_CLANG", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BPFError) as err:
        Program(SEED.replace("FLAGS", "0"))
    assert "clang is not installed" in err.value.message
    assert "--backend bcc" in err.value.hint


@needs_libbpf
def test_vmlinux_cache_and_stale_precompiled_header(tmp_path, monkeypatch):
    from ebpf_magic.backend.libbpf import _compile
    from ebpf_magic.internal import cache, settings

    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system")
    monkeypatch.setattr(settings, "cache", False)  # compiled each time
    monkeypatch.setattr(_compile, "SUBSET_TRIES", 0)  # against the whole vmlinux.h
    cell = SEED.replace("FLAGS", "0")
    first = _compile.compile_cell(cell, [])
    d = _compile.vmlinux_dir()
    assert d.parent.parent == tmp_path / "cache"
    assert (d / "vmlinux.h").stat().st_mode & 0o777 == 0o644  # another user's kernel reads it
    [pch] = d.glob("*.pch")
    [header] = d.glob("defaults-*.h")
    later = header.stat().st_mtime + 10
    os.utime(header, (later, later))  # as if libbpf's headers had been updated
    assert _compile.compile_cell(cell, []).obj.startswith(b"\x7fELF")  # compiled without it...
    assert not pch.exists()  # ...and dropped, to be built again
    assert len(_compile.compile_cell(cell, []).obj) == len(first.obj)
    assert pch.exists()


@needs_libbpf
def test_describe_names_what_the_backend_uses(tmp_path, monkeypatch):
    from ebpf_magic.internal import cache

    facts = libbpf.describe()
    assert facts["clang"].split(":")[0].endswith("clang") and "clang version" in facts["clang"]
    assert facts["libbpf"].startswith("libbpf.so.1, version 1.")
    assert facts["kernel BTF"] == "/sys/kernel/btf/vmlinux"
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path)
    assert libbpf.describe()["vmlinux.h"].startswith("not generated yet")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert libbpf.describe()["clang"].startswith("missing")


def test_nothing_outside_the_backend_knows_libbpf():
    import ebpf_magic

    root = Path(ebpf_magic.__file__).parent
    private = re.compile(r"\bbackend\.libbpf\._|\blibbpf\.(?:_\w+)|libbpf\.so|\bbpf_object__|"
                         r"\bbpf_program__|\bbpf_link__")
    found = []
    for path in root.rglob("*.py"):
        if root / "backend" / "libbpf" in path.parents:
            continue
        found += [f"{path.relative_to(root)}: {m.group(0)}"
                  for m in private.finditer(path.read_text())]
    assert not found


USDT_C = r"""
#include <sys/sdt.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) DTRACE_PROBE1(demo, tick, i);
    return 0;
}
"""
USDT_BPF = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 2);
} ticks SEC(".maps");

SEC("usdt")
int BPF_USDT(on_tick, int i)
{
    u32 count = 0, sum = 1;
    u64 *n = bpf_map_lookup_elem(&ticks, &count), *s = bpf_map_lookup_elem(&ticks, &sum);
    if (n && s) {
        __sync_fetch_and_add(n, 1);
        __sync_fetch_and_add(s, i);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_usdt_through_libbpf_counts_exactly(tmp_path, no_leaks):
    import shutil
    import subprocess

    sdt = [p for p in ("/usr/include/sys/sdt.h", "/usr/include/x86_64-linux-gnu/sys/sdt.h",
                       "/usr/include/aarch64-linux-gnu/sys/sdt.h") if os.path.exists(p)]
    if not shutil.which("gcc") or not sdt:
        pytest.fail("gcc and <sys/sdt.h> (systemtap-sdt-dev) are needed; scripts/setup.sh "
                    "installs them")
    (tmp_path / "demo.c").write_text(USDT_C)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "demo"), str(tmp_path / "demo.c")],
                   check=True)
    with Program(USDT_BPF, attach=[f"usdt:{tmp_path / 'demo'}:demo:tick=on_tick"]) as prog:
        assert list(prog.maps) == ["ticks"]  # libbpf's USDT bookkeeping maps stay hidden
        subprocess.run([str(tmp_path / "demo"), "321"], check=True)
        assert prog.maps["ticks"][0] == 321
        assert prog.maps["ticks"][1] == sum(range(321))


XDP_COUNT = """\
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 1);
} frames SEC(".maps");

SEC("xdp")
int count_frames(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    u32 zero = 0;
    u64 *n;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(0x88b5))
        return XDP_PASS;
    n = bpf_map_lookup_elem(&frames, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return XDP_PASS;
}
"""


@needs_libbpf
@pytest.mark.kernel
def test_xdp_counts_frames_on_a_veth(no_leaks):
    import socket
    import struct
    import subprocess

    tag = os.getpid() % 100000
    sender, receiver = f"elb{tag}a", f"elb{tag}b"
    made = subprocess.run(["ip", "link", "add", sender, "type", "veth", "peer", "name",
                           receiver], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot make a veth pair: {made.stderr.strip()}")

    def xdp_attached() -> bool:
        return '"xdp"' in subprocess.run(["ip", "-j", "-d", "link", "show", receiver],
                                         capture_output=True, text=True).stdout

    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", 0x88B5) + bytes(46)
    try:
        for dev in (sender, receiver):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((sender, 0))
            with Program(XDP_COUNT, attach=[f"xdp:{receiver}"]) as prog:
                assert prog.attached == [f"xdp:{receiver}=count_frames"]
                assert xdp_attached()
                for _ in range(20):
                    s.send(frame)
                deadline = time.monotonic() + 2
                while prog.maps["frames"][0] < 20 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert prog.maps["frames"][0] == 20
            assert not xdp_attached()
        with pytest.raises(AttachError, match="unknown XDP mode 'fast'"):
            Program(XDP_COUNT, attach=[f"xdp:{receiver}@fast"])
    finally:
        subprocess.run(["ip", "link", "del", sender], check=False)


@needs_libbpf
@pytest.mark.kernel
def test_undefined_function_is_named(no_leaks):
    cell = 'SEC("tp/syscalls/sys_enter_getppid") int f(void *ctx) { return not_a_helper(1); }'
    with pytest.raises(BPFError) as err:
        Program(cell, cflags=["-Wno-implicit-function-declaration"])
    assert err.value.message.startswith("not_a_helper is used but defined nowhere")


@needs_libbpf
@pytest.mark.kernel
def test_spec_without_function_binds_the_one_without_a_target(no_leaks):
    cell = """\
SEC("tracepoint/syscalls/sys_enter_getppid") int on_getppid(void *ctx) { return 0; }
SEC("perf_event") int on_sample(void *ctx) { return 0; }
"""
    with Program(cell, attach=["software:cpu-clock:1000000"]) as prog:
        assert prog.attached == ["tracepoint:syscalls:sys_enter_getppid=on_getppid",
                                 "software:cpu-clock:1000000=on_sample"]


BCC_TGID = """\
#include <linux/sched.h>
BPF_HASH(tgid, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u64 read = task->tgid;
    tgid.update(&pid, &read);
    return 0;
}
"""


@needs_libbpf
@pytest.mark.kernel
def test_core_right_where_bcc_headers_do_not_match(no_leaks, monkeypatch):
    """What headers that do not match cost: BCC on the distribution's headers alone reads
    task_struct wrong; CO-RE reads it right (BCC cells use BTF types by default here)."""
    from ebpf_magic.backend.bcc import headers

    monkeypatch.setattr(headers, "USE_BTF", False)
    if headers.ensure().exact:
        pytest.skip("kernel headers match this kernel: BCC reads task_struct right here too")
    me = os.getpid()
    with Program(BCC_TGID, defines={"PID": me}) as bcc_prog, \
            Program(CORE, defines={"PARENT": os.getppid()}) as core:
        os.getppid()
        _wait_rows(core.events["events"], 1)
        bcc_read = bcc_prog.maps["tgid"][me]
        df = core.events["events"].df
    assert bcc_read != me  # BCC compiled task_struct's layout from other headers
    mine = df[df["helper_tgid"] == me]
    assert len(mine) == 1 and mine["tgid"].iloc[0] == me
