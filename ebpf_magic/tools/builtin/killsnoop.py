"""killsnoop: signals sent with kill(2), tkill(2) and tgkill(2), by whom, to whom, result.

The entry records the call's target and signal per thread; the return sends them with
the result.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FAILED, FILTER, PID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = FILTER + r"""
const volatile bool targ_failed = false;
const volatile u32 targ_signal = 0;

struct call {
    s32 target;       /* kill: a pid or group; tkill/tgkill: a thread */
    s32 target_tgid;  /* tgkill: the thread's process; else 0 */
    s32 sig;
    u32 syscall;      /* 0 kill, 1 tkill, 2 tgkill */
};

struct event {
    u64 time;
    u32 pid;
    u32 tid;
    s32 target;
    s32 target_tgid;
    s32 sig;
    s32 ret;
    u32 syscall;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, u32);
    __type(value, struct call);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

static __always_inline int enter(s32 target, s32 tgid, s32 sig, u32 syscall)
{
    if (targ_signal && sig != targ_signal)
        return 0;
    if (!current_wanted())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {.target = target, .target_tgid = tgid, .sig = sig, .syscall = syscall};
    bpf_map_update_elem(&calls, &tid, &c, BPF_ANY);
    return 0;
}

static __always_inline int leave(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct call *c = bpf_map_lookup_elem(&calls, &tid);
    if (!c)
        return 0;
    if (!targ_failed || ret < 0) {
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            e->time = bpf_ktime_get_ns();
            e->pid = id >> 32;
            e->tid = tid;
            e->target = c->target;
            e->target_tgid = c->target_tgid;
            e->sig = c->sig;
            e->ret = ret;
            e->syscall = c->syscall;
            bpf_get_current_comm(e->comm, sizeof(e->comm));
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&calls, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_kill")
int kill_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(ctx->args[0], 0, ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_tkill")
int tkill_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(ctx->args[0], 0, ctx->args[1], 1);
}

SEC("tracepoint/syscalls/sys_enter_tgkill")
int tgkill_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(ctx->args[1], ctx->args[0], ctx->args[2], 2);
}

SEC("tracepoint/syscalls/sys_exit_kill")
int kill_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_tkill")
int tkill_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_tgkill")
int tgkill_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }
"""

SYSCALLS = ["kill", "tkill", "tgkill"]
COLUMNS = ["time", "pid", "tid", "comm", "syscall", "signal", "target", "target_pid", "ret",
           "errno"]


def table(r: Reading) -> pd.DataFrame:
    """One row per call: time, pid, tid, comm (the sender), syscall, signal (name; "" for
    0, the existence check), target (kill's pid argument: a process, or a group when 0 or
    negative; tkill's and tgkill's thread), target_pid (tgkill's process; else <NA>), ret,
    errno."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    ret = ev["ret"]
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
        "syscall": [SYSCALLS[int(s)] for s in ev["syscall"]],
        "signal": frames.signal_name(ev["sig"]), "target": ev["target"],
        "target_pid": ev["target_tgid"].astype("Int64").where(
            ev["syscall"].to_numpy() == 2),
        "ret": ret, "errno": frames.errno_name(-ret.where(ret < 0, 0)),
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Signals sent, by sender and signal."""
    counts = run.df.groupby(["comm", "signal"]).size().rename("signals").reset_index()
    return frames.plot_bars(counts, ["comm", "signal"], "signals", ax, "signals sent")


TOOL = Tool(
    name="killsnoop",
    answers="Who sends which signals to whom (kill, tkill, tgkill), and did they arrive?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, COMM, FAILED,
             Option("signal", ("-s", "--signal"), "only this signal number", type=natural,
                    sets="targ_signal", metavar="SIG")],
    time={"time": "monotonic"},
)
