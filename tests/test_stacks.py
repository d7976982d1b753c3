"""Symbolized stacks from real programs: kernel via kallsyms, user via the backend."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from ebpf_magic.data import stacks
from ebpf_magic.kernel import kallsyms
from ebpf_magic.present import plots
from ebpf_magic.program import Program

SRC = r"""
BPF_STACK_TRACE(traces, 256);
struct key_t { u32 pid; int kernel_stack_id; int user_stack_id; char comm[16]; };
BPF_HASH(counts, struct key_t, u64);

static int record(void *ctx) {
    struct key_t k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    if (k.pid != PID) return 0;
    k.kernel_stack_id = traces.get_stackid(ctx, 0);
    k.user_stack_id = traces.get_stackid(ctx, BPF_F_USER_STACK);
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    counts.increment(k);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return record(args); }
int on_getppid(struct pt_regs *ctx) { return record(ctx); }
"""


@pytest.fixture(scope="module")
def prog():
    with Program(SRC, attach=["uprobe:c:getppid=on_getppid"], defines={"PID": os.getpid()},
                 pid=os.getpid()) as p:
        for _ in range(5):
            os.getppid()
        yield p


@pytest.mark.kernel
def test_kernel_stack_of_the_syscall_is_symbolized(prog):
    df = prog.maps["traces"].df
    kernel = [s for s in df["stack"] if "do_syscall_64" in s]
    assert kernel, df["stack"].tolist()
    assert all(";" in s for s in kernel)


@pytest.mark.kernel
def test_folded_stacks_join_user_and_kernel_frames_with_counts(prog):
    df = stacks.folded(prog.maps["counts"], prog.maps["traces"])
    # the uprobe hit: user leaf is libc's getppid, no kernel stack (stack id < 0)
    uprobe = df[df["stack"].str.contains(r"getppid;\[missing\]$", regex=True)]
    assert uprobe["count"].sum() == 5, df.to_string()
    # the tracepoint hit: the kernel path of the syscall ends the stack
    syscall = df[df["stack"].str.contains("do_syscall_64")]
    assert syscall["count"].sum() == 5, df.to_string()
    comm = open("/proc/self/comm").read().strip()[:15]
    assert all(s.split(";")[0] == comm for s in df["stack"])
    kernel_only = stacks.folded(prog.maps["counts"], prog.maps["traces"], user=False)
    counts = dict(zip(kernel_only["stack"], kernel_only["count"], strict=True))
    assert counts[f"{comm};[missing]"] == 5  # the uprobe hits, user frames left out
    rects = plots.flame_rects(df)
    root = rects[rects["depth"] == 0]
    assert root["width"].sum() == df["count"].sum() == 10


@pytest.mark.kernel
def test_kallsyms_resolves_a_known_symbol():
    addr = None
    with open("/proc/kallsyms") as f:
        for line in f:
            a, t, name = line.split()[:3]
            if name == "do_syscall_64" and t in "tT":
                addr = int(a, 16)
                break
    assert addr
    assert kallsyms.resolve(addr) == "do_syscall_64"
    assert kallsyms.resolve(addr + 3) == "do_syscall_64"
    assert stacks.symbolize([addr + 3]) == ["do_syscall_64"]
    assert "do_syscall_64" in kallsyms.functions()


def test_kallsyms_reads_text_symbols_in_address_order(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("ffffffff81000200 T second\n"
                    "ffffffff81000100 t first\n"
                    "ffffffff81000180 D data_not_code\n"
                    "ffffffff81000300 W weak_one\n"
                    "ffffffff810000f0 t __pfx_first\n"
                    "ffffffffc0000000 t in_module\t[veth]\n")
    ks = kallsyms.Kallsyms(str(path))
    assert ks.functions == ("first", "in_module", "second", "weak_one")
    assert [ks.resolve(a) for a in (0xFFFFFFFF81000100, 0xFFFFFFFF81000190, 0xFFFFFFFF81000250,
                                    0xFFFFFFFFC0000010, 0x1000)] == \
        ["first", "first", "second", "in_module", "0x1000"]


def test_a_bpf_program_loaded_after_the_reading_is_named_by_a_fresh_one(tmp_path, monkeypatch):
    """BPF programs come and go: an address among them is resolved against a reading newer
    than STALE_AFTER (a stale one named a new program after the one below it, and offcputime
    kept the tracing frames it strips by name). Core kernel addresses never cause a read."""
    path = tmp_path / "kallsyms"
    core = "ffffffff81000100 T core_fn\nffffffff81000200 T core_next\n"
    path.write_text(core + "ffffffffc0000000 t bpf_prog_aa_old\t[bpf]\n")
    monkeypatch.setattr(kallsyms, "PATH", str(path))
    monkeypatch.setattr(kallsyms, "_loaded", None)
    assert kallsyms.resolve(0xFFFFFFFFC0000100) == "bpf_prog_aa_old"
    path.write_text(core + "ffffffffc0000000 t bpf_prog_aa_old\t[bpf]\n"
                           "ffffffffc0000080 t bpf_prog_bb_new\t[bpf]\n")
    assert kallsyms.resolve(0xFFFFFFFFC0000100) == "bpf_prog_aa_old"  # within STALE_AFTER
    monkeypatch.setattr(kallsyms, "STALE_AFTER", 0.0)
    first = kallsyms.kallsyms()
    assert kallsyms.resolve(0xFFFFFFFF81000150) == "core_fn" and kallsyms.kallsyms() is first
    assert kallsyms.resolve(0xFFFFFFFFC0000100) == "bpf_prog_bb_new"


def test_kallsyms_without_addresses_lists_names_and_refuses_to_resolve(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("0000000000000000 T do_syscall_64\n0000000000000000 t vfs_read\n")
    ks = kallsyms.Kallsyms(str(path))
    assert ks.functions == ("do_syscall_64", "vfs_read") and not ks.has_addresses
    with pytest.raises(PermissionError, match="shows no addresses .needs CAP_SYSLOG or root"):
        ks.resolve(0xFFFFFFFF81000000)


def test_folded_from_recorded_frames_needs_no_kernel():
    counts = pd.DataFrame({"pid": [1, 1], "kernel_stack_id": [4, -14], "comm": ["app", "app"],
                           "value": [3, 2]})
    recorded = pd.DataFrame({"stack_id": [4], "depth": [2], "stack": ["do_syscall_64;f"]})
    df = stacks.folded(counts, recorded)
    assert df.to_dict("records") == [{"stack": "app;do_syscall_64;f", "count": 3},
                                     {"stack": "app;[missing]", "count": 2}]


def test_folded_of_empty_recorded_frames_is_an_empty_frame():
    empty = {"u4": pd.Series([], dtype="u4"), "i4": pd.Series([], dtype="i4"),
             "u8": pd.Series([], dtype="u8"), "str": pd.Series([], dtype=object)}
    counts = pd.DataFrame({"pid": empty["u4"], "kernel_stack_id": empty["i4"],
                           "comm": empty["str"], "value": empty["u8"]})
    recorded = pd.DataFrame({"stack_id": empty["i4"], "depth": empty["u4"],
                             "stack": empty["str"]})
    df = stacks.folded(counts, recorded)
    assert df.to_dict("records") == [] and list(df.columns) == ["stack", "count"]


@pytest.mark.kernel
def test_folded_of_empty_maps_is_an_empty_frame():
    src = "BPF_STACK_TRACE(traces, 16);\nBPF_HASH(counts, int, u64);\n"
    with Program(src) as p:
        df = stacks.folded(p.maps["counts"], p.maps["traces"])
    assert df.empty and list(df.columns) == ["stack", "count"]


LIBBPF_SAMPLER = r"""
struct key_t { u32 pid; int user_stack_id; };
struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 256);
    __type(key, u32);
    __uint(value_size, 127 * sizeof(u64));
} traces SEC(".maps");
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, struct key_t);
    __type(value, u64);
} counts SEC(".maps");

