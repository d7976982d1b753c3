"""profile: where the CPUs spend their time, by sampling stacks at a fixed rate.

A ``cpu-clock`` perf event fires ``frequency`` times a second on every CPU; each sample
counts the running task's user and kernel stacks. The idle task is left out unless asked.
"""

from __future__ import annotations

from typing import Any

from ebpf_magic.tools import frames, stacks
from ebpf_magic.tools.snippets import ADD, COMM, FILTER, PER_THREAD, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, count, flag

SOURCE = FILTER + ADD + r"""
const volatile bool targ_idle = false;
const volatile bool targ_per_thread = false;

struct prof_key {
    u32 pid;
    u32 tid;    /* 0 unless per thread */
    s32 user_stack_id;
    s32 kernel_stack_id;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 17);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct prof_key);
    __type(value, u64);
} counts SEC(".maps");

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (!tid && !targ_idle)
        return 0;
    if (!current_wanted())
        return 0;
    struct prof_key key = {.pid = id >> 32, .tid = targ_per_thread ? tid : 0,
                           .user_stack_id = USER_STACK(ctx),
                           .kernel_stack_id = KERNEL_STACK(ctx)};
    bpf_get_current_comm(key.comm, sizeof(key.comm));
    MAP_ADD(&counts, &key, 1);
    return 0;
}
"""


def source(options: dict) -> str:
    return stacks.stack_entries(options["stack_storage_size"]) + stacks.STACK_MAP + SOURCE


def table(r: Reading) -> Any:
    """One row per process (thread with per_thread) and stack: pid, [tid,] comm, stack
    (folded, user root first, kernel frames last), samples, largest first."""
    df = stacks.stack_table(r, "counts", "samples")
    return df if r.options.get("per_thread") else df.drop(columns="tid")


def plot(run: ToolRun, ax: Any) -> Any:
    """A flame graph of the samples."""
    return frames.plot_flame(run.df, "samples", ax, "CPU samples")


TOOL = Tool(
    name="profile",
    answers="Where do the CPUs spend their time (sampled user and kernel stacks)?",
    source=source, table=table, plot=plot,
    options=[PID, TID, COMM, PER_THREAD, stacks.USER_ONLY, stacks.KERNEL_ONLY,
             Option("frequency", ("-F", "--frequency"), "samples per second on each CPU",
                    type=count, default=49, metavar="HZ"),
             Option("include_idle", ("-I", "--include-idle"), "count the idle task's "
                    "samples too", type=flag, sets="targ_idle"),
             stacks.STACK_STORAGE],
    attach=lambda o: [f"profile:hz:{o['frequency']}=on_sample"],
    needs=("software:cpu-clock",),
)
