"""libbpf-style programs as people write them: variants of one probe, maps sized before load,
current libbpf's macros on the installed 1.1, kfuncs, iterators, tc and socket filters.

Every program here is written for the test in the shape the public libbpf programs
(libbpf-bootstrap, bcc's libbpf-tools) have; each counts a workload the test controls.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from ebpf_magic.backend import libbpf
from ebpf_magic.backend.libbpf import _headers, _mapsizes, _select, _source
from ebpf_magic.errors import AttachError, BPFError, CompileError, ProbeSpecError, VerifierError
from ebpf_magic.kernel import sysbpf
from ebpf_magic.probes import Probe
from ebpf_magic.program import Program

from conftest import bpftool_json, send_test_frames, settle

_OK, _WHY = libbpf.available()
needs_libbpf = pytest.mark.skipif(not _OK, reason=f"libbpf backend unavailable: {_WHY}")
NR_GETPPID = {"x86_64": 110, "aarch64": 173}.get(os.uname().machine, -1)


def _loaded_names(prog: Program) -> list[str]:
    """The names the kernel gives the program's loaded functions (bpftool's view)."""
    ids = set(prog.prog_ids())
    return sorted(p["name"] for p in bpftool_json("prog", "show") if p["id"] in ids)


# -- choosing one variant per event (no kernel needed) -----------------------------------------


def _kernel(missing_events=(), missing_hooks=()) -> _select.Kernel:
    def check(hook: str, section: str, event: str) -> _select.Availability:
        if event in missing_events:
            return _select.Availability(False, f"no {event}", absent=True)
        if hook in missing_hooks:
            return _select.Availability(False, f"no {hook}")
        return _select.Availability(True)

    return _select.Kernel(check)


VARIANTS = {"issue_btf": "tp_btf/block_rq_issue", "issue_raw": "raw_tp/block_rq_issue",
            "issue_tp": "tracepoint/block/block_rq_issue", "open_fentry": "fentry/do_sys_open",
            "open_kprobe": "kprobe/do_sys_open", "open_exit": "fexit/do_sys_open",
            "open_kret": "kretprobe/do_sys_open", "samples": "perf_event"}


def test_one_variant_per_event_in_order_of_preference():
    plan = _select.plan(VARIANTS, _kernel())
    assert plan.load == ["issue_btf", "open_fentry", "open_exit", "samples"]
    assert ("block_rq_issue: the tp_btf variant loaded (issue_btf), not issue_raw (raw_tp), "
            "issue_tp (tracepoint)") in plan.notes
    # where a hook is missing, the next one
    plan = _select.plan(VARIANTS, _kernel(missing_hooks={"tp_btf", "fentry", "fexit"}))
    assert plan.load == ["issue_raw", "open_kprobe", "open_kret", "samples"]
    assert any("raw_tp variant loaded" in n and "tp_btf: no tp_btf" in n for n in plan.notes)


def test_a_refused_variant_gives_way_to_the_next():
    plan = _select.plan(VARIANTS, _kernel())
    excluded = plan.refusing("open_fentry", VARIANTS, "EPERM")
    assert excluded == {("entry", "do_sys_open"): {"fentry": "EPERM"}}
    again = _select.plan(VARIANTS, _kernel(), excluded=excluded)
    assert again.load == ["issue_btf", "open_kprobe", "open_exit", "samples"]
    # the last variant left has nothing to give way to; a program without variants neither
    assert again.refusing("open_kprobe", VARIANTS, "ENOENT") is None
    assert again.refusing("samples", VARIANTS, "x") is None


def test_programs_on_events_this_kernel_lacks_are_left_out_while_others_remain():
    sections = {"enter_sync": "tracepoint/syscalls/sys_enter_sync",
                "enter_arm": "tracepoint/syscalls/sys_enter_arm_sync_file_range"}
    plan = _select.plan(sections, _kernel(missing_events={"sys_enter_arm_sync_file_range"}))
    assert plan.load == ["enter_sync"]
    assert plan.notes == ["enter_arm not loaded: sys_enter_arm_sync_file_range does not exist "
                          "on this kernel (tracepoint: no sys_enter_arm_sync_file_range)"]
    # a cell with nothing else keeps it, so that loading it names what is wrong
    alone = _select.plan({"enter_arm": sections["enter_arm"]},
                         _kernel(missing_events={"sys_enter_arm_sync_file_range"}))
    assert alone.load == ["enter_arm"]


def test_explicit_programs_are_exactly_what_loads():
    plan = _select.plan(VARIANTS, _kernel(), explicit=["issue_raw", "issue_btf"])
    assert plan.load == ["issue_btf", "issue_raw"] and plan.notes == []
    with pytest.raises(BPFError, match="no program 'isue_raw'") as err:
        _select.plan(VARIANTS, _kernel(), explicit=["isue_raw"])
    assert err.value.hint.startswith("Its programs: issue_raw, ")


def test_event_of_reads_the_section_names():
    assert _select.event_of("tracepoint/block/block_rq_issue") == (
        "tracepoint", "block_rq_issue", "tracepoint")
    assert _select.event_of("tp_btf/block_rq_issue") == ("tracepoint", "block_rq_issue", "tp_btf")
    assert _select.event_of("kretprobe/vfs_read") == ("return", "vfs_read", "kretprobe")
    assert _select.event_of("kprobe/vfs_read+0x10") is None  # an offset: no fentry stands for it
    assert _select.event_of("tp/syscalls") is None and _select.event_of("uprobe") is None


# -- map attributes before load (no kernel needed) ---------------------------------------------


def test_map_defaults_and_settings():
    maps = [_mapsizes.MapDecl("stacks", 7, 4, 0, 0), _mapsizes.MapDecl("counts", 1, 4, 8, 0),
            _mapsizes.MapDecl("sized", 1, 4, 8, 64)]
    changes, notes = _mapsizes.sizes(maps, {})
    assert changes == {"stacks": {"value_size": 127 * 8, "max_entries": 10240},
                       "counts": {"max_entries": 10240}}
    assert notes[0] == ("stacks: a stack-trace map without a value size holds 127 frames "
                        "(1016 bytes); --map stacks.value_size=N sets it")
    changes, notes = _mapsizes.sizes(maps, {"stacks": {"value_size": 80, "max_entries": 16}})
    assert changes == {"stacks": {"value_size": 80, "max_entries": 16},
                       "counts": {"max_entries": 10240}}
    assert len(notes) == 1
    with pytest.raises(BPFError, match="no map 'stack'") as err:
        _mapsizes.sizes(maps, {"stack": {"max_entries": 1}})
    assert err.value.hint.startswith("Its maps: stacks")


@pytest.mark.parametrize("bad, message", [
    ({"m": {"size": 1}}, "no attribute 'size' can be set"),
    ({"m": {"max_entries": 0}}, "from 1 to 2\\*\\*32-1, got 0"),
    ({"m": {"value_size": "8"}}, "got '8'"),
    ({"m": {"max_entries": True}}, "got True"),
    ({"m": 4096}, "wants attributes as a dict"),
])
def test_map_settings_are_checked(bad, message):
    with pytest.raises(BPFError, match=message):
        _mapsizes.check(bad)


def test_bcc_refuses_programs_and_maps():
    from ebpf_magic.backend import check_load_options

    with pytest.raises(BPFError, match="the bcc backend cannot set map sizes before load"):
        check_load_options("bcc", None, {"m": {"max_entries": 1}})
    with pytest.raises(BPFError, match="cannot choose which programs to load"):
        check_load_options("bcc", ["f"], None)
    check_load_options("libbpf", ["f"], {"m": {"max_entries": 1}})


# -- attach specs and section readings (no kernel needed) --------------------------------------


def test_tc_socket_and_iter_specs():
    assert Probe.parse("tc:eth0:ingress=f") == Probe("tc", "eth0:ingress", "f")
    assert Probe.parse("tc:eth0").target == "eth0"  # tcx/ingress sections say the direction
    assert Probe.parse("socket:5").target == "5"
    assert Probe.parse("iter:bpf_map_elem:counts=dump").target == "bpf_map_elem:counts"
    with pytest.raises(ProbeSpecError, match="tc:DEVICE:ingress or tc:DEVICE:egress"):
        Probe.parse("tc:eth0:sideways")
    with pytest.raises(ProbeSpecError, match="names a socket's file descriptor"):
        Probe.parse("socket:mysock")


def test_sections_read_as_probes():
    assert _source.section_probe("iter/task", "f") == Probe("iter", "task", "f")
    assert _source.section_probe("iter/bpf_map_elem", "f") is None  # which map: -a says
    assert _source.section_probe("uretprobe/readline", "f") is None  # which binary: -a says
    assert _source.section_probe("uprobe//bin/bash:readline", "f") == Probe(
        "uprobe", "/bin/bash:readline", "f")
    assert _source.tc_direction("tcx/egress") == "egress" and _source.tc_direction("tc") == ""


def test_iterator_record_types_from_the_source():
    src = """
    struct rec { int pid; char comm[16]; };
    SEC("iter/task") int dump(struct bpf_iter__task *ctx) {
        struct rec r = {};
        bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
        return 0;
    }
    SEC("iter/task") int BPF_PROG(text, struct bpf_iter_meta *meta) {
        BPF_SEQ_PRINTF(meta->seq, "%d\\n", 1);
        return 0;
    }
    """
    assert _source.iterator_record(src, "dump") == "struct rec"
    assert _source.iterator_record(src, "text") is None


def test_magic_options_for_programs_and_maps():
    from ebpf_magic.magics import cell

    args = cell.parse("p --programs a,b --map stacks.max_entries=64 --map stacks.value_size=0x50"
                      " --map counts.max_entries=8")
    assert args.programs == ["a", "b"]
    assert cell.map_settings(args.maps) == {"stacks": {"max_entries": 64, "value_size": 80},
                                            "counts": {"max_entries": 8}}
    from IPython.core.error import UsageError

    for bad in ("p --map stacks=64", "p --map stacks.max_entries=x", "p --programs 'a b'"):
        with pytest.raises(UsageError):
            cell.parse(bad)


# -- the kernel: variants count once --------------------------------------------------------

VARIANT_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

const volatile int target = 0;
__u64 calls = 0;

static void count(long id)
{
    if ((bpf_get_current_pid_tgid() >> 32) == target && id == NR_GETPPID)
        __sync_fetch_and_add(&calls, 1);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(enter_btf, struct pt_regs *regs, long id)
{
    count(id);
    return BTF_EXTRA;
}

SEC("raw_tp/sys_enter")
int enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
    count(ctx->args[1]);
    return 0;
}

SEC("tracepoint/raw_syscalls/sys_enter")
int enter_tp(struct trace_event_raw_sys_enter *ctx)
{
    count(ctx->id);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


def _variant_cell(btf_extra: str = "0") -> str:
    return VARIANT_CELL.replace("NR_GETPPID", str(NR_GETPPID)).replace("BTF_EXTRA", btf_extra)


@needs_libbpf
@pytest.mark.kernel
def test_variants_of_one_probe_count_each_call_once(no_leaks):
    n, me = 500, os.getpid()
    with Program(_variant_cell(), globals={"target": me}) as prog:
        assert prog.attached == ["rawtracepoint:sys_enter=enter_btf"]
        assert prog.functions == ["enter_btf"]
        assert _loaded_names(prog) == ["enter_btf"]  # the other variants are not loaded
        assert ("sys_enter: the tp_btf variant loaded (enter_btf), not enter_raw (raw_tp), "
                "enter_tp (tracepoint)") in prog.notes
        for _ in range(n):
            os.getppid()
        assert prog.globals["calls"] == n


@needs_libbpf
@pytest.mark.kernel
def test_a_variant_the_verifier_refuses_gives_way_to_the_next(no_leaks):
    n, me = 300, os.getpid()
    # sys_enter has two arguments: reading a seventh is refused for the typed variant only
    with Program(_variant_cell("(int)ctx[6]"), globals={"target": me}) as prog:
        assert prog.attached == ["rawtracepoint:sys_enter=enter_raw"]
        assert _loaded_names(prog) == ["enter_raw"]
        note = next(n for n in prog.notes if n.startswith("sys_enter:"))
        assert "the raw_tp variant loaded (enter_raw)" in note
        assert "tp_btf: The kernel's verifier rejected enter_btf()" in note
        for _ in range(n):
            os.getppid()
        assert prog.globals["calls"] == n


@needs_libbpf
@pytest.mark.kernel
def test_programs_chosen_explicitly_load_alone(no_leaks, shell, capsys):
    n, me = 200, os.getpid()
    with Program(_variant_cell(), globals={"target": me}, programs=["enter_tp"]) as prog:
        assert prog.attached == ["tracepoint:raw_syscalls:sys_enter=enter_tp"]
        assert _loaded_names(prog) == ["enter_tp"] and prog.notes == []
        for _ in range(n):
            os.getppid()
        assert prog.globals["calls"] == n
    with pytest.raises(BPFError, match="no program 'enter_tpp'") as err:
        Program(_variant_cell(), programs=["enter_tpp"])
    assert "enter_tp" in err.value.hint
    # the same from a cell, whose report says what was loaded
    shell.run_cell_magic("bpf", f"both --programs enter_raw,enter_tp --global target={me}",
                         _variant_cell())
    both = shell.user_ns["both"]
    assert _loaded_names(both) == ["enter_raw", "enter_tp"]
    for _ in range(n):
        os.getppid()
    assert both.globals["calls"] == 2 * n  # both chosen: each counts
    out = capsys.readouterr().out
    assert "attached rawtracepoint:sys_enter=enter_raw, tracepoint:raw_syscalls:sys_enter=" \
           "enter_tp" in out
    both.stop()


@needs_libbpf
@pytest.mark.kernel
def test_cell_reports_the_variant_chosen(no_leaks, shell, capsys):
    shell.run_cell_magic("bpf", f"one --global target={os.getpid()}", _variant_cell())
    out = capsys.readouterr().out
    assert "note: sys_enter: the tp_btf variant loaded (enter_btf), not enter_raw (raw_tp), " \
           "enter_tp (tracepoint)" in out
    assert "one: attached rawtracepoint:sys_enter=enter_btf;" in out
    assert "not attached" not in out
    shell.user_ns["one"].stop()


MISSING_TP = """\
__u64 calls = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) == TARGET)
        __sync_fetch_and_add(&calls, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_no_such_syscall")
int on_other(void *ctx) { return 0; }
"""


@needs_libbpf
@pytest.mark.kernel
def test_a_program_on_a_missing_tracepoint_is_left_out_with_a_note(no_leaks):
    cell = MISSING_TP.replace("TARGET", str(os.getpid()))
    with Program(cell) as prog:
        assert prog.attached == ["tracepoint:syscalls:sys_enter_getppid=on_getppid"]
        assert "on_other not loaded: sys_enter_no_such_syscall does not exist on this kernel " \
               "(tracepoint: no tracepoint syscalls:sys_enter_no_such_syscall)" in prog.notes
        for _ in range(50):
            os.getppid()
        assert prog.globals["calls"] == 50
    alone = cell[cell.index('SEC("tracepoint/syscalls/sys_enter_no'):]
    with pytest.raises(AttachError, match="sys_enter_no_such_syscall"):
        Program(alone)


FENTRY_PAIR = """\
__u64 calls = 0;

SEC("fentry/__x64_sys_getppid")
int BPF_PROG(enter_fentry)
{
    if ((bpf_get_current_pid_tgid() >> 32) == TARGET)
        __sync_fetch_and_add(&calls, 1);
    return 0;
}

SEC("kprobe/__x64_sys_getppid")
int BPF_KPROBE(enter_kprobe)
{
    if ((bpf_get_current_pid_tgid() >> 32) == TARGET)
        __sync_fetch_and_add(&calls, 1);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_getppid")
int on_exit(void *ctx) { return 0; }
"""


def _fentry_works() -> bool:
    try:
        Program('SEC("fentry/__x64_sys_getppid") int BPF_PROG(f) { return 0; }').stop()
    except BPFError:
        return False
    return True


@needs_libbpf
@pytest.mark.kernel
@pytest.mark.kernel_feature
def test_fentry_and_kprobe_variants_count_once_where_the_kernel_has_them(no_leaks):
    from ebpf_magic.kernel import host

    if os.uname().machine != "x86_64":
        pytest.skip("the function hooked is x86_64's __x64_sys_getppid")
    if not _fentry_works() and not host.kprobes_supported():
        pytest.skip("this kernel loads no fentry programs and has no kprobes (CONFIG_KPROBES)")
    with Program(FENTRY_PAIR.replace("TARGET", str(os.getpid()))) as prog:
        assert len([f for f in prog.functions if f.startswith("enter_")]) == 1
        for _ in range(100):
            os.getppid()
        assert prog.globals["calls"] == 100


@needs_libbpf
@pytest.mark.kernel
def test_fentry_refused_and_no_kprobes_names_both_and_the_rest(no_leaks):
    from ebpf_magic.kernel import host

    if os.uname().machine != "x86_64":
        pytest.skip("the function hooked is x86_64's __x64_sys_getppid")
    if _fentry_works() or host.kprobes_supported():
        pytest.skip("this kernel has fentry or kprobes: the variants load (tested above)")
    before = {p["id"] for p in bpftool_json("prog", "show")}
    with pytest.raises(BPFError) as err:
        Program(FENTRY_PAIR.replace("TARGET", str(os.getpid())))
    # fentry was refused at load, so the kprobe variant was tried and cannot attach
    assert err.value.message.startswith(
        'cannot attach SEC("kprobe/__x64_sys_getppid") enter_kprobe')
    assert "without kprobes" in err.value.hint
    assert {p["id"] for p in bpftool_json("prog", "show")} - before == set()
    with pytest.raises(BPFError) as err:
        Program(FENTRY_PAIR.replace("TARGET", "1"), programs=["enter_fentry", "on_exit"])
    assert err.value.message.startswith('This kernel refuses SEC("fentry/__x64_sys_getppid") '
                                        "enter_fentry(): it loads no fentry programs")
    assert err.value.hint.endswith("--programs on_exit.")


# The shape of libbpf-tools' softirqs: clang 14's default (v1) code checks the slot in one
# register and indexes with another, which the verifier refuses; v3 code keeps them one.
CODEGEN = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

const volatile bool targ_dist = false;
const volatile bool targ_ns = false;
const volatile int targ_cpu = -1;

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, u64);
} start SEC(".maps");

__u64 counts[10] = {};
__u64 total[10] = {};

static bool is_target_cpu() {
    if (targ_cpu < 0)
        return true;
    return bpf_get_smp_processor_id() == targ_cpu;
}

static int handle(unsigned int slot)
{
    if (!is_target_cpu())
        return 0;
    u64 delta, *tsp;
    u32 key = 0;
    if (slot >= 10)
        return 0;
    tsp = bpf_map_lookup_elem(&start, &key);
    if (!tsp)
        return 0;
    delta = bpf_ktime_get_ns() - *tsp;
    if (!targ_ns)
        delta /= 1000U;
    if (!targ_dist) {
        __sync_fetch_and_add(&counts[slot], 1);
        __sync_fetch_and_add(&total[slot], delta);
    }
    return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long id)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    return handle(id - (NR_GETPPID - 5));  /* getppid counts in slot 5 */
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_code_the_verifier_refuses_is_compiled_again_as_v3(no_leaks):
    cell = CODEGEN.replace("TARGET", str(os.getpid())).replace("NR_GETPPID", str(NR_GETPPID))
    with Program(cell) as prog:
        for _ in range(40):
            os.getppid()
        assert prog.globals["counts"][5] == 40
        retried = [n for n in prog.notes if "-mcpu=v3" in n]
    if retried:  # this clang's default code was refused: the cell's own choice is kept
        assert retried == ["compiled with -mcpu=v3: the verifier refused on_enter() as "
                           "clang's default code generation wrote it"]
        with pytest.raises(VerifierError, match="rejected on_enter"):
            Program(cell, cflags=["-mcpu=v1"])
    else:
        Program(cell, cflags=["-mcpu=v1"]).stop()


# -- maps sized before load ------------------------------------------------------------------

STACKS = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __type(key, u32);
} stacks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u64);
} seen SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    long id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
    if (id >= 0) {
        u32 key = id;
        u64 one = 1, *n = bpf_map_lookup_elem(&seen, &key);
        if (n)
            __sync_fetch_and_add(n, 1);
        else
            bpf_map_update_elem(&seen, &key, &one, BPF_NOEXIST);
    }
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_a_stack_map_without_value_size_gets_127_frames(no_leaks):
    cell = STACKS.replace("TARGET", str(os.getpid()))
    with Program(cell) as prog:
        assert [n for n in prog.notes if n.startswith("stacks:")] == [
            "stacks: a stack-trace map without a value size holds 127 frames (1016 bytes); "
            "--map stacks.value_size=N sets it",
            "stacks: no max_entries declared, 10240 assumed; --map stacks.max_entries=N sets it"]
        info = sysbpf.map_info(prog.maps["stacks"].handle.fd)
        assert (info.value_size, info.max_entries) == (1016, 10240)
        for _ in range(20):
            os.getppid()
        assert sum(int(v) for v in prog.maps["seen"].values()) == 20
    with Program(cell, maps={"stacks": {"value_size": 64 * 8, "max_entries": 128},
                             "seen": {"max_entries": 16}}) as prog:
        info = sysbpf.map_info(prog.maps["stacks"].handle.fd)
        assert (info.value_size, info.max_entries) == (512, 128)
        assert sysbpf.map_info(prog.maps["seen"].handle.fd).max_entries == 16
        assert not [n for n in prog.notes if "stacks" in n or "seen" in n]
    with pytest.raises(BPFError, match="no map 'stack'"):
        Program(cell, maps={"stack": {"max_entries": 1}})


@needs_libbpf
@pytest.mark.kernel
def test_map_option_in_a_cell(no_leaks, shell):
    shell.run_cell_magic("bpf", "st -q --map stacks.max_entries=64 --map seen.max_entries=8",
                         STACKS.replace("TARGET", "1"))
    st = shell.user_ns["st"]
    assert sysbpf.map_info(st.maps["stacks"].handle.fd).max_entries == 64
    assert sysbpf.map_info(st.maps["seen"].handle.fd).max_entries == 8
    st.stop()


# -- current libbpf's macros on the installed one --------------------------------------------

UPROBE_TARGET = r"""
#include <stdlib.h>
__attribute__((noinline)) int work(int a, int b) { asm volatile(""); return a * 2 + b; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]), total = 0;
    for (int i = 0; i < n; i++) total += work(i, 3);
    return total == -1;
}
"""

UPROBE_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

__u64 calls = 0, args = 0, rets = 0;

SEC("uprobe")
int BPF_UPROBE(on_work, int a, int b)
{
    __sync_fetch_and_add(&calls, 1);
    __sync_fetch_and_add(&args, a + b);
    return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(on_return, int ret)
{
    __sync_fetch_and_add(&rets, ret);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture
def uprobe_target(tmp_path: Path) -> Path:
    (tmp_path / "work.c").write_text(UPROBE_TARGET)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "work"), str(tmp_path / "work.c")],
                   check=True)
    return tmp_path / "work"


@needs_libbpf
@pytest.mark.kernel
def test_bpf_uprobe_and_uretprobe_on_a_built_binary(no_leaks, uprobe_target):
    n = 250
    with Program(UPROBE_CELL, attach=[f"uprobe:{uprobe_target}:work=on_work",
                                      f"uretprobe:{uprobe_target}:work=on_return"]) as prog:
        subprocess.run([str(uprobe_target), str(n)], check=True)
        assert prog.globals["calls"] == n
        assert prog.globals["args"] == sum(i + 3 for i in range(n))
        assert prog.globals["rets"] == sum(i * 2 + 3 for i in range(n))


@needs_libbpf
@pytest.mark.kernel
def test_a_missing_macro_is_named_not_called_a_vmlinux_clash(no_leaks, tmp_path, monkeypatch):
    # Without the headers that supply current libbpf's macros (as before they existed),
    # BPF_UPROBE(on_work, ...) declares a function called BPF_UPROBE; the hint said
    # "vmlinux.h already defines 'BPF_UPROBE'; rename yours", which was wrong.
    twice = UPROBE_CELL.replace("BPF_URETPROBE(on_return, int ret)", "BPF_UPROBE(on_return)")
    monkeypatch.setattr(_headers, "INCLUDE_DIR", tmp_path)
    with pytest.raises(CompileError) as err:
        Program(twice)
    assert "vmlinux.h" not in err.value.hint and "rename" not in err.value.hint
    assert err.value.hint.startswith("BPF_UPROBE is a macro of newer libbpf releases; the "
                                     "installed libbpf's headers (libbpf ")
    with pytest.raises(CompileError) as err:
        Program('SEC("uprobe") int MY_PROBE(a, int x) { return 0; }\n'
                'SEC("uprobe") int MY_PROBE(b) { return 0; }\n')
    assert err.value.hint.startswith("Nothing defines MY_PROBE, which the cell uses like a macro")
    # a name defined twice in the cell is said to be, not blamed on vmlinux.h
    with pytest.raises(CompileError) as err:
        Program('int f(void) { return 0; }\nint f(void) { return 1; }\n'
                'SEC("tp/syscalls/sys_enter_getppid") int g(void *c) { return f(); }')
    assert err.value.hint == "'f' is defined twice in the cell; remove or rename one."


OPEN_CODED = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

__u64 sum = 0, reps = 0, vals = 0;
int tgid = 0;

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long id)
{
    int i, *v;
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET || id != NR_GETPPID)
        return 0;
    bpf_for(i, 0, 10)
        sum += i;
    bpf_repeat(3)
        reps++;
    bpf_for_each(num, v, 5, 8)
        vals += *v;
    tgid = bpf_core_cast(bpf_get_current_task_btf(), struct task_struct)->tgid;
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_open_coded_iterators_and_core_cast_of_current_libbpf(no_leaks):
    cell = OPEN_CODED.replace("TARGET", str(os.getpid())).replace("NR_GETPPID", str(NR_GETPPID))
    with Program(cell) as prog:
        os.getppid()
        got = {k: prog.globals[k] for k in ("sum", "reps", "vals", "tgid")}
    assert got == {"sum": sum(range(10)), "reps": 3, "vals": 5 + 6 + 7, "tgid": os.getpid()}


KSYM_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

extern void bpf_no_such_kfunc_here(void) __ksym __weak;

int has_known = -1, has_missing = -1;

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    has_known = bpf_ksym_exists(bpf_task_from_pid);
    has_missing = bpf_ksym_exists(bpf_no_such_kfunc_here);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_bpf_ksym_exists_on_a_kfunc_the_kernel_has_and_one_it_lacks(no_leaks):
    from ebpf_magic.kernel import btf

    declared = _headers.kfuncs(btf.vmlinux())
    assert declared["bpf_task_from_pid"] == "struct task_struct *bpf_task_from_pid(s32 pid)"
    assert "bpf_no_such_kfunc_here" not in declared
    with Program(KSYM_CELL.replace("TARGET", str(os.getpid()))) as prog:
        os.getppid()
        assert (prog.globals["has_known"], prog.globals["has_missing"]) == (1, 0)


@needs_libbpf
@pytest.mark.kernel
def test_a_kfunc_declared_another_way_compiles_without_the_prototypes(no_leaks):
    cell = KSYM_CELL.replace("extern void bpf_no", "extern struct task_struct *"
                             "bpf_task_from_pid(unsigned int pid) "
                             "__ksym __weak;\nextern void bpf_no")
    with Program(cell.replace("TARGET", str(os.getpid()))) as prog:
        assert ("the cell declares kfunc bpf_task_from_pid() unlike this kernel's BTF does, so "
                "vmlinux.h's kfunc prototypes were left out (BPF_NO_KFUNC_PROTOTYPES)"
                in prog.notes)
        os.getppid()
        assert prog.globals["has_known"] == 1


# -- iterators as DataFrames ----------------------------------------------------------------

TASK_ITER = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct task_row {
    int pid;
    int tid;
    int ppid;
    char comm[16];
};

SEC("iter/task")
int tasks(struct bpf_iter__task *ctx)
{
    struct task_struct *task = ctx->task;
    struct task_row row = {};
    if (!task)
        return 0;
    row.pid = task->tgid;
    row.tid = task->pid;
    row.ppid = BPF_CORE_READ(task, real_parent, tgid);
    bpf_probe_read_kernel_str(row.comm, sizeof(row.comm), task->comm);
    bpf_seq_write(ctx->meta->seq, &row, sizeof(row));
    return 0;
}

SEC("iter/task")
int task_lines(struct bpf_iter__task *ctx)
{
    struct task_struct *task = ctx->task;
    if (!task || task->pid != task->tgid)
        return 0;
    BPF_SEQ_PRINTF(ctx->meta->seq, "%d %s\\n", task->tgid, task->comm);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""


def _proc_stat(pid: int) -> tuple[str, int]:
    """``(comm, ppid)`` of ``pid`` as /proc says."""
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2:].split()[1])


@needs_libbpf
@pytest.mark.kernel
def test_a_task_iterator_lists_the_processes_the_test_starts(no_leaks, shell, capsys):
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        shell.run_cell_magic("bpf", "it", TASK_ITER)
        it = shell.user_ns["it"]
        out = capsys.readouterr().out
        assert "iterators: tasks, task_lines" in out
        assert it.attached == ["iter:task=tasks", "iter:task=task_lines"]
        from IPython.core.completer import provisionalcompleter

        with provisionalcompleter():
            offered = shell.Completer.completions('it.iter["task_', len('it.iter["task_'))
            assert [c.text for c in offered] == ["task_lines"]
        df = it.iter["tasks"].df
        assert list(df.columns) == ["pid", "tid", "ppid", "comm"]
        rows = df[df.pid.isin([c.pid for c in children])]
        assert sorted(rows.pid) == sorted(c.pid for c in children)
        for row in rows.itertuples():
            assert (row.comm, row.ppid) == _proc_stat(row.pid) == ("sleep", os.getpid())
            assert row.tid == row.pid
        # every thread of this process, as /proc lists them
        mine = df[df.pid == os.getpid()]
        assert sorted(mine.tid) == sorted(int(t) for t in os.listdir("/proc/self/task"))
        lines = it.iter["task_lines"].df
        assert list(lines.columns) == ["line"]
        for c in children:
            assert f"{c.pid} sleep" in set(lines.line)
        # each read is a fresh walk: a process that exits is gone from the next one
        children[0].kill()
        children[0].wait()
        assert children[0].pid not in set(it.iter["tasks"].df.pid)
        with pytest.raises(BPFError, match="writes text, not records"):
            it.iter["task_lines"].records()
        ids = set(it.prog_ids())
        assert len([ln for ln in bpftool_json("link", "show") if ln.get("prog_id") in ids]) == 2
        it.stop()
        with pytest.raises(BPFError, match="stopped"):
            it.iter["tasks"].read()
        assert not [ln for ln in bpftool_json("link", "show") if ln.get("prog_id") in ids]
    finally:
        for c in children:
            c.kill()
            c.wait()


# -- tc and socket filters ------------------------------------------------------------------

TC_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

__u64 frames = 0;

SEC("SECTION")
int count_frames(struct __sk_buff *skb)
{
    if (skb->protocol == bpf_htons(0x88b5))
        __sync_fetch_and_add(&frames, 1);
    return 0; /* TC_ACT_OK */
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
@pytest.mark.parametrize("section, spec", [("tc", "tc:{dev}:ingress"),
                                           ("tcx/ingress", "tc:{dev}")])
def test_tc_counts_frames_sent_over_a_veth(no_leaks, veth, section, spec):
    sender, receiver = veth
    cell = TC_CELL.replace("SECTION", section)
    with Program(cell, attach=[spec.format(dev=receiver)]) as prog:
        assert prog.attached == [f"{spec.format(dev=receiver)}=count_frames"]
        send_test_frames(sender, 30)
        assert settle(lambda: prog.globals["frames"], 30) == 30
        ids = set(prog.prog_ids())
        assert [ln for ln in bpftool_json("link", "show") if ln.get("prog_id") in ids]
    assert not [ln for ln in bpftool_json("link", "show") if ln.get("prog_id") in ids]
    with pytest.raises(AttachError, match="say which direction"):
        Program(TC_CELL.replace("SECTION", "tc"), attach=[f"tc:{receiver}"])


SOCKET_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

__u64 seen = 0, dropped = 0;

SEC("socket")
int drop_x(struct __sk_buff *skb)
{
    char first = 0;
    __sync_fetch_and_add(&seen, 1);
    bpf_skb_load_bytes(skb, 0, &first, 1);
    if (first == 'x') {
        __sync_fetch_and_add(&dropped, 1);
        return 0;
    }
    return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
"""


