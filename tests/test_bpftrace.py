"""bpftrace programs: typed frames from workloads the tests run, and nothing left behind.

Every count is checked against calls the test made: ``lseek(MAGIC_FD, offset, whence)``
from processes it starts (one named ``a,b c``, whose comm holds the separator bpftrace
joins key parts with), so the program's filter ``args->fd == MAGIC_FD`` sees those calls
and no others. bpftrace itself is checked against its own command line on the same calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_api import conforms, conforms_all
from test_kernelspec import execute
from test_privileges import (  # spec_dir: the fixture installing the test kernel
    NAME,
    _account,
    bpf_mask,
    running_kernel,
    spec_dir,  # noqa: F401
    status_of,
)

import ebpf_magic
from ebpf_magic.api import StreamView
from ebpf_magic.bpftrace import (
    BpftraceProgram,
    diagnose,
    maps,
    output,
    process,
    semantics,
    shim,
    source,
)
from ebpf_magic.bpftrace.maps import Context, decode
from ebpf_magic.data import histograms
from ebpf_magic.errors import BPFError, CompileError
from ebpf_magic.kernel import host as kernel
from ebpf_magic.program import running

from conftest import leaked_programs, loaded_prog_ids, own_processes, uprobe_events

MAGIC_FD = 987_654  # no process has it open: lseek() on it fails, after its tracepoint fired
ODD = "a,b c"  # a comm holding bpftrace's key separator and a space
LSEEK = f"tracepoint:syscalls:sys_enter_lseek /args->fd == {MAGIC_FD}/"
WORKER = textwrap.dedent("""
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, ctypes.c_char_p(sys.argv[1].encode()), 0, 0, 0)
    calls = json.loads(sys.argv[2])
    if isinstance(calls, dict):  # {"n": N, "whence": W}: offsets 0..N-1
        calls = [(i, calls["whence"]) for i in range(calls["n"])]
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    cpus = sorted(os.sched_getaffinity(0)) if len(sys.argv) > 4 else [None]
    import time
    for cpu in cpus:  # with a fourth argument, the calls again on each CPU in turn
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        for offset, whence in calls:
            libc.lseek(ctypes.c_int(MAGIC_FD), ctypes.c_long(offset), ctypes.c_int(whence))
            if pause:
                time.sleep(pause)
""").replace("MAGIC_FD", str(MAGIC_FD))

needs_bpftrace = pytest.mark.skipif(process.version() is None,
                                    reason="bpftrace is not installed (scripts/setup.sh "
                                           "installs it)")


def start_work(name: str, calls: list[tuple[int, int]] | dict[str, int], pause: float = 0.0,
               every_cpu: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, name, json.dumps(calls), str(pause),
                             *(["every-cpu"] if every_cpu else [])])


def run_work(name: str, calls: list[tuple[int, int]] | dict[str, int], pause: float = 0.0,
             every_cpu: bool = False) -> int:
    """Run a process named ``name`` making ``calls`` to its end (on each CPU in turn with
    ``every_cpu``); return its pid."""
    proc = start_work(name, calls, pause, every_cpu)
    assert proc.wait(60) == 0
    return proc.pid


def ours() -> set[int]:
    """bpftrace processes running these tests' programs (their programs name MAGIC_FD), and
    any other process still a child of this one but the compile worker."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            comm = (proc / "comm").read_text().strip()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if comm == "bpftrace" and str(MAGIC_FD).encode() in cmdline:
            found.add(int(proc.name))
    kids = own_processes() - {os.getpid()}
    return found | {pid for pid in kids if _comm(pid) not in ("python", "python3")}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def settle(check, timeout: float = 10.0):
    """``check()`` once it is true, or its last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def rows(stream, n: int, timeout: float = 10.0) -> pd.DataFrame:
    """The stream's frame once it holds ``n`` rows (or what it holds after ``timeout``)."""
    settle(lambda: len(stream) >= n, timeout)
    return stream.df


def left_behind(before: set[int]) -> dict[str, object]:
    """What a stopped program could have left: processes, programs (loaded since ``before``
    and held by this process, its children or nobody: other processes' are theirs),
    tracefs entries."""
    return {"processes": settle(lambda: not ours()) or ours(),
            "programs": settle(lambda: not leaked_programs(before, own_processes() | ours()))
            or leaked_programs(before, own_processes() | ours()),
            "uprobes": [e for e in uprobe_events() if "_bcc_" in e]}


CLEAN = {"processes": True, "programs": True, "uprobes": []}


# -- pure units: the dry run's tree, program text, output lines, map bytes ---------------

