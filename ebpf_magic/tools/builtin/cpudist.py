"""cpudist: how long threads run on a CPU each time (or, with ``offcpu``, stay off it).

``sched_switch`` ends one thread's turn and starts the next one's: on-CPU time runs from
switch-in to switch-out, off-CPU time from switch-out to switch-in. The idle task is
left out.
"""

from __future__ import annotations

from typing import Any

from ebpf_magic.tools import sched
from ebpf_magic.tools.snippets import COMM, MILLISECONDS, PER_PROCESS, PER_THREAD, PID, TID
from ebpf_magic.tools.tool import Option, Tool, ToolRun, flag

SOURCE = sched.TASK + sched.HIST_MAPS + r"""
const volatile bool targ_offcpu = false;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, u32);
    __type(value, u64);
} since SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
    u64 now = bpf_ktime_get_ns();
    /* the task whose turn ends here (on-CPU) or begins here (off-CPU) is measured */
    struct task_struct *ends = targ_offcpu ? next : prev;
    struct task_struct *starts = targ_offcpu ? prev : next;
    u32 tid = starts->pid;
    if (tid && task_wanted(starts))
        bpf_map_update_elem(&since, &tid, &now, BPF_ANY);
    tid = ends->pid;
    if (!tid)
        return 0;
    u64 *t0 = bpf_map_lookup_elem(&since, &tid);
    if (!t0)
        return 0;
    u64 delta = now - *t0;
    bpf_map_delete_elem(&since, &tid);
    account(ends, delta);
    return 0;
}
"""


def _plot(run: ToolRun, ax: Any) -> Any:
    what = "off-CPU time" if run.options.get("offcpu") else "on-CPU time"
    return sched.hist_plot(what)(run, ax)


TOOL = Tool(
    name="cpudist",
    answers="How long do threads run on a CPU at a time (with offcpu: how long are they "
            "away from it)?",
    source=SOURCE, table=sched.hist_table, plot=_plot,
    tables={"totals": sched.totals_table},
    options=[PID, TID, COMM, MILLISECONDS, PER_PROCESS, PER_THREAD,
             Option("offcpu", ("-O", "--offcpu"), "measure time off the CPU instead",
                    type=flag, sets="targ_offcpu")],
    interval=True,
)