@needs_libbpf
@pytest.mark.kernel
def test_a_socket_filter_on_a_socket_pair(no_leaks, shell):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        shell.user_ns["fd"] = b.fileno()
        shell.run_cell_magic("bpf", "sf -q -a socket:$fd", SOCKET_CELL)
        sf = shell.user_ns["sf"]
        assert sf.attached == [f"socket:{b.fileno()}=drop_x"]
        messages = [b"keep%d" % i if i % 3 else b"x%d" % i for i in range(12)]
        for m in messages:
            a.send(m)
        received = []
        while True:
            try:
                received.append(b.recv(64))
            except BlockingIOError:
                break
        assert received == [m for m in messages if not m.startswith(b"x")]
        assert (sf.globals["seen"], sf.globals["dropped"]) == (12, 4)
        sf.stop()
        a.send(b"x-after")  # detached: nothing drops it
        assert b.recv(64) == b"x-after"
    with pytest.raises(AttachError, match="is not a socket"):
        r, w = os.pipe()
        try:
            Program(SOCKET_CELL, attach=[f"socket:{r}"])
        finally:
            os.close(r)
            os.close(w)


@needs_libbpf
@pytest.mark.kernel
def test_kfunc_prototypes_in_vmlinux_h(no_leaks):
    from ebpf_magic.backend.libbpf import _compile

    header = _compile.vmlinux_dir() / "vmlinux.h"
    declared = _headers.declared_kfuncs(header)
    assert {"bpf_task_from_pid", "bpf_iter_num_new", "bpf_rdonly_cast"} <= declared
    text = header.read_text()
    assert text.rstrip().endswith("#endif /* __VMLINUX_H__ */")  # inside its include guard
    assert text.index("bpf_task_from_pid(s32 pid) __attribute__((weak))") > text.index(
        "struct task_struct {")