DRY_RUN = r"""
AST after: parser
-------------------
Program
 BEGIN

AST after: Semantic
-------------------
Program
 tracepoint:syscalls:sys_enter_lseek
  pred
   == :: type[unsigned int64, ctx: 0]
    .
     dereference
      builtin: args :: type[(ctx) struct _tracepoint_syscalls_sys_enter_lseek *, ctx: 1, AS(user)]
     fd
    int: 987654 :: type[int64, ctx: 0]
  =
   map: @ :: type[count, ctx: 0]
    builtin: comm :: type[string[16], ctx: 0, AS(kernel)]
    builtin: pid :: type[unsigned int64, ctx: 0]
   call: count :: type[count, ctx: 0]
  =
   map: @l :: type[lhist, ctx: 0]
    (int64)
     (int8)
      int: -1 :: type[int64, ctx: 0]
   call: lhist :: type[lhist, ctx: 0]
    .
     dereference
      builtin: args :: type[(ctx) struct _tracepoint_syscalls_sys_enter_lseek *, ctx: 1, AS(user)]
     offset
    int: 0 :: type[int64, ctx: 0]
    int: 1000 :: type[int64, ctx: 0]
    int: 100 :: type[int64, ctx: 0]
  map: @n :: type[int64, ctx: 0]
   ++
  call: printf :: type[none, ctx: 0]
   string: %s %d\n :: type[string[7], ctx: 0]
   builtin: comm :: type[string[16], ctx: 0, AS(kernel)]
   (int32)
    builtin: pid :: type[unsigned int64, ctx: 0]
 tracepoint:syscalls:sys_enter_get*id
  =
   map: @p :: type[count, ctx: 0]
    builtin: probe :: type[probe, ctx: 0]
    call: kstack :: type[kstack, ctx: 0]
     int: 5 :: type[int64, ctx: 0]
   call: count :: type[count, ctx: 0]
 interval:s:1
  call: print :: type[none, ctx: 0]
   map: @ :: type[count, ctx: 0]
  call: time :: type[none, ctx: 0]
   string: %H :: type[string[3], ctx: 0, AS(kernel)]

AST after: NodeCounter
-------------------
Program
 BEGIN

define i64 @"tracepoint:syscalls:sys_enter_lseek"(i8* %0) section "s_a_1" {
define i64 @"tracepoint:syscalls:sys_enter_getegid"(i8* %0) section "s_b_1" {
define i64 @"tracepoint:syscalls:sys_enter_geteuid"(i8* %0) section "s_b_2" {
define i64 @"interval:s:1"(i8* %0) section "s_c_1" {
"""


def test_the_dry_runs_tree_names_and_types_every_key_and_argument():
    sem = semantics.parse(DRY_RUN)
    assert sem.probes == [["tracepoint:syscalls:sys_enter_lseek"],
                          ["tracepoint:syscalls:sys_enter_get*id"], ["interval:s:1"]]
    anon = sem.maps["@"]
    assert (anon.value, anon.printed) == ("count", True)
    assert [(k.name, k.type) for k in anon.keys] == [("comm", "string[16]"),
                                                    ("pid", "unsigned int64")]
    assert sem.maps["@l"].lhist == (0, 1000, 100)
    assert [(k.name, k.type) for k in sem.maps["@l"].keys] == [("key0", "int64")]
    assert sem.maps["@n"].value == "int64" and sem.maps["@n"].keys == []  # "++" is no key
    p = sem.maps["@p"]
    assert [(k.name, k.type, k.limit) for k in p.keys] == [("probe", "probe", 127),
                                                          ("kstack", "kstack", 5)]
    [printf] = sem.printfs
    assert printf.format == "%s %d\n"
    assert [(a.name, a.type) for a in printf.args] == [("comm", "string[16]"), ("pid", "int32")]
    assert sem.outputs == {"time"}
    # ids of the probe builtin: the functions of the probes that use it, in code order
    assert sem.probe_ids == ["tracepoint:syscalls:sys_enter_getegid",
                             "tracepoint:syscalls:sys_enter_geteuid"]


def test_printf_formats_are_marked_and_split_back_exactly():
    text = ('// printf("not this")\nBEGIN { printf("%-8s|%5d %x\\n", comm, pid, 255); }\n'
            'uprobe:libc:printf { printf("100%% \\"q\\"\\n"); /* printf("nor") */ }')
    marked, formats = source.mark_printfs(text)
    assert formats == ["%-8s|%5d %x\n", '100%% "q"\n']
    assert 'printf("not this")' in marked and 'printf("nor")' in marked
    pieces = source.conversions(formats[0])
    head = source.head(source.RS + "0" + source.RS + source.US + "a,b c   " + source.US + "|" +
                       source.US + "   42" + source.US + " " + source.US + "ff" + source.US +
                       "\n")
    assert head is not None and head[0] == 0
    assert source.split_marked(head[1], pieces) == ("a,b c   |   42 ff\n",
                                                    ["a,b c   ", "   42", "ff"])
    # a value holding a mark cannot split: the text is kept, the values are not
    assert source.split_marked("x" + source.US + "y", pieces)[1] is None
    assert source.replace_word('BEGIN { @[cpid] = count(); printf("cpid"); }', "cpid",
                               "42") == 'BEGIN { @[42] = count(); printf("cpid"); }'


def test_bpftraces_errors_become_cell_lines_and_columns():
    err = ("stdin:2:13-16: ERROR: Unknown function: foo\n  @x = foo();\n      ~~~\n"
           "stdin:3:1-4: WARNING: unused\n")
    [first, second] = source.diagnostics(err, line_offset=1)
    assert (first.line, first.column, first.level, first.message) == \
        (3, 13, "ERROR", "Unknown function: foo")
    assert first.excerpt == ["  @x = foo();", "      ~~~"]
    assert (second.line, second.level) == (4, "WARNING")


