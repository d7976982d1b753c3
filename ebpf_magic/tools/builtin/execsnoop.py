"""execsnoop: every exec(2), with its arguments, its parent and its result.

The entry to ``execve``/``execveat`` sends the file name and up to ``max_args``
arguments; the return sends the result and the new command name. A per-process sequence
number pairs them exactly (a process's pid survives its exec; two exec calls of one
process cannot overlap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FAILED
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, count, natural, pid

MAX_ARGS = 20
ARG_LEN = 128

SOURCE = f"#define MAX_ARGS {MAX_ARGS}\n#define ARG_LEN {ARG_LEN}\n" + r"""

const volatile u32 targ_ppid = 0;
const volatile u32 targ_uid = 0;
const volatile bool targ_uid_set = false;
const volatile bool targ_failed = false;
const volatile char targ_comm[16] = {};
const volatile u32 max_args = MAX_ARGS;

struct enter_event {
    u64 time;
    u64 seq;
    u32 pid;
    u32 tid;
    u32 ppid;
    u32 uid;
    u32 argc;               /* arguments seen, up to max_args + 1 */
    u32 arg_truncated;      /* an argument did not fit in ARG_LEN - 1 bytes */
    char filename[ARG_LEN];
    char args[MAX_ARGS][ARG_LEN];
};

struct exit_event {
    u64 time;
    u64 seq;
    u32 pid;
    u32 tid;
    u32 ppid;
    u32 uid;
    s32 ret;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} enters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} exits SEC(".maps");

/* each process's exec calls, numbered, so that an entry and its return pair exactly */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 16384);
    __type(key, u32);
    __type(value, u64);
} seqs SEC(".maps");

static __always_inline bool uid_wanted(u32 uid)
{
    return !targ_uid_set || uid == targ_uid;
}

static __always_inline u32 parent_tgid(void)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    return BPF_CORE_READ(task, real_parent, tgid);
}

static __always_inline int on_enter(const char *filename, const char *const *argv)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, uid = (u32)bpf_get_current_uid_gid();
    u32 ppid = parent_tgid();
    if ((targ_ppid && ppid != targ_ppid) || !uid_wanted(uid))
        return 0;
    u64 one = 1, *seq = bpf_map_lookup_elem(&seqs, &pid);
    u64 n = 1;
    if (seq)
        n = __sync_fetch_and_add(seq, 1) + 1;
    else
        bpf_map_update_elem(&seqs, &pid, &one, BPF_ANY);
    struct enter_event *e = bpf_ringbuf_reserve(&enters, sizeof(*e), 0);
    if (!e)
        return 0;
    e->time = bpf_ktime_get_ns();
    e->seq = n;
    e->pid = pid;
    e->tid = (u32)id;
    e->ppid = ppid;
    e->uid = uid;
    e->arg_truncated = 0;
    long len = bpf_probe_read_user_str(e->filename, ARG_LEN, filename);
    if (len == ARG_LEN)
        e->arg_truncated = 1;
    u32 argc = 0;
    for (u32 i = 0; i < MAX_ARGS + 1; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
            break;
        argc++;
        if (i >= max_args || i >= MAX_ARGS)
            break;
        len = bpf_probe_read_user_str(e->args[i], ARG_LEN, arg);
        if (len == ARG_LEN)
            e->arg_truncated = 1;
    }
    e->argc = argc;
    for (u32 i = 0; i < MAX_ARGS; i++)
        if (i >= argc || i >= max_args)
            e->args[i][0] = 0;
    bpf_ringbuf_submit(e, 0);
    return 0;
}