CONFINED = r"""
import json, os, socket, sys
from ebpf_magic.setup import launcher
launcher.become(launcher.account(), launcher.wanted())
from ebpf_magic.program import Program
iter_cell, socket_cell, children = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with Program(iter_cell) as it:
    df = it.iter["tasks"].df
    found = sorted(int(p) for p in df.pid if int(p) in children)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
with Program(socket_cell, attach=[f"socket:{b.fileno()}"]) as sf:
    a.send(b"x-drop")
    a.send(b"keep")
    kept = b.recv(64).decode()
    counts = [sf.globals["seen"], sf.globals["dropped"]]
print(json.dumps({"uid": os.getuid(), "found": found, "kept": kept, "counts": counts}))
"""


@needs_libbpf
@pytest.mark.kernel
def test_iterators_and_socket_filters_in_the_confined_kernel(no_leaks):
    """The kernel's account (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN...) runs them too."""
    import json
    import sys

    from ebpf_magic.setup import launcher

    if os.geteuid() != 0:
        pytest.skip(f"only root changes to the kernel's account; this is uid {os.geteuid()}")
    try:
        account = launcher.account()
    except launcher.LaunchError as e:
        pytest.fail(str(e))
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        env = {"PATH": os.environ["PATH"], "HOME": account.pw_dir,
               "XDG_CACHE_HOME": f"{account.pw_dir}/.cache"}
        done = subprocess.run(
            [sys.executable, "-I", "-c", CONFINED, TASK_ITER, SOCKET_CELL,
             json.dumps([c.pid for c in children])],
            capture_output=True, text=True, timeout=120, env=env, cwd="/")
    finally:
        for c in children:
            c.kill()
            c.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got == {"uid": account.pw_uid, "found": sorted(c.pid for c in children),
                   "kept": "keep", "counts": [2, 1]}
