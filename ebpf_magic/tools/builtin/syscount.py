"""syscount: system calls counted by call (or by process and call), with their time.

The raw ``sys_enter`` tracepoint (BTF-typed) counts a call and notes when the thread
entered, in the task's own storage; ``sys_exit`` adds the time to its return. Counts are
kept per CPU and summed when read. Names are this kernel's
(:mod:`ebpf_magic.tools.syscalls`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames, syscalls
from ebpf_magic.tools.snippets import (
    COMM,
    FAILED,
    FILTER,
    MILLISECONDS,
    PER_PROCESS,
    PID,
    TID,
    unit,
)
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = FILTER + r"""
const volatile bool targ_per_process = false;
const volatile bool targ_failed = false;
const volatile s32 targ_errno = 0;

struct sc_key {
    u32 pid;   /* 0 unless per process */
    u32 nr;
};

struct sc_stats {
    u64 calls;
    u64 returned;
    u64 total_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sc_key);
    __type(value, struct sc_stats);
} counts SEC(".maps");

/* when each thread entered its system call: kept with the task itself */
struct {
    __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, u64);
} start SEC(".maps");

/* the number of the system call a thread returns from, on x86 and on arm64 */
struct pt_regs___arm64 {
    u64 syscallno;
} __attribute__((preserve_access_index));

static __always_inline long syscall_nr(struct pt_regs *regs)
{
    if (bpf_core_field_exists(regs->orig_ax))
        return BPF_CORE_READ(regs, orig_ax);
    return BPF_CORE_READ((struct pt_regs___arm64 *)regs, syscallno);
}

static __always_inline struct sc_stats *stats_of(u32 pid, u32 nr)
{
    struct sc_key key = {.pid = targ_per_process ? pid : 0, .nr = nr};
    struct sc_stats *s = bpf_map_lookup_elem(&counts, &key);
    if (s)
        return s;
    struct sc_stats zero = {};
    bpf_map_update_elem(&counts, &key, &zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(&counts, &key);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long id)
{
    if (id < 0 || !current_wanted())
        return 0;
    u64 *t0 = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0,
                                   BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (t0)
        *t0 = bpf_ktime_get_ns();
    if (targ_failed || targ_errno)
        return 0;   /* counted at the return, once it failed */
    struct sc_stats *s = stats_of(bpf_get_current_pid_tgid() >> 32, id);
    if (s)
        s->calls++;
    return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_exit, struct pt_regs *regs, long ret)
{
    u64 *t0 = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0, 0);
    if (!t0 || !*t0)
        return 0;   /* entered before tracing began, or filtered out */
    u64 delta = bpf_ktime_get_ns() - *t0;
    *t0 = 0;
    long id = syscall_nr(regs);
    if (id < 0)
        return 0;
    if ((targ_failed && ret >= 0) || (targ_errno && ret != -targ_errno))
        return 0;
    struct sc_stats *s = stats_of(bpf_get_current_pid_tgid() >> 32, id);
    if (!s)
        return 0;
    if (targ_failed || targ_errno)
        s->calls++;
    s->returned++;
    s->total_ns += delta;
    return 0;
}
"""


def _table(r: Reading, per_process: bool) -> pd.DataFrame:
    df = frames.summed(r.maps("counts"))
    u = unit(r.options)
    scale = 1e6 if u == "ms" else 1e3
    cols = (["pid"] if per_process else []) + ["nr", "syscall", "calls", f"total_{u}",
                                               f"mean_{u}"]
    if not len(df):
        return pd.DataFrame({c: [] for c in cols})
    returned = df["returned"].to_numpy()
    total = df["total_ns"].to_numpy() / scale
    out = pd.DataFrame({
        "pid": df["pid"].to_numpy(), "nr": df["nr"].to_numpy(),
        "syscall": [syscalls.name(n) for n in df["nr"]],
        "calls": df["calls"].to_numpy().astype(np.int64), f"total_{u}": total,
        f"mean_{u}": np.divide(total, returned, out=np.full(len(df), np.nan),
                               where=returned > 0)})
    return out[cols].sort_values(["calls", f"total_{u}"], ascending=False, ignore_index=True)


def table(r: Reading) -> pd.DataFrame:
    """One row per syscall (per process and syscall with ``per_process``): [pid,] nr,
    syscall (this kernel's name), calls, total_us and mean_us (time from entry to return,
    _ms with ``milliseconds``; over the calls that returned while traced), most calls
    first."""
    return _table(r, bool(r.options.get("per_process")))


def plot(run: ToolRun, ax: Any) -> Any:
    """The busiest syscalls, by calls."""
    df = run.df
    if run.interval:
        df = df.drop(columns="time").groupby([c for c in df.columns if c in (
            "pid", "nr", "syscall")], as_index=False)["calls"].sum()
    label = ["pid", "syscall"] if "pid" in df.columns else "syscall"
    return frames.plot_bars(df, label, "calls", ax, "system calls")


TOOL = Tool(
    name="syscount",
    answers="Which system calls are made, how often, and how much time do they take "
            "(per process with -P)?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, TID, COMM, PER_PROCESS, FAILED, replace(MILLISECONDS, sets=None),
             Option("errno", ("-e", "--errno"), "only calls that failed with this errno "
                    "number", type=natural, sets="targ_errno", metavar="ERRNO")],
    interval=True,
)
