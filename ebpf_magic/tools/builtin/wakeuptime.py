"""wakeuptime: who wakes blocked threads, by the waker's stack, and how long they slept.

When ``sched_switch`` takes a thread off the CPU blocked, the time is kept; when
``sched_waking`` wakes it, the waker is the current task: its stacks and the time the
woken thread slept are counted together.
"""

from __future__ import annotations

from typing import Any

from ebpf_magic.tools import frames, sched, stacks
from ebpf_magic.tools.snippets import COMM, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = r"""
const volatile u64 min_block_ns = 1000;
const volatile u64 max_block_ns = -1;
""" + sched.TASK + r"""
#define TASK_RUNNING 0

struct wake_key {
    u32 waker_pid;
    u32 target_pid;
    s32 user_stack_id;
    s32 kernel_stack_id;
    char waker_comm[16];
    char target_comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, u32);
    __type(value, u64);
} asleep SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 17);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct wake_key);
    __type(value, u64);
} counts SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    u32 tid = prev->pid;
    if (!tid || task_state(prev) == TASK_RUNNING || !task_wanted(prev))
        return 0;
    u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&asleep, &tid, &now, BPF_ANY);
    return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(on_waking, struct task_struct *p)
{
    u32 tid = p->pid;
    u64 *since = bpf_map_lookup_elem(&asleep, &tid);
    if (!since)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *since;
    bpf_map_delete_elem(&asleep, &tid);
    if (delta < min_block_ns || delta > max_block_ns)
        return 0;
    struct wake_key key = {.waker_pid = bpf_get_current_pid_tgid() >> 32,
                           .target_pid = p->tgid,
                           .user_stack_id = USER_STACK(ctx),
                           .kernel_stack_id = KERNEL_STACK(ctx)};
    bpf_get_current_comm(key.waker_comm, sizeof(key.waker_comm));
    __builtin_memcpy(key.target_comm, p->comm, sizeof(key.target_comm));
    MAP_ADD(&counts, &key, delta);
    return 0;
}
"""


def source(options: dict) -> str:
    return stacks.stack_entries(options["stack_storage_size"]) + stacks.STACK_MAP + SOURCE


def table(r: Reading) -> Any:
    """One row per waker, woken process and waker stack: waker_pid, target_pid,
    waker_comm, target_comm, stack (the waker's, folded, root first), blocked_us (the
    woken threads' time asleep until woken this way), largest first."""
    df = stacks.stack_table(r, "counts", "blocked_us", scale=1e3, pid="waker_pid")
    return df[["waker_pid", "waker_comm", "target_pid", "target_comm", "stack", "blocked_us"]]


def plot(run: ToolRun, ax: Any) -> Any:
    """A flame graph of wakeups: woken command, then the waker's command and stack."""
    df = run.df
    rows = df.assign(comm=df["target_comm"].astype(str) + ";" + df["waker_comm"].astype(str))
    return frames.plot_flame(rows, "blocked_us", ax, "time asleep, by waker")


def _block(name: str, flags: tuple[str, ...], what: str, sets: str) -> Option:
    return Option(name, flags, f"{what} time asleep to count, in microseconds",
                  type=natural, sets=sets, to_c=lambda us: us * 1000, metavar="US")


TOOL = Tool(
    name="wakeuptime",
    answers="Who wakes up blocked threads (by the waker's stack), and how long did they "
            "sleep?",
    source=source, table=table, plot=plot,
    options=[PID, TID, COMM, *stacks.stack_options_lowercase(),
             _block("min_block_us", ("-m", "--min-block-time"), "the least", "min_block_ns"),
             _block("max_block_us", ("-M", "--max-block-time"), "the most", "max_block_ns"),
             stacks.STACK_STORAGE],
)
