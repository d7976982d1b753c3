"""runqlen: how many threads wait in each CPU's run queue, sampled.

A ``cpu-clock`` perf event samples every CPU ``frequency`` times a second and reads the
CPU's ``struct rq``, reached with CO-RE from the running task (its ``se.cfs_rq->rq``
with group scheduling, else the ``rq`` holding that ``cfs_rq``): its ``nr_running``
counts the runnable threads of every scheduling class, the running one among them, so
the waiting ones are one fewer unless the CPU is idle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import ADD
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, count, flag

SOURCE = ADD + r"""
const volatile bool targ_per_cpu = false;

/* the run queue of the CPU a task runs on */
static __always_inline struct rq *rq_of(struct task_struct *task)
{
    struct cfs_rq *cfs = BPF_CORE_READ(task, se.cfs_rq);
    if (bpf_core_field_exists(cfs->rq))
        return BPF_CORE_READ(cfs, rq);
    return (struct rq *)((void *)cfs - bpf_core_field_offset(struct rq, cfs));
}

struct len_key {
    u32 cpu;   /* 0 unless per CPU */
    u32 len;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 14);
    __type(key, struct len_key);
    __type(value, u64);
} samples SEC(".maps");

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u32 running = BPF_CORE_READ(rq_of(task), nr_running);
    u32 len = running > 0 && BPF_CORE_READ(task, pid) ? running - 1 : running;
    struct len_key key = {.cpu = targ_per_cpu ? bpf_get_smp_processor_id() : 0, .len = len};
    MAP_ADD(&samples, &key, 1);
    return 0;
}
"""


def table(r: Reading) -> pd.DataFrame:
    """One row per [cpu and] queue length: [cpu,] queued (threads waiting, the running one
    not counted), samples; lengths from 0 to the longest seen, those never seen with 0."""
    df = r.maps("samples")
    by = ["cpu"] if r.options.get("per_cpu") else []
    if not len(df):
        return pd.DataFrame({c: [] for c in [*by, "queued", "samples"]})
    out = frames.linear_table(df.rename(columns={"len": "slot", "value": "count"}), "len",
                              by=by)
    out = out.drop(columns="high_len").rename(columns={"low_len": "queued",
                                                       "count": "samples"})
    return out[[*by, "queued", "samples"]].reset_index(drop=True)


def occupancy(r: Reading) -> pd.DataFrame:
    """Per [cpu]: samples, and the percent of them with threads waiting (runqlen -O)."""
    df = table(r)
    by = ["cpu"] if r.options.get("per_cpu") else []
    waiting = df["samples"].where(df["queued"] > 0, 0)
    grouped = df.assign(waiting=waiting).groupby(by or (lambda _: 0))[["samples", "waiting"]]
    out = grouped.sum().reset_index(drop=not by)
    out["occupancy_pct"] = 100.0 * out["waiting"] / np.maximum(out["samples"], 1)
    return out[[*by, "samples", "occupancy_pct"]]


def plot(run: ToolRun, ax: Any) -> Any:
    """Samples by run queue length (one bar group per CPU with per_cpu)."""
    df = run.df
    if run.options.get("per_cpu"):
        wide = df.pivot_table(index="queued", columns="cpu", values="samples", fill_value=0)
        wide.plot.bar(ax=ax)
    else:
        ax.bar(df["queued"].astype(str), df["samples"])
    ax.set_xlabel("threads waiting in the run queue")
    ax.set_ylabel("samples")
    ax.set_title("run queue length")
    return ax


TOOL = Tool(
    name="runqlen",
    answers="How many threads wait for each CPU (run queue length), sampled?",
    source=SOURCE, table=table, plot=plot, tables={"occupancy": occupancy},
    options=[Option("per_cpu", ("-C", "--cpus"), "one histogram per CPU", type=flag,
                    sets="targ_per_cpu"),
             Option("frequency", ("-F", "--frequency"), "samples per second on each CPU",
                    type=count, default=99, metavar="HZ")],
    attach=lambda o: [f"profile:hz:{o['frequency']}=on_sample"],
    needs=("software:cpu-clock",),
    interval=True,
)
