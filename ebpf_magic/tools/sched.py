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

static __always_inline long task_state(struct task_struct *t)
{
    if (bpf_core_field_exists(t->__state))
        return BPF_CORE_READ(t, __state);
    return BPF_CORE_READ((struct task_struct___before_5_14 *)t, state);
}

static __always_inline bool task_wanted(struct task_struct *t)
{
    char comm[16] = {};
    if (targ_comm[0])
        BPF_CORE_READ_STR_INTO(&comm, t, comm);
    return wanted(BPF_CORE_READ(t, tgid), BPF_CORE_READ(t, pid), comm);
}

/* the histogram key of a task: its process, its thread, or one histogram for all */
struct hist_key {
    u32 id;
    u32 slot;
};

struct totals {
    u64 count;
    u64 total_ns;
};
"""

HIST_MAPS = r"""
const volatile bool targ_per_process = false;
const volatile bool targ_per_thread = false;
const volatile bool targ_ms = false;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 18);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct hist_key);
    __type(value, u64);
} hist SEC(".maps");

/* count and sum of the values of each histogram */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, u32);
    __type(value, struct totals);
} sums SEC(".maps");

/* the command name of each process or thread with a histogram */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, u32);
    __type(value, char[16]);
} names SEC(".maps");

/* one value of task t (ns) into its histogram and its sums */
static __always_inline void account(struct task_struct *t, u64 delta_ns)
{
    u32 id = targ_per_process ? BPF_CORE_READ(t, tgid) :
             targ_per_thread ? BPF_CORE_READ(t, pid) : 0;
    u64 value = delta_ns / (targ_ms ? 1000000 : 1000);
    struct hist_key key = {.id = id, .slot = log2_slot(value)};
    MAP_ADD(&hist, &key, 1);
    struct totals *s = bpf_map_lookup_elem(&sums, &id);
    if (!s) {
        struct totals zero = {};
        bpf_map_update_elem(&sums, &id, &zero, BPF_NOEXIST);
        s = bpf_map_lookup_elem(&sums, &id);
        if (!s)
            return;
    }
    __sync_fetch_and_add(&s->count, 1);
    __sync_fetch_and_add(&s->total_ns, delta_ns);
    if (id) {
        char comm[16];
        BPF_CORE_READ_STR_INTO(&comm, t, comm);
        bpf_map_update_elem(&names, &id, &comm, BPF_ANY);
    }
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


def _named(df: pd.DataFrame, r: Reading, key: str) -> pd.DataFrame:
    """``df`` with its ``key`` id column labelled by :func:`labels` and the names map."""
    by = labels(r.options)
    if not by:
        return df.drop(columns=[key])
    names = r.maps("names")
    comm = dict(zip(names["key"], names["value"], strict=True)) if len(names) else {}
    ids = df[key].to_numpy()
    return df.drop(columns=[key]).assign(**{by[0]: ids, "comm": [comm.get(i, "") for i in ids]})


def hist_table(r: Reading) -> pd.DataFrame:
    """Log2 buckets: [pid or tid, comm,] low_us, high_us, count (_ms with milliseconds)."""
    u = unit(r.options)
    df = _named(r.maps("hist").rename(columns={"value": "count"}), r, "id")
    return frames.log2_table(df, u, by=labels(r.options))


def totals_table(r: Reading) -> pd.DataFrame:
    """Per histogram: [pid or tid, comm,] count, total_us, mean_us (exact sums, not from
    buckets; _ms with milliseconds)."""
    u = unit(r.options)
    scale = 1e6 if u == "ms" else 1e3
    df = r.maps("sums").rename(columns={"key": "id"})
    by = labels(r.options)
    if not len(df):
        return pd.DataFrame({c: [] for c in [*by, "count", f"total_{u}", f"mean_{u}"]})
    total = df["total_ns"].to_numpy() / scale
    counts = df["count"].to_numpy()
    out = _named(pd.DataFrame({"id": df["id"].to_numpy(), "count": counts.astype(np.int64),
                               f"total_{u}": total, f"mean_{u}": total / np.maximum(counts, 1)}),
                 r, "id")
    return out[[*by, "count", f"total_{u}", f"mean_{u}"]].sort_values(
        f"total_{u}", ascending=False, ignore_index=True)


def hist_plot(what: str) -> Any:
    """The plot of a histogram tool: bars, or a heatmap over time for interval runs."""
    def plot(run: ToolRun, ax: Any) -> Any:
        u = unit(run.options)
        if run.interval:
            return frames.plot_heatmap(run.df, u, ax, what)
        return frames.plot_histogram(run.df, u, ax, what, by=labels(run.options),
                                     name=run.tool.name)

    return plot