static __always_inline int on_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, uid = (u32)bpf_get_current_uid_gid();
    u32 ppid = parent_tgid();
    if ((targ_ppid && ppid != targ_ppid) || !uid_wanted(uid))
        return 0;
    if (targ_failed && ret >= 0)
        return 0;
    u64 *seq = bpf_map_lookup_elem(&seqs, &pid);
    if (!seq)
        return 0;   /* its entry came before this program started */
    struct exit_event e = {};
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    if (targ_comm[0]) {
        for (int i = 0; i < 16; i++) {
            if (e.comm[i] != targ_comm[i])
                return 0;
            if (!e.comm[i])
                break;
        }
    }
    e.time = bpf_ktime_get_ns();
    e.seq = *seq;
    e.pid = pid;
    e.tid = (u32)id;
    e.ppid = ppid;
    e.uid = uid;
    e.ret = ret;
    bpf_ringbuf_output(&exits, &e, sizeof(e), 0);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int execve_enter(struct trace_event_raw_sys_enter *ctx)
{
    return on_enter((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int execveat_enter(struct trace_event_raw_sys_enter *ctx)
{
    return on_enter((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int execve_exit(struct trace_event_raw_sys_exit *ctx)
{
    return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int execveat_exit(struct trace_event_raw_sys_exit *ctx)
{
    return on_exit(ctx->ret);
}
"""

COLUMNS = ["time", "pid", "tid", "ppid", "uid", "comm", "ret", "errno", "filename", "argv",
           "truncated"]


def table(r: Reading) -> pd.DataFrame:
    """One row per exec: time (of its return), pid, tid (the calling thread), ppid, uid,
    comm (after the exec), ret, errno, filename, argv (list of str), truncated (more
    arguments than kept, or one longer than 127 bytes)."""
    exits = r.events("exits")
    if not len(exits):
        return pd.DataFrame({c: [] for c in COLUMNS})
    enters = r.events("enters")
    args = frames.array(enters, "args")
    argc = enters["argc"].to_numpy()
    keep = np.minimum(argc, r.options["max_args"])
    argv = [list(row[:n]) for row, n in zip(args, keep, strict=True)]
    truncated = (argc > keep) | (enters["arg_truncated"].to_numpy() != 0)
    enters = pd.DataFrame({"pid": enters["pid"].to_numpy(), "seq": enters["seq"].to_numpy(),
                           "tid": enters["tid"].to_numpy(),
                           "filename": enters["filename"].to_numpy(),
                           "argv": pd.Series(argv, dtype=object), "truncated": truncated})
    joined = exits.drop(columns=["tid"]).merge(enters, on=["pid", "seq"], how="inner")
    ret = joined["ret"].astype(np.int32)
    out = pd.DataFrame({
        "time": joined["time"], "pid": joined["pid"].astype(np.uint32),
        "tid": joined["tid"].astype(np.uint32), "ppid": joined["ppid"].astype(np.uint32),
        "uid": joined["uid"].astype(np.uint32), "comm": joined["comm"], "ret": ret,
        "errno": frames.errno_name(-ret.where(ret < 0, 0)),
        "filename": joined["filename"], "argv": joined["argv"],
        "truncated": joined["truncated"].astype(bool)})
    return out.sort_values("time", ignore_index=True)


def plot(run: ToolRun, ax: Any) -> Any:
    """Execs per second over time, by command."""
    ax = frames.plot_rate(run.df, ax, by="comm")
    ax.set_title("execs per second by command")
    return ax


TOOL = Tool(
    name="execsnoop",
    answers="Which processes are started (exec), with which arguments, by whom, and did "
            "it work?",
    source=SOURCE, table=table, plot=plot,
    options=[
        Option("ppid", ("-P", "--ppid"), "only execs by children of this process", type=pid,
               sets="targ_ppid", metavar="PID"),
        Option("uid", ("-u", "--uid"), "only execs by this user id", type=natural,
               sets="targ_uid", metavar="UID"),
        COMM, FAILED,
        Option("max_args", ("--max-args",), f"arguments kept per exec (at most {MAX_ARGS})",
               type=lambda v: _max_args(v), default=MAX_ARGS, sets="max_args", metavar="N"),
    ],
    prepare=lambda o: {"targ_uid_set": o["uid"] is not None},
    time={"time": "monotonic"},
)


def _max_args(value: Any) -> int:
    n = count(value)
    if n > MAX_ARGS:
        raise ValueError(f"wants at most {MAX_ARGS}, got {value!r}")
    return n
