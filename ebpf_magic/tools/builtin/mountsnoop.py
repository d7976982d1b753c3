"""mountsnoop: mount and umount calls (and the new mount API's fsopen, fsmount,
move_mount): who, what, where, and the result.

The entry keeps the call's arguments (user addresses) per thread; the return reads the
strings and sends them with the result.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FAILED, FILTER, PID, TID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = FILTER + r"""
const volatile bool targ_failed = false;

enum mount_call { MOUNT, UMOUNT, FSOPEN, FSMOUNT, MOVE_MOUNT };

struct call {
    const char *source;
    const char *target;
    const char *fstype;
    const char *data;
    u64 flags;
    u32 call;
};

struct event {
    u64 time;
    u64 flags;
    u32 pid;
    u32 tid;
    s32 ret;
    u32 call;
    char comm[16];
    char fstype[32];
    char source[128];
    char target[256];
    char data[128];
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

static __always_inline int enter(u32 call, const char *source, const char *target,
                                 const char *fstype, const char *data, u64 flags)
{
    if (!current_wanted())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {.source = source, .target = target, .fstype = fstype, .data = data,
                     .flags = flags, .call = call};
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
            e->flags = c->flags;
            e->pid = id >> 32;
            e->tid = tid;
            e->ret = ret;
            e->call = c->call;
            bpf_get_current_comm(e->comm, sizeof(e->comm));
            e->fstype[0] = e->source[0] = e->target[0] = e->data[0] = 0;
            if (c->fstype)
                bpf_probe_read_user_str(e->fstype, sizeof(e->fstype), c->fstype);
            if (c->source)
                bpf_probe_read_user_str(e->source, sizeof(e->source), c->source);
            if (c->target)
                bpf_probe_read_user_str(e->target, sizeof(e->target), c->target);
            if (c->data)
                bpf_probe_read_user_str(e->data, sizeof(e->data), c->data);
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&calls, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_mount")
int mount_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(MOUNT, (const char *)ctx->args[0], (const char *)ctx->args[1],
                 (const char *)ctx->args[2], (const char *)ctx->args[4], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_umount")
int umount_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(UMOUNT, 0, (const char *)ctx->args[0], 0, 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_fsopen")
int fsopen_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(FSOPEN, 0, 0, (const char *)ctx->args[0], 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_fsmount")
int fsmount_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(FSMOUNT, 0, 0, 0, 0, ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_move_mount")
int move_mount_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter(MOVE_MOUNT, (const char *)ctx->args[1], (const char *)ctx->args[3], 0, 0,
                 ctx->args[4]);
}

SEC("tracepoint/syscalls/sys_exit_mount")
int mount_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_umount")
int umount_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_fsopen")
int fsopen_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_fsmount")
int fsmount_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_move_mount")
int move_mount_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }
"""

CALLS = ["mount", "umount", "fsopen", "fsmount", "move_mount"]
COLUMNS = ["time", "pid", "tid", "comm", "call", "source", "target", "fstype", "flags",
           "data", "ret", "errno"]


def table(r: Reading) -> pd.DataFrame:
    """One row per call: time, pid, tid, comm, call (mount, umount (umount2(2)), fsopen,
    fsmount, move_mount), source, target, fstype, flags (the call's flags, as a number),
    data (mount's options string), ret, errno."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    ret = ev["ret"]
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
        "call": [CALLS[int(c)] for c in ev["call"]], "source": ev["source"],
        "target": ev["target"], "fstype": ev["fstype"], "flags": ev["flags"],
        "data": ev["data"], "ret": ret, "errno": frames.errno_name(-ret.where(ret < 0, 0)),
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Calls by command and call."""
    counts = run.df.groupby(["comm", "call"]).size().rename("calls").reset_index()
    return frames.plot_bars(counts, ["comm", "call"], "calls", ax, "mount calls")


TOOL = Tool(
    name="mountsnoop",
    answers="Who mounts and unmounts what, where, and does it work?",
    source=SOURCE, table=table, plot=plot, options=[PID, TID, COMM, FAILED],
    time={"time": "monotonic"},
)
