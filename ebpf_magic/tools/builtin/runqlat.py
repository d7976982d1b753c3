"""runqlat: how long runnable threads wait in a CPU's run queue before they run.

A thread becomes runnable when woken (``sched_wakeup``, ``sched_wakeup_new``) or when it
is switched out still runnable (preempted, in ``sched_switch``); its wait ends when
``sched_switch`` switches it in. Raw BTF tracepoints give the tasks themselves.
"""

from __future__ import annotations

from ebpf_magic.tools import sched
from ebpf_magic.tools.snippets import COMM, MILLISECONDS, PER_PROCESS, PER_THREAD, PID, TID
from ebpf_magic.tools.tool import Tool

SOURCE = sched.TASK + sched.HIST_MAPS + r"""
#define TASK_RUNNING 0

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, u32);
    __type(value, u64);
} queued SEC(".maps");

static __always_inline void enqueue(struct task_struct *t)
{
    if (!t->pid || !task_wanted(t))
        return;
    u32 tid = t->pid;
    u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&queued, &tid, &now, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
    enqueue(p);
    return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(on_wakeup_new, struct task_struct *p)
{
    enqueue(p);
    return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    if (task_state(prev) == TASK_RUNNING)
        enqueue(prev);
    u32 tid = next->pid;
    u64 *since = bpf_map_lookup_elem(&queued, &tid);
    if (!since)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *since;
    bpf_map_delete_elem(&queued, &tid);
    account(next, delta);
    return 0;
}
"""

TOOL = Tool(
    name="runqlat",
    answers="How long do runnable threads wait for a CPU (run queue latency)?",
    source=SOURCE, table=sched.hist_table, plot=sched.hist_plot("run queue latency"),
    tables={"totals": sched.totals_table},
    options=[PID, TID, COMM, MILLISECONDS, PER_PROCESS, PER_THREAD],
    interval=True,
)
