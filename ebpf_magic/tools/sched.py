"""C the scheduler tools share: a task's state and the filters, on BTF-typed tasks.

``task_state(t)`` reads ``__state`` (``state`` before Linux 5.14) with CO-RE;
``task_wanted(t)`` applies the ``-p``/``-t``/``--comm`` filters of
:data:`~ebpf_magic.tools.snippets.FILTER` to any task, not only the current one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import ADD, FILTER, LOG2, unit
from ebpf_magic.tools.tool import Reading, ToolRun

TASK = FILTER + LOG2 + ADD + r"""
struct task_struct___before_5_14 {
    volatile long state;
} __attribute__((preserve_access_index));

/* the tasks of BTF tracepoints are read directly (CO-RE relocated loads, no helper call) */
static __always_inline long task_state(struct task_struct *t)
{
    if (bpf_core_field_exists(t->__state))
        return t->__state;
    return ((struct task_struct___before_5_14 *)t)->state;
}

static __always_inline bool task_wanted(struct task_struct *t)
{
    if (!targ_pid && !targ_tid && !targ_comm[0])
        return true;   /* no filter: the verifier drops the rest */
    char comm[16];
    __builtin_memcpy(comm, t->comm, sizeof(comm));
    return wanted(t->tgid, t->pid, comm);
}

"""


HIST_MAPS = r"""
#define SLOTS 40   /* log2 buckets: up to 2^39 us (6 days) */

const volatile bool targ_per_process = false;
const volatile bool targ_per_thread = false;
const volatile bool targ_ms = false;

/* one histogram per process, thread, or for all (id 0): its buckets, count and sum */
struct hist {
    u64 slots[SLOTS];
    u64 count;
    u64 total_ns;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, u32);
    __type(value, struct hist);
} hists SEC(".maps");

/* a zeroed histogram to start from (too big for the stack) */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct hist);
} blank SEC(".maps");

/* one value of task t (ns) into its histogram */
/* one value of task t (ns) into its histogram, made with the task's name when first seen */
static __always_inline void account(struct task_struct *t, u64 delta_ns)
{
    u32 id = targ_per_process ? t->tgid : targ_per_thread ? t->pid : 0;
    struct hist *h = bpf_map_lookup_elem(&hists, &id);
    if (!h) {
        struct hist *zero = bpf_map_lookup_elem(&blank, &(u32){0});
        if (!zero)
            return;
        if (id)
            __builtin_memcpy(zero->comm, t->comm, sizeof(zero->comm));
        bpf_map_update_elem(&hists, &id, zero, BPF_NOEXIST);
        h = bpf_map_lookup_elem(&hists, &id);
        if (!h)
            return;
    }
    u32 slot = log2_slot(delta_ns / (targ_ms ? 1000000 : 1000));
    if (slot >= SLOTS)
        slot = SLOTS - 1;
    __sync_fetch_and_add(&h->slots[slot], 1);
    __sync_fetch_and_add(&h->count, 1);
    __sync_fetch_and_add(&h->total_ns, delta_ns);
}
"""


# -- tables ------------------------------------------------------------------------------


def labels(options: Mapping[str, Any]) -> list[str]:
    """The columns naming a histogram: pid and comm, tid and comm, or none."""
    if options.get("per_process"):
        return ["pid", "comm"]
    if options.get("per_thread"):
        return ["tid", "comm"]
    return []


def _labelled(df: pd.DataFrame, r: Reading, columns: dict[str, Any]) -> pd.DataFrame:
    """``columns`` with the histograms' labels (pid or tid, and comm) first."""
    by = labels(r.options)
    named = {by[0]: df["key"].to_numpy(), "comm": df["comm"].to_numpy()} if by else {}
    return pd.DataFrame({**named, **columns})


def hist_table(r: Reading) -> pd.DataFrame:
    """Log2 buckets: [pid or tid, comm,] low_us, high_us, count (_ms with milliseconds)."""
    df = r.maps("hists")
    slots = frames.array(df, "slots")
    rows, cols = np.nonzero(slots)
    long = _labelled(df.iloc[rows].reset_index(drop=True), r,
                     {"slot": cols, "count": slots[rows, cols]})
    return frames.log2_table(long, unit(r.options), by=labels(r.options))


def totals_table(r: Reading) -> pd.DataFrame:
    """Per histogram: [pid or tid, comm,] count, total_us, mean_us (exact sums, not from
    buckets; _ms with milliseconds)."""
    u = unit(r.options)
    scale = 1e6 if u == "ms" else 1e3
    df = r.maps("hists")
    counts = df["count"].to_numpy().astype(np.int64)
    total = df["total_ns"].to_numpy() / scale
    out = _labelled(df, r, {"count": counts, f"total_{u}": total,
                            f"mean_{u}": total / np.maximum(counts, 1)})
    return out[out["count"] > 0].sort_values(f"total_{u}", ascending=False,
                                             ignore_index=True)


def hist_plot(what: str) -> Any:
    """The plot of a histogram tool: bars, or a heatmap over time for interval runs."""
    def plot(run: ToolRun, ax: Any) -> Any:
        u = unit(run.options)
        if run.interval:
            return frames.plot_heatmap(run.df, u, ax, what)
        return frames.plot_histogram(run.df, u, ax, what, by=labels(run.options),
                                     name=run.tool.name)

    return plot
