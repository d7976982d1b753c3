"""offcputime: where threads block, and for how long: off-CPU time by stack.

When ``sched_switch`` takes a thread off the CPU, its kernel and user stacks (it is the
current task there) and the time are kept; when it is switched back in, the time away
is added to that stack's total.
"""

from __future__ import annotations

from typing import Any

from ebpf_magic.tools import frames, sched, stacks
from ebpf_magic.tools.snippets import COMM, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = r"""
const volatile u64 min_block_ns = 1000;
const volatile u64 max_block_ns = -1;
const volatile long targ_state = -1;
""" + sched.TASK + r"""
struct off_key {
    u32 pid;
    u32 tid;
    s32 user_stack_id;
    s32 kernel_stack_id;
    char comm[16];
};

struct off_start {
    u64 time;
    s32 user_stack_id;
    s32 kernel_stack_id;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, u32);
    __type(value, struct off_start);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 17);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct off_key);
    __type(value, u64);
} counts SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    u64 now = bpf_ktime_get_ns();
    u32 tid = prev->pid;
    if (tid && task_wanted(prev) && (targ_state < 0 || task_state(prev) == targ_state)) {
        struct off_start s = {.time = now, .user_stack_id = USER_STACK(ctx),
                              .kernel_stack_id = KERNEL_STACK(ctx)};
        bpf_map_update_elem(&start, &tid, &s, BPF_ANY);
    }
    tid = next->pid;
    struct off_start *s = bpf_map_lookup_elem(&start, &tid);
    if (!s)
        return 0;
    u64 delta = now - s->time;
    struct off_key key = {.pid = next->tgid, .tid = tid, .user_stack_id = s->user_stack_id,
                          .kernel_stack_id = s->kernel_stack_id};
    bpf_map_delete_elem(&start, &tid);
    if (delta < min_block_ns || delta > max_block_ns)
        return 0;
    __builtin_memcpy(key.comm, next->comm, sizeof(key.comm));
    MAP_ADD(&counts, &key, delta);
    return 0;
}
"""


def source(options: dict) -> str:
    return stacks.stack_entries(options["stack_storage_size"]) + stacks.STACK_MAP + SOURCE


def table(r: Reading) -> Any:
    """One row per thread and stack: pid, tid, comm, stack (folded, user root first, then
    kernel frames down to the switch), offcpu_us (its total time off the CPU), largest
    first."""
    return stacks.stack_table(r, "counts", "offcpu_us", scale=1e3)


def plot(run: ToolRun, ax: Any) -> Any:
    """A flame graph of off-CPU time (width: microseconds blocked)."""
    return frames.plot_flame(run.df, "offcpu_us", ax, "off-CPU time")


def _block(name: str, flags: tuple[str, ...], what: str, sets: str) -> Option:
    return Option(name, flags, f"{what} blocked time to count, in microseconds",
                  type=natural, sets=sets, to_c=lambda us: us * 1000, metavar="US")


TOOL = Tool(
    name="offcputime",
    answers="Where (in which stacks) do threads wait off the CPU, and for how long?",
    source=source, table=table, plot=plot,
    options=[PID, TID, COMM, *stacks.stack_options_lowercase(),
             _block("min_block_us", ("-m", "--min-block-time"), "the least", "min_block_ns"),
             _block("max_block_us", ("-M", "--max-block-time"), "the most", "max_block_ns"),
             Option("state", ("--state",), "only threads that left the CPU in this state "
                    "(0 runnable, 1 interruptible sleep, 2 uninterruptible)", type=natural,
                    sets="targ_state", metavar="STATE"),
             stacks.STACK_STORAGE],
)