def test_printf_rows_are_typed_by_conversion_and_named_by_argument():
    printfs = [semantics.Printf("%s %d %u %x %c\n",
                                [semantics.Part("comm", "string[16]"),
                                 semantics.Part("pid", "int64"), semantics.Part("x", None),
                                 semantics.Part(None, "int64"), semantics.Part("c", None)]),
               semantics.Printf("done %d\n", [semantics.Part("pid", "int64")])]
    schema = output.printf_schema([p.format for p in printfs], printfs)
    first = source.mark(printfs[0].format, 0).replace("%s", ODD).replace("%d", "-7") \
        .replace("%u", "18446744073709551615").replace("%x", "ff").replace("%c", "Z")
    second = source.mark(printfs[1].format, 1).replace("%d", "3")
    rows = np.concatenate([schema.encode(first, 1), schema.encode(second, 2)])
    from ebpf_magic.data import eventframe

    df = schema.finish(eventframe.frame(rows))
    assert list(df.columns) == ["time", "printf", "text", "comm", "pid", "x", "arg3", "c"]
    assert df["text"].tolist() == [f"{ODD} -7 18446744073709551615 ff Z", "done 3"]
    assert df["printf"].tolist() == [0, 1]
    assert df.loc[0, "comm"] == ODD and df["pid"].tolist() == [-7, 3]
    assert df.loc[0, "x"] == 2**64 - 1 and df.loc[0, "arg3"] == 255
    assert df["x"].isna().tolist() == [False, True]  # the second call has no x


def test_a_printed_maps_keys_split_by_type_even_with_commas():
    info = semantics.MapInfo("@", "count", [semantics.Part("comm", "string[16]"),
                                            semantics.Part("pid", "unsigned int64")])
    series = output.MapSeries(info)
    line = json.dumps({"type": "map", "data": {"@": {f"{ODD},4242": 7, "x,1": 2}}})
    df = _series_frame(series, line)
    assert df[["comm", "pid", "count"]].values.tolist() == [[ODD, 4242, 7], ["x", 1, 2]]
    assert series.ambiguous == 0


def test_two_text_parts_with_commas_are_counted_as_ambiguous():
    info = semantics.MapInfo("@", "count", [semantics.Part("a", "string[16]"),
                                            semantics.Part("b", "string[64]")])
    series = output.MapSeries(info)
    df = _series_frame(series, json.dumps({"type": "map", "data": {"@": {"x,y,z": 1,
                                                                          "p,q": 2}}}))
    assert df[["a", "b"]].values.tolist() == [["x,y", "z"], ["p", "q"]]
    assert series.ambiguous == 1


def test_a_printed_histogram_gives_buckets_from_bpftraces_bounds():
    info = semantics.MapInfo("@h", "hist", [])
    buckets = [{"max": -1, "count": 2}, {"min": 0, "max": 0, "count": 1},
               {"min": 1, "max": 1, "count": 0}, {"min": 2, "max": 3, "count": 4}]
    df = _series_frame(output.MapSeries(info),
                       json.dumps({"type": "hist", "data": {"@h": buckets}}))
    assert df[["low", "high", "count"]].values.tolist() == [
        [histograms.OPEN_LOW, 0, 2], [0, 1, 1], [1, 2, 0], [2, 4, 4]]
    lhist = semantics.MapInfo("@l", "lhist", [], lhist=(0, 1000, 100))
    df = _series_frame(output.MapSeries(lhist), json.dumps(
        {"type": "hist", "data": {"@l": [{"min": 900, "max": 999, "count": 1},
                                         {"min": 1000, "count": 3}]}}))
    assert df[["low", "high", "count"]].values.tolist() == [[900, 1000, 1],
                                                            [1000, histograms.OPEN_HIGH, 3]]


def _series_frame(series: output.MapSeries, line: str) -> pd.DataFrame:
    from ebpf_magic.data import eventframe

    out = output.Output(semantics.Semantics([], {series.info.name: series.info}, [], set(),
                                            []), [])
    out.series[series.info.name] = series
    channel = out.channels[series.info.name] = output.Channel(series.dtype, lambda: 0)
    out.take(line.encode())
    [(_, blocks)] = list(channel.read(1 << 20))
    channel.close()
    records = np.concatenate(blocks).view(series.dtype).reshape(-1)
    return series.finish(eventframe.frame(records))


def test_a_map_not_read_live_reads_as_its_last_print():
    """A map whose kernel map could not be taken (bpftrace ended first) is what it printed."""
    info = semantics.MapInfo("@", "count", [semantics.Part("comm", "string[16]"),
                                            semantics.Part("pid", "unsigned int64")])
    out = output.Output(semantics.Semantics([], {"@": info}, [], set(), []), [])
    m = maps.BpftraceMap(info, None, "bpftrace ended before its maps could be read",
                         Context({}, []), contextlib.nullcontext, lambda: out.printed("@"))
    with pytest.raises(BPFError, match="ended before"):
        _ = m.df
    out.take(json.dumps({"type": "map", "data": {"@": {f"{ODD},7": 3}}}).encode())
    assert m.df.values.tolist() == [[ODD, 7, 3]] and len(m) == 0


def test_map_bytes_decode_as_bpftrace_totals_them():
    """Per-CPU values summed (count), inverted (min), paired (stats), bucketed (hist)."""
    ctx = Context({}, [])
    comm = semantics.Part("comm", "string[16]")
    count = semantics.MapInfo("@", "count", [comm])
    keys = np.array([(ODD.encode(),)], [("k0", "S16")])
    df = decode(count, keys, np.array([[3, 4]], np.uint64), ctx)
    assert df.values.tolist() == [[ODD, 7]]
    minimum = semantics.MapInfo("@m", "min", [comm])
    df = decode(minimum, keys, np.array([[0xFFFFFFFF - 5, 0xFFFFFFFF - 9]], np.uint64), ctx)
    assert df["min"].tolist() == [5]  # the smallest of 5 and 9, stored as 0xffffffff - v
    stats = semantics.MapInfo("@s", "stats", [comm])
    skeys = np.array([(ODD.encode(), 0), (ODD.encode(), 1)], [("k0", "S16"),
                                                             ("__index", "<u8")])
    df = decode(stats, skeys, np.array([[2, 1], [10, 20]], np.uint64), ctx)
    assert df.values.tolist() == [[ODD, 3, 10, 30]]
    hist = semantics.MapInfo("@h", "hist", [])
    hkeys = np.array([(0,), (1,), (4,)], [("__index", "<u8")])
    df = decode(hist, hkeys, np.array([[1, 0], [2, 0], [0, 5]], np.uint64), ctx)
    assert df[["low", "high", "count"]].values.tolist() == [
        [histograms.OPEN_LOW, 0, 1], [0, 1, 2], [1, 2, 0], [2, 4, 0], [4, 8, 5]]


