"""opensnoop: files opened (open, openat, openat2), by whom, with which flags and result.

The entry keeps the path's user address and the flags per thread; the return reads the
path and sends it with the result (a file descriptor, or an error).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FAILED, FILTER, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, Variant, natural

PATH_LEN = 256

COMMON = f"#define PATH_LEN {PATH_LEN}\n" + FILTER + r"""
const volatile bool targ_failed = false;
const volatile u32 targ_uid = 0;
const volatile bool targ_uid_set = false;

struct call {
    const char *path;
    s32 flags;
    u32 mode;
};

struct event {
    u64 time;
    u32 pid;
    u32 tid;
    u32 uid;
    s32 ret;
    s32 flags;
    u32 mode;
    char comm[16];
    char path[PATH_LEN];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, u32);
    __type(value, struct call);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} events SEC(".maps");

static __always_inline int enter(const char *path, int flags, u32 mode)
{
    if (targ_uid_set && (u32)bpf_get_current_uid_gid() != targ_uid)
        return 0;
    if (!current_wanted())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {.path = path, .flags = flags, .mode = mode};
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
            e->uid = (u32)bpf_get_current_uid_gid();
            e->ret = ret;
            e->flags = c->flags;
            e->mode = c->mode;
            bpf_get_current_comm(e->comm, sizeof(e->comm));
            bpf_probe_read_user_str(e->path, sizeof(e->path), c->path);
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&calls, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int openat_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter((const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int openat_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }

SEC("tracepoint/syscalls/sys_enter_openat2")
int openat2_enter(struct trace_event_raw_sys_enter *ctx)
{
    struct open_how how = {};
    bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
    return enter((const char *)ctx->args[1], how.flags, how.mode);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int openat2_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }
"""

OPEN = r"""
SEC("tracepoint/syscalls/sys_enter_open")
int open_enter(struct trace_event_raw_sys_enter *ctx)
{
    return enter((const char *)ctx->args[0], ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_open")
int open_exit(struct trace_event_raw_sys_exit *ctx) { return leave(ctx->ret); }
"""

_FLAGS = [(name, getattr(os, name)) for name in (
    "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND",
    "O_NONBLOCK", "O_DSYNC", "O_DIRECT", "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW",
    "O_NOATIME", "O_CLOEXEC", "O_SYNC", "O_PATH", "O_TMPFILE") if hasattr(os, name)]


def flag_names(flags: int) -> str:
    """``O_WRONLY|O_CREAT|...`` for open(2) flags (``O_RDONLY`` when none is set)."""
    names = []
    for name, bit in _FLAGS:
        if name == "O_SYNC" and flags & bit == bit:
            names = [n for n in names if n != "O_DSYNC"]
        if name == "O_TMPFILE" and flags & bit == bit:
            names = [n for n in names if n != "O_DIRECTORY"]
        if bit and flags & bit == bit:
            names.append(name)
    return "|".join(names) or "O_RDONLY"


COLUMNS = ["time", "pid", "tid", "uid", "comm", "fd", "errno", "flags", "path"]


def table(r: Reading) -> pd.DataFrame:
    """One row per open: time, pid, tid, uid, comm, fd (<NA> when it failed), errno, flags
    (``O_WRONLY|O_CREAT``...), path (as passed, up to 255 bytes)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    ret = ev["ret"]
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "uid": ev["uid"],
        "comm": ev["comm"], "fd": ret.astype("Int64").where(ret >= 0),
        "errno": frames.errno_name(-ret.where(ret < 0, 0)),
        "flags": [flag_names(int(f)) for f in ev["flags"]], "path": ev["path"],
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Opens per second over time, by command."""
    ax = frames.plot_rate(run.df, ax, by="comm")
    ax.set_title("opens per second by command")
    return ax


UID = Option("uid", ("-u", "--uid"), "only this user id", type=natural, sets="targ_uid",
             metavar="UID")

TOOL = Tool(
    name="opensnoop",
    answers="Which files are opened, by whom, with which flags, and which opens fail?",
    source=[Variant("open+openat+openat2", COMMON + OPEN),
            Variant("openat+openat2", COMMON, about="architectures without open(2)")],
    table=table, plot=plot,
    options=[PID, TID, COMM, UID, FAILED],
    prepare=lambda o: {"targ_uid_set": o["uid"] is not None},
    time={"time": "monotonic"},
)