SEC("perf_event")
int sample(void *ctx)
{
    struct key_t k = {};
    u64 one = 1, *n;
    k.pid = bpf_get_current_pid_tgid() >> 32;
    if (k.pid != PID) return 0;
    k.user_stack_id = bpf_get_stackid(ctx, &traces, BPF_F_USER_STACK);
    n = bpf_map_lookup_elem(&counts, &k);
    if (n) __sync_fetch_and_add(n, 1);
    else bpf_map_update_elem(&counts, &k, &one, BPF_NOEXIST);
    return 0;
}
"""


@pytest.mark.kernel
def test_libbpf_user_stacks_are_symbolized_without_bcc(spinner, monkeypatch, no_leaks):
    import time

    from ebpf_magic.backend import bcc, libbpf

    ok, why = libbpf.available()
    if not ok:
        pytest.skip(f"libbpf backend unavailable: {why}")

    def no_bcc(pid, addrs):
        raise AssertionError("a libbpf program's stacks were symbolized by BCC")

    monkeypatch.setattr(bcc, "symbolize_user", no_bcc)
    me = os.getpid()
    with Program(LIBBPF_SAMPLER, defines={"PID": me}, pid=me,
                 attach=["software:cpu-clock:100000=sample"]) as prog:
        assert prog.backend == "libbpf"
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            spinner(200_000)
        df = stacks.folded(prog.maps["counts"], prog.maps["traces"])
    assert df["count"].sum() > 0
    spun = df[df["stack"].str.endswith("em_spin_outer;em_spin_leaf")]
    # most of the half second is spent in the leaf loop: 10 kHz sampling sees it often
    assert spun["count"].sum() >= 100, df.head(10).to_string()
