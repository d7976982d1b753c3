"""hardirqs: time spent in hardware interrupt handlers, by interrupt.

``irq:irq_handler_entry`` notes when a handler starts on a CPU (handlers do not nest),
``irq:irq_handler_exit`` adds the time to the interrupt's count, sum and log2
histogram, kept per CPU and summed when read.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import LOG2
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = LOG2 + r"""
struct irq_key {
    s32 irq;
    char name[32];
};

struct irq_slot_key {
    s32 irq;
    u32 slot;
    char name[32];
};

struct irq_start {
    u64 time;
    struct irq_key key;
};

struct irq_stats {
    u64 count;
    u64 total_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, u32);
    __type(value, struct irq_start);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 4096);
    __type(key, struct irq_key);
    __type(value, struct irq_stats);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, struct irq_slot_key);
    __type(value, u64);
} hist SEC(".maps");

SEC("tracepoint/irq/irq_handler_entry")
int on_entry(struct trace_event_raw_irq_handler_entry *ctx)
{
    u32 zero = 0;
    struct irq_start *s = bpf_map_lookup_elem(&start, &zero);
    if (!s)
        return 0;
    s->key.irq = ctx->irq;
    bpf_probe_read_kernel_str(s->key.name, sizeof(s->key.name),
                              (void *)ctx + (ctx->__data_loc_name & 0xffff));
    s->time = bpf_ktime_get_ns();
    return 0;
}

SEC("tracepoint/irq/irq_handler_exit")
int on_exit(void *ctx)
{
    u32 zero = 0;
    struct irq_start *s = bpf_map_lookup_elem(&start, &zero);
    if (!s || !s->time)
        return 0;
    u64 delta = bpf_ktime_get_ns() - s->time;
    s->time = 0;
    struct irq_stats *st = bpf_map_lookup_elem(&stats, &s->key);
    if (!st) {
        struct irq_stats init = {};
        bpf_map_update_elem(&stats, &s->key, &init, BPF_NOEXIST);
        st = bpf_map_lookup_elem(&stats, &s->key);
        if (!st)
            return 0;
    }
    st->count++;
    st->total_ns += delta;
    struct irq_slot_key hk = {.irq = s->key.irq, .slot = log2_slot(delta / 1000)};
    __builtin_memcpy(hk.name, s->key.name, sizeof(hk.name));
    u64 one = 1, *n = bpf_map_lookup_elem(&hist, &hk);
    if (n)
        (*n)++;
    else
        bpf_map_update_elem(&hist, &hk, &one, BPF_NOEXIST);
    return 0;
}
"""


def table(r: Reading) -> pd.DataFrame:
    """One row per interrupt: irq (its number), name (its handler's), count, total_us,
    mean_us, most time first."""
    df = frames.summed(r.maps("stats"))
    cols = ["irq", "name", "count", "total_us", "mean_us"]
    if not len(df):
        return pd.DataFrame({c: [] for c in cols})
    total = df["total_ns"].to_numpy() / 1e3
    out = pd.DataFrame({"irq": df["irq"], "name": df["name"], "count": df["count"],
                        "total_us": total, "mean_us": total / df["count"].clip(lower=1)})
    return out.sort_values("total_us", ascending=False, ignore_index=True)[cols]


def distribution(r: Reading) -> pd.DataFrame:
    """Per interrupt, log2 buckets of handler time: irq, name, low_us, high_us, count."""
    df = frames.summed(r.maps("hist")).rename(columns={"value": "count"})
    return frames.log2_table(df, "us", by=["irq", "name"])


def plot(run: ToolRun, ax: Any) -> Any:
    """Time in each interrupt's handlers."""
    df = run.df
    if run.interval:
        df = df.groupby(["irq", "name"], as_index=False)["total_us"].sum()
    return frames.plot_bars(df, ["irq", "name"], "total_us", ax, "hard interrupt time")


TOOL = Tool(
    name="hardirqs",
    answers="Which hardware interrupts fire, how often, and how much CPU time do their "
            "handlers take?",
    source=SOURCE, table=table, plot=plot, tables={"distribution": distribution},
    interval=True,
)