def test_open_buckets_read_like_bpftraces():
    assert histograms.label(histograms.OPEN_LOW, 0) == "(..., 0)"
    assert histograms.label(1000, histograms.OPEN_HIGH, "linear") == "[1000, ...)"
    frame = histograms.bucket_frame(np.array([-1, 0, 3]), np.array([2, 1, 5]))
    h = histograms.Histogram(frame)
    assert h.kind == "log2" and str(h).splitlines()[1].startswith("(..., 0)")


def test_the_shim_is_trusted_only_where_root_alone_can_write_it(tmp_path):
    assert not shim._trusted(tmp_path / "x.so")  # under /tmp: writable by others
    if os.geteuid() == 0:
        path = shim.install()
        assert shim._trusted(path) and path.stat().st_mode & 0o022 == 0
        assert shim.preload() == path  # root's own copy, for its watch on the parent


# -- live: exact counts, histograms, printf, series --------------------------------------


CALLS = {ODD: [(i, 0) for i in range(7)], "plain": [(i, 1) for i in range(11)]}


@pytest.mark.kernel
@needs_bpftrace
def test_counts_per_comm_and_pid_are_exact_and_match_bpftraces_own(no_leaks):
    program = f"{LSEEK} {{ @[comm, pid] = count(); @n = count(); }}"
    cli = subprocess.Popen([process.binary(), "-e", f"{LSEEK} {{ @n = count(); }}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, process.ATTACHED: "1"})
    try:
        with BpftraceProgram(program, name="counts") as prog:
            assert prog in running()
            conforms_all(prog)  # members and signatures of the read API, not just names
            while process.ATTACHED not in cli.stderr.readline():
                pass
            pids = {name: run_work(name, calls) for name, calls in CALLS.items()}
            df = prog.maps["@"].df
            assert df["comm"].dtype.kind in "OU" or str(df["comm"].dtype) in ("str", "string")
            assert df["pid"].dtype == np.uint64 and df["count"].dtype == np.uint64
            got = {(r.comm, r.pid): r.count for r in df.itertuples()}
            assert got == {(name, pids[name]): len(calls) for name, calls in CALLS.items()}
            ours = int(prog.maps["@n"].df["count"].sum())
            cli.send_signal(signal.SIGINT)
            text = cli.communicate(timeout=60)[0]
    finally:
        if cli.poll() is None:  # a failed assertion above: the command's bpftrace goes too
            process.stop(cli, timeout=20)
    assert ours == sum(map(len, CALLS.values()))
    assert re.search(r"^@n: (\d+)$", text, re.M).group(1) == str(ours)  # bpftrace's own print
    assert prog not in running()
    with pytest.raises(BPFError, match="stopped"):
        _ = prog.maps["@"].df


def test_a_program_including_headers_is_told_where_the_kernels_are(monkeypatch):
    assert source.includes("#include <linux/sched.h>\nBEGIN { exit(); }")
    assert source.includes("BEGIN { }\n  #  include <net/sock.h>\n")
    assert not source.includes('// #include <x.h>\nBEGIN { printf("#include"); }')
    monkeypatch.delenv(process.KERNEL_SOURCE, raising=False)
    tree = ebpf_magic.backend.header_tree()
    installed = os.path.isdir(f"/lib/modules/{os.uname().release}/build/include")
    if installed or tree is None:
        pytest.skip("the running kernel's headers are installed, or no backend made a tree "
                    "of its types (no BTF): bpftrace finds its own or none")
    assert (tree / "vmlinux.h").is_file()
    assert process.environment(includes=True)[process.KERNEL_SOURCE] == str(tree)
    assert process.KERNEL_SOURCE not in process.environment()
    mine = {process.KERNEL_SOURCE: "/srv/headers"}  # a user's own choice stands
    assert process.environment(mine, includes=True)[process.KERNEL_SOURCE] == "/srv/headers"


def test_a_headers_error_is_shown_before_the_compilers_warnings():
    stderr = ["/h/macros.h:10:9: warning: 'KBUILD_MODNAME' macro redefined [-Wmacro-redefined]",
              "note: previous definition is here", "",
              "/h/macros.h:19:9: warning: '__HAVE_BUILTIN_BSWAP16__' macro redefined",
              "definitions.h:4:8: error: redefinition of 'cfs_rq'",
              "ERROR: Input (226): #include <__btf_generated_header.h>", "struct cfs_rq {",
              "WARNING: Cannot take type definitions from BTF since there is a redefinition"]
    assert source.unlocated(stderr) == [stderr[4], stderr[5], stderr[6], stderr[7]]


@pytest.mark.kernel
@needs_bpftrace
def test_an_included_kernel_struct_reads_this_kernels_layout(no_leaks):
    """``#include <linux/sched.h>`` and a cast of ``curtask``, as bpftrace's own tools do:
    the task's and its parent's process ids, which the distribution's headers alone cannot
    declare (bpftrace: "unknown type name '__aligned_u64'")."""
    text = ("#include <linux/sched.h>\n" + LSEEK + " { $t = (struct task_struct *)curtask; "
            "@[$t->tgid, $t->real_parent->tgid] = count(); }")
    with BpftraceProgram(text, name="included") as prog:
        pid = run_work("included", [(0, 0)] * 7)
        df = prog.maps["@"].df
    assert df.to_dict("list") == {"key0": [pid], "key1": [os.getpid()], "count": [7]}


OFFSETS = [-5, 0, 0, 1, 2, 3, 7, 8, 100, 999, 1000, 1023, 1024, 12345, 3_000_000_000,
           5_000_000_000]


def expected_log2(values: list[int]) -> list[list[int]]:
    """Each value's log2 bucket; bpftrace before 0.20 puts all from 2**31 on in one."""
    capped = maps.log2_top(process.version()) is not None
    counts: dict[tuple[int, int], int] = {}
    for v in values:
        b = (histograms.OPEN_LOW, 0) if v < 0 else (0, 1) if v == 0 else \
            (1 << 31, histograms.OPEN_HIGH) if capped and v >= 1 << 31 else \
            (1 << (v.bit_length() - 1), 1 << v.bit_length())
        counts[b] = counts.get(b, 0) + 1
    return [[lo, hi, n] for (lo, hi), n in sorted(counts.items())]


def expected_linear(values: list[int], lo: int, hi: int, step: int) -> list[list[int]]:
    counts: dict[tuple[int, int], int] = {}
    for v in values:
        b = (histograms.OPEN_LOW, lo) if v < lo else (hi, histograms.OPEN_HIGH) if v >= hi \
            else (lo + (v - lo) // step * step, lo + (v - lo) // step * step + step)
        counts[b] = counts.get(b, 0) + 1
    return [[a, b, n] for (a, b), n in sorted(counts.items())]


@pytest.mark.kernel
@needs_bpftrace
def test_histograms_hold_the_workloads_exact_values(no_leaks):
    program = (f"{LSEEK} {{ @h = hist(args->offset); @l = lhist(args->offset, 0, 1000, 100); "
               "@k[comm] = hist(args->offset); }")
    with BpftraceProgram(program, name="hists") as prog:
        run_work(ODD, [(v, 0) for v in OFFSETS])
        h = prog.maps["@h"].hist()
        assert isinstance(h, histograms.Histogram) and h.kind == "log2"
        nonzero = h.df[h.df["count"] > 0]
        assert nonzero[["low", "high", "count"]].values.tolist() == expected_log2(OFFSETS)
        assert str(h).startswith("@h:\n(..., 0)")
        lin = prog.maps["@l"].hist()
        assert lin.kind == "linear"
        got = lin.df[lin.df["count"] > 0][["low", "high", "count"]].values.tolist()
        assert got == expected_linear(OFFSETS, 0, 1000, 100)
        keyed = prog.maps["@k"].hist()
        assert keyed.section_columns == ["comm"] and set(keyed.df["comm"]) == {ODD}
        assert keyed.total == len(OFFSETS)
        ax = prog.maps["@h"].hist().plot()
        assert [t.get_text() for t in ax.get_xticklabels()][0] == "(..., 0)"


@pytest.mark.kernel
@needs_bpftrace
def test_printf_columns_are_the_values_submitted(no_leaks):
    program = (f'{LSEEK} {{ printf("%ld %s %u %x|%-6s|\\n", args->offset, comm, args->whence, '
               "args->fd, comm); }")
    calls = [(12, 0), (-3, 2), (4_000_000_000, 1)]
    with BpftraceProgram(program, name="lines") as prog:
        pid = run_work(ODD, calls)
        stream = prog.events["printf"]
        conforms(stream, StreamView)
        df = rows(stream, len(calls))
    assert list(df.columns) == ["time", "text", "offset", "comm", "whence", "fd", "comm_2"]
    assert df[["offset", "comm", "whence", "fd", "comm_2"]].values.tolist() == \
        [[off, ODD, whence, MAGIC_FD, ODD] for off, whence in calls]
    assert df["text"].tolist() == [f"{o} {ODD} {w} {MAGIC_FD:x}|{ODD:<6}|" for o, w in calls]
    assert pd.api.types.is_datetime64_any_dtype(df["time"])
    assert abs(df["time"].iloc[0] - pd.Timestamp.now()) < pd.Timedelta("5min")
    assert stream.stats["received"] == len(calls) and stream.stats["lost_kernel"] == 0
    assert pid


@pytest.mark.kernel
@needs_bpftrace
def test_every_printf_line_is_in_the_frame_or_counted_lost(no_leaks):
    """A one-page output buffer overflows; the lines lost are in stats["lost_kernel"]."""
    flood = {"n": 100_000, "whence": 0}
    # spaced, on every CPU: a CPU's losses are reported at its next line written
    tail = [(i, 1) for i in range(5)]
    cpus = len(os.sched_getaffinity(0))
    with BpftraceProgram(f'{LSEEK} {{ printf("%ld %d\\n", args->offset, args->whence); }}',
                         name="flood", env={"BPFTRACE_PERF_RB_PAGES": 1}) as prog:
        run_work(ODD, flood)
        run_work(ODD, tail, pause=0.05, every_cpu=True)
        stream = prog.events["printf"]
        settle(lambda: stream.stats["received"] + stream.stats["lost_kernel"]
               >= flood["n"] + cpus * len(tail), 20)
        stats = stream.stats
        df = stream.df
    assert stats["lost_kernel"] > 0  # the buffer did overflow
    assert stats["received"] + stats["lost_kernel"] == flood["n"] + cpus * len(tail)
    assert stats["received"] == len(df) == stats["held"]
    assert df["whence"].tolist()[-cpus * len(tail):] == [1] * cpus * len(tail)


@pytest.mark.kernel
@needs_bpftrace
def test_an_interval_print_is_a_time_series_one_row_per_key_per_second(no_leaks):
    program = (f"{LSEEK} {{ @c[comm] = count(); }}\n"
               "interval:s:1 { print(@c); clear(@c); }")
    calls = [(i, 0) for i in range(70)]
    with BpftraceProgram(program, name="ticks") as prog:
        started = time.monotonic()
        worker = start_work(ODD, calls, pause=0.05)  # about 3.5 s of calls
        assert worker.wait(60) == 0
        elapsed = time.monotonic() - started
        time.sleep(1.2)
    df = prog.events["@c"].df  # read after stop: the exit print is the last row
    assert list(df.columns) == ["time", "comm", "count"]
    assert set(df["comm"]) == {ODD}  # the comm with a comma split whole
    assert df["count"].sum() == len(calls)
    assert df["time"].is_unique  # one row per print: one key, one row
    gaps = df["time"].diff().dropna().dt.total_seconds()
    assert (gaps[:-1] > 0.7).all() and (gaps[:-1] < 1.5).all()  # the last is the exit print
    assert abs(len(df) - elapsed) <= 2.5


@pytest.mark.kernel
@needs_bpftrace
def test_stacks_probes_and_stats(no_leaks):
    program = (f"{LSEEK} {{ @s[kstack] = count(); @p[probe] = count(); @st = stats(args->offset);"
               " @a[comm] = avg(args->offset); }")
    with BpftraceProgram(program, name="kinds") as prog:
        run_work(ODD, [(10, 0), (20, 0), (33, 0)])
        stacks = prog.maps["@s"].df
        assert stacks["count"].sum() == 3
        frames = stacks["kstack"].iloc[0]
        assert isinstance(frames, list) and any("syscall" in f for f in frames)
        assert prog.maps["@p"].df.values.tolist() == [["tracepoint:syscalls:sys_enter_lseek", 3]]
        assert prog.maps["@st"].df.values.tolist() == [[3, 21, 63]]
        assert prog.maps["@a"].df.values.tolist() == [[ODD, 21]]


# -- the life cycle: nothing left behind ---------------------------------------------------


@pytest.mark.kernel
@needs_bpftrace
def test_a_failing_program_says_where_and_leaves_nothing():
    before = loaded_prog_ids()
    with pytest.raises(CompileError) as e:
        BpftraceProgram("BEGIN { @x = 1; }\ntracepoint:syscalls:sys_enter_lseek { @y = foo(); }",
                        line_offset=1)
    assert e.value.message.startswith("bpftrace: line 3, column 44: Unknown function: foo")
    assert "~~~" in e.value.hint
    with pytest.raises(CompileError, match="line 1, column 1: tracepoint not found: nope:nope"):
        BpftraceProgram("tracepoint:nope:nope { @x = count(); }")
    assert left_behind(before) == CLEAN


@pytest.mark.kernel
@needs_bpftrace
def test_stop_and_rerun_leave_one_program_then_none(shell):
    before = loaded_prog_ids()
    shell.run_cell_magic("bpftrace", "again -q", f"{LSEEK} {{ @[pid] = count(); }}")
    first = shell.user_ns["again"]
    ids = set(first.prog_ids())
    assert ids and ids <= loaded_prog_ids()
    shell.run_cell_magic("bpftrace", "again -q", f"{LSEEK} {{ @[tid] = count(); }}")
    second = shell.user_ns["again"]
    assert not first.running and second.running and first.process_id is None
    assert settle(lambda: not ids & loaded_prog_ids())
    table = shell.run_line_magic("bpf", "list")
    assert table["name"].tolist() == ["again"] and table["state"].tolist() == ["running"]
    shell.run_line_magic("bpf", "stop --all")
    assert not second.running
    assert left_behind(before) == CLEAN


@pytest.mark.kernel
@needs_bpftrace
@pytest.mark.parametrize("delay", [0.001, 0.05, 0.2, 0.4, 0.7])
def test_ctrl_c_while_starting_leaves_nothing(delay):
    before = loaded_prog_ids()
    prog, interrupted = None, False
    alarm = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        prog = BpftraceProgram(f"{LSEEK} {{ @[pid] = count(); }}", name="interrupted")
        time.sleep(2.0)  # the interrupt comes after it started
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)
        if prog is not None:
            prog.stop()
    assert interrupted
    assert left_behind(before) == CLEAN
    assert not [p for p in running() if p.name == "interrupted"]


def attached_bpftrace(program: str = f"{LSEEK} {{ @[pid] = count(); }}") -> subprocess.Popen:
    """bpftrace started as a program is, returned the moment it says it attached: just
    before its first wait for events, where bpftrace 0.17 loses a stop signal."""
    proc = process.spawn(process.argv(program), process.environment())
    while process.ATTACHED.encode() not in proc.stderr.readline():
        pass
    return proc


@pytest.mark.kernel
@needs_bpftrace
def test_a_stop_right_after_attaching_is_not_lost():
    before = loaded_prog_ids()
    for _ in range(6):
        proc = attached_bpftrace()
        began = time.monotonic()
        process.stop(proc, timeout=20)
        assert time.monotonic() - began < 5 and proc.returncode == 0
        proc.stdout.close()
        proc.stderr.close()
    assert left_behind(before) == CLEAN


ORPHAN = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from test_bpftrace import attached_bpftrace
proc = attached_bpftrace(sys.argv[2])
print(proc.pid, flush=True)
time.sleep(float(sys.argv[3]))
os._exit(0)  # gone without stopping it: bpftrace has to notice
"""
# busy: a line for every system call, so bpftrace is mostly not waiting for events
BUSY = 'tracepoint:raw_syscalls:sys_enter { printf("%d %s\\n", pid, comm); }'


@pytest.mark.kernel
@needs_bpftrace
@pytest.mark.parametrize("program,after", [(f"{LSEEK} {{ @[pid] = count(); }}", 0.0),
                                           (BUSY, 0.5)])
def test_a_parent_gone_stops_bpftrace_busy_or_not(program, after):
    for _ in range(4):
        done = subprocess.run([sys.executable, "-c", ORPHAN, str(Path(__file__).parent),
                               program, str(after)], capture_output=True, text=True,
                              timeout=120)
        pid = int(done.stdout)
        assert settle(lambda p=pid: not os.path.exists(f"/proc/{p}"), 10), \
            "bpftrace outlived its parent"


KILLED = """
import os, sys, time
from ebpf_magic.bpftrace import BpftraceProgram
prog = BpftraceProgram(sys.argv[1], name="orphan")
print(prog.process_id, *prog.prog_ids(), flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
sys.exit(0)  # interpreter exit: stop_all() at exit
"""


@pytest.mark.kernel
@needs_bpftrace
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_kernel_process_ending_stops_bpftrace(how):
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    program = f"{LSEEK} {{ @[pid] = count(); }} uprobe:{libc}:getpgrp {{ @g = count(); }}"
    proc = subprocess.run([sys.executable, "-c", KILLED, program, how], capture_output=True,
                          text=True, timeout=120)
    pid, *ids = map(int, proc.stdout.split())
    assert ids
    assert settle(lambda: not os.path.exists(f"/proc/{pid}"), 40), "bpftrace outlived its parent"
    assert settle(lambda: not set(ids) & loaded_prog_ids())
    assert not [e for e in uprobe_events() if f"_bcc_{pid}" in e]


@pytest.mark.kernel
@needs_bpftrace
def test_a_command_runs_held_until_attached_and_ends_the_program(no_leaks):
    calls = [(i, 0) for i in range(13)]
    command = shlex.join([sys.executable, "-c", WORKER + "print('done')", ODD,
                          json.dumps(calls)])
    program = (f"{LSEEK[:-1]} && pid == cpid/ {{ @[comm] = count(); }}\n"
               f'{LSEEK} {{ printf("seen %d\\n", pid); }}')
    with BpftraceProgram(program, name="cmd", command=command) as prog:
        assert settle(lambda: prog.exited, 30)  # -p: bpftrace ends with the command
        assert prog.running  # its maps are still held here
        assert prog.maps["@"].df.values.tolist() == [[ODD, len(calls)]]  # not one call missed
        lines = rows(prog.events["printf"], len(calls))
        assert set(lines["pid"]) == {prog.command_id}
        assert rows(prog.events["command"], 1)["text"].tolist() == ["done"]
    assert prog.summary()["state"] == "stopped"


@pytest.mark.kernel
@needs_bpftrace
def test_a_process_and_positional_parameters(no_leaks):
    worker = start_work(ODD, [(i, 0) for i in range(40)], pause=0.05)
    program = ("tracepoint:syscalls:sys_enter_lseek /args->fd == $1 && pid == $2/ "
               "{ @[comm] = count(); }")
    try:
        with BpftraceProgram(program, name="follow", pid=worker.pid,
                             params=[MAGIC_FD, worker.pid]) as prog:
            assert worker.wait(60) == 0
            assert settle(lambda: prog.exited, 10)  # -p: the program ends with its process
            [[comm, seen]] = prog.maps["@"].df.values.tolist()
            assert comm == ODD and 0 < seen <= 40  # the calls made once it was attached
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.kernel
@needs_bpftrace
def test_tab_completes_probes_in_a_bpftrace_cell(shell):
    from IPython.core.completer import provisionalcompleter

    def complete(text: str) -> list[str]:
        with provisionalcompleter():
            return [c.text for c in shell.Completer.completions(text, len(text))]

    assert "sys_enter_lseek" in complete("%%bpftrace x\ntracepoint:syscalls:sys_enter_lse")
    assert "syscalls:" in complete("%%bpftrace x\nBEGIN {}\ntracepoint:sysc")
    assert "--unsafe" in complete("%%bpftrace x --uns")
    assert complete("%%bpftrace x\n@cou") == []  # not a probe: nothing of ours


@pytest.mark.kernel
@needs_bpftrace
def test_a_recording_replays_without_bpftrace(tmp_path, no_leaks):
    program = (f"{LSEEK} {{ @[comm, pid] = count(); @h = hist(args->offset); "
               'printf("%s %d\\n", comm, args->offset); }\ninterval:ms:300 { print(@h); }')
    with BpftraceProgram(program, name="rec") as prog:
        run_work(ODD, [(v, 0) for v in OFFSETS])
        time.sleep(0.5)
        live = {n: m.df for n, m in prog.maps.items()}
        path = prog.save(tmp_path / "rec.bpfrec")
        printf = prog.events["printf"].df
    replayed = ebpf_magic.load(path)
    assert replayed.backend == "bpftrace" and replayed.host_facts()["bpftrace"]
    for name, df in live.items():
        pd.testing.assert_frame_equal(replayed.maps[name].df, df, check_dtype=False)
    assert str(replayed.maps["@h"].hist()) == str(histograms.Histogram(live["@h"], name="h"))
    pd.testing.assert_frame_equal(replayed.events["printf"].df, printf)
    assert len(replayed.events["@h"].df) >= 1


@pytest.mark.kernel
@needs_bpftrace
def test_the_cell_magic_reports_and_helps(shell, capsys):
    shell.run_cell_magic("bpftrace", "cell", f"{LSEEK} {{ @[comm] = count(); }}")
    out = capsys.readouterr().out
    assert out.startswith("cell: attached 1 probe (tracepoint:syscalls:sys_enter_lseek)")
    run_work(ODD, [(1, 0)])
    assert shell.user_ns["cell"].maps["@"].df.values.tolist() == [[ODD, 1]]
    doc = shell.find_cell_magic("bpftrace").__doc__
    assert "--command" in doc and 'NAME.maps["@m"].df' in doc
    shell.run_line_magic("bpf", "stop cell")


def test_the_doctor_reports_bpftrace():
    row = diagnose.check_installed()
    if process.version() is None:
        assert row.status == "warn" and "not installed" in row.detail
    else:
        assert row.status == "ok" and process.version() in row.detail


@pytest.mark.kernel
@needs_bpftrace
def test_the_doctor_runs_a_counting_program():
    row = diagnose.check_cells()
    assert row.status == "ok", row


# -- in the least-privilege kernel ------------------------------------------------------

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


@pytest.mark.kernel
@needs_bpftrace
@pytest.mark.usefixtures("spec_dir")
def test_in_the_least_privilege_kernel_bpftrace_has_its_rights_and_no_more():
    entry = _account()
    before = loaded_prog_ids()
    with running_kernel(NAME) as (manager, client, kernel_pid):
        execute(client, "%load_ext ebpf_magic")
        execute(client, f"%%bpftrace lp -q\n{LSEEK} {{ @[comm, pid] = count(); }}\n"
                        f"uprobe:{LIBC}:getpgrp {{ @g = count(); }}")
        pid = int(execute(client, "print(lp.process_id)"))
        status = status_of(pid)
        assert set(status["Uid"].split()) == {str(entry.pw_uid)}, status["Uid"]
        assert set(status["Gid"].split()) == {str(entry.pw_gid)}
        for field in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            assert kernel.cap_names(int(status[field], 16)) == kernel.cap_names(bpf_mask()), \
                field
        assert status["NoNewPrivs"] == "1"
        environ = dict(v.split("=", 1) for v in
                       Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in v)
        preload = Path(environ["LD_PRELOAD"])
        assert preload == shim.system_path()  # root's copy, which the account cannot write
        assert preload.stat().st_uid == 0 and preload.stat().st_mode & 0o022 == 0
        assert ours(), "bpftrace should be running"
        assert [e for e in uprobe_events() if f"_bcc_{pid}" in e], \
            "as the account, bpftrace defines its uprobe in tracefs"
        pids = {name: run_work(name, calls) for name, calls in CALLS.items()}
        got = json.loads(execute(client, "print(lp.maps['@'].df.to_json(orient='values'))"))
        assert sorted(map(tuple, got)) == sorted((n, pids[n], len(c)) for n, c in CALLS.items())
        execute(client, "%bpf stop lp")
        assert settle(lambda: not os.path.exists(f"/proc/{pid}"))
        assert not [e for e in uprobe_events() if f"_bcc_{pid}" in e]
        # unsafe builtins run as the account, without the shim
        execute(client, '%%bpftrace unsafe -q --unsafe\n'
                        'BEGIN { system("id -u; echo preload=$LD_PRELOAD"); exit(); }')
        lines = json.loads(execute(client, "import time; time.sleep(1)\n"
                                           "print(unsafe.events['system'].df['text'].to_json("
                                           "orient='values'))"))
        assert lines == [f"{entry.pw_uid}\npreload="]
        # a kernel that dies takes its bpftrace programs with it, leaving nothing defined
        execute(client, f"%%bpftrace orphan -q\nuprobe:{LIBC}:getpgrp {{ @g = count(); }}\n"
                        f"{BUSY}")
        orphan = int(execute(client, "print(orphan.process_id)"))
        manager.shutdown_kernel(now=True)
        assert settle(lambda: not os.path.exists(f"/proc/{orphan}"), 40)
        assert not [e for e in uprobe_events() if f"_bcc_{orphan}" in e]
    assert settle(lambda: not leaked_programs(before, own_processes()))


@pytest.mark.kernel
@needs_bpftrace
def test_overhead_counts_bpftraces_programs_and_keeps_them_at_stop(no_leaks):
    from ebpf_magic.kernel import runstats

    runstats.acquire()
    if not runstats.status().counting:
        pytest.fail("run statistics could not be enabled here: " + runstats.status().detail)
    calls = 500
    with BpftraceProgram(f"{LSEEK} {{ @ = count(); }}", name="costs") as prog:
        run_work("costs", [(i, 0) for i in range(calls)])
        live = prog.overhead
        assert list(live["function"]) == [f"prog {i}" for i in prog.prog_ids()]
        # every lseek() on the machine runs it; the workload's are counted in @
        assert int(live["runs"].sum()) >= int(prog.maps["@"].df["count"].sum()) == calls
        assert (live["ns_per_run"] > 0).all()
        assert live["probes"].tolist() == ["tracepoint:syscalls:sys_enter_lseek"]
    kept = prog.overhead
    assert kept["runs"].tolist() >= live["runs"].tolist()
    assert not kept.unmeasured and kept["function"].tolist() == live["function"].tolist()
