"""statsnoop: stat-family calls (stat, lstat, fstatat, statx, statfs): who asks about
which path, and the result.

The entry keeps the path's user address per thread; the return reads it and sends it
with the result and the call's name.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FAILED, FILTER, PID, TID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun, Variant

PATH_LEN = 256

COMMON = f"#define PATH_LEN {PATH_LEN}\n" + FILTER + r"""
const volatile bool targ_failed = false;

struct call {
    const char *path;
    u32 syscall;
};

struct event {
    u64 time;
    u32 pid;
    u32 tid;
    s32 ret;
    u32 syscall;
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

static __always_inline int enter(const char *path, u32 syscall)
{
    if (!current_wanted())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct call c = {.path = path, .syscall = syscall};
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
            e->ret = ret;
            e->syscall = c->syscall;
            bpf_get_current_comm(e->comm, sizeof(e->comm));
            bpf_probe_read_user_str(e->path, sizeof(e->path), c->path);
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&calls, &tid);
    return 0;
}
"""

# (syscall, index of its path argument); the index in this list is the event's ``syscall``
SYSCALLS = [("statfs", 0), ("newfstatat", 1), ("statx", 1), ("newstat", 0), ("newlstat", 0)]


def _probes(syscalls: list[tuple[str, int]]) -> str:
    out = []
    for number, (name, arg) in enumerate(SYSCALLS):
        if (name, arg) not in syscalls:
            continue
        out.append(f"""
SEC("tracepoint/syscalls/sys_enter_{name}")
int {name}_enter(struct trace_event_raw_sys_enter *ctx)
{{
    return enter((const char *)ctx->args[{arg}], {number});
}}

SEC("tracepoint/syscalls/sys_exit_{name}")
int {name}_exit(struct trace_event_raw_sys_exit *ctx) {{ return leave(ctx->ret); }}
""")
    return "".join(out)


COLUMNS = ["time", "pid", "tid", "comm", "syscall", "ret", "errno", "path"]


def table(r: Reading) -> pd.DataFrame:
    """One row per call: time, pid, tid, comm, syscall (the kernel's name: newstat is
    stat(2), newfstatat fstatat(2)...), ret, errno, path (up to 255 bytes)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    ret = ev["ret"]
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
        "syscall": [SYSCALLS[int(s)][0] for s in ev["syscall"]], "ret": ret,
        "errno": frames.errno_name(-ret.where(ret < 0, 0)), "path": ev["path"],
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Stat calls per second over time, by command."""
    ax = frames.plot_rate(run.df, ax, by="comm")
    ax.set_title("stat calls per second by command")
    return ax


TOOL = Tool(
    name="statsnoop",
    answers="Which paths are stat()ed (stat, lstat, fstatat, statx, statfs), by whom, and "
            "which do not exist?",
    source=[Variant("x86_64 stat family", COMMON + _probes(SYSCALLS)),
            Variant("generic stat family", COMMON + _probes(SYSCALLS[:3]),
                    about="architectures without stat(2) and lstat(2)")],
    table=table, plot=plot, options=[PID, TID, COMM, FAILED],
    time={"time": "monotonic"},
)
