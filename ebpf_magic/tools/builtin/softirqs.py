"""softirqs: time spent in soft interrupts (network receive, timers, RCU...), by kind.

``irq:softirq_entry`` notes when a softirq starts on a CPU (they do not nest),
``irq:softirq_exit`` adds the time to its kind's count, sum and log2 histogram, kept
per CPU and summed when read. Kinds are named as the kernel names them in /proc/softirqs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import LOG2
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = LOG2 + r"""
struct sirq_stats {
    u64 count;
    u64 total_ns;
};

struct sirq_slot_key {
    u32 vec;
    u32 slot;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 32);
    __type(key, u32);
    __type(value, u64);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 32);
    __type(key, u32);
    __type(value, struct sirq_stats);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 2048);
    __type(key, struct sirq_slot_key);
    __type(value, u64);
} hist SEC(".maps");

SEC("tracepoint/irq/softirq_entry")
int on_entry(struct trace_event_raw_softirq *ctx)
{
    u32 vec = ctx->vec;
    u64 now = bpf_ktime_get_ns();
    bpf_map_update_elem(&start, &vec, &now, BPF_ANY);
    return 0;
}

SEC("tracepoint/irq/softirq_exit")
int on_exit(struct trace_event_raw_softirq *ctx)
{
    u32 vec = ctx->vec;
    u64 *t0 = bpf_map_lookup_elem(&start, &vec);
    if (!t0 || !*t0)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *t0;
    *t0 = 0;
    struct sirq_stats *st = bpf_map_lookup_elem(&stats, &vec);
    if (!st)
        return 0;
    st->count++;
    st->total_ns += delta;
    struct sirq_slot_key hk = {.vec = vec, .slot = log2_slot(delta / 1000)};
    u64 one = 1, *n = bpf_map_lookup_elem(&hist, &hk);
    if (n)
        (*n)++;
    else
        bpf_map_update_elem(&hist, &hk, &one, BPF_NOEXIST);
    return 0;
}
"""


@functools.cache
def kinds() -> dict[int, str]:
    """``{vec: name}`` as this kernel names them: the rows of /proc/softirqs, in vec order
    (``net_rx``, ``timer``...)."""
    try:
        lines = Path("/proc/softirqs").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {i: line.split(":", 1)[0].strip().lower() for i, line in enumerate(lines)}


def _named(vecs: Any) -> list[str]:
    names = kinds()
    return [names.get(int(v), f"vec{int(v)}") for v in vecs]


def table(r: Reading) -> pd.DataFrame:
    """One row per kind of softirq that ran: softirq (net_rx, timer, rcu...), vec (its
    number), count, total_us, mean_us, most time first."""
    df = frames.summed(r.maps("stats"))
    cols = ["softirq", "vec", "count", "total_us", "mean_us"]
    df = df[df["count"] > 0] if len(df) else df
    if not len(df):
        return pd.DataFrame({c: [] for c in cols})
    total = df["total_ns"].to_numpy() / 1e3
    out = pd.DataFrame({"softirq": _named(df["key"]), "vec": df["key"].to_numpy(),
                        "count": df["count"].to_numpy(), "total_us": total,
                        "mean_us": total / df["count"].to_numpy()})
    return out.sort_values("total_us", ascending=False, ignore_index=True)[cols]


def distribution(r: Reading) -> pd.DataFrame:
    """Per kind, log2 buckets of the time each run took: softirq, low_us, high_us, count."""
    df = frames.summed(r.maps("hist")).rename(columns={"value": "count"})
    df = df.assign(softirq=_named(df["vec"])) if len(df) else df.assign(softirq=[])
    return frames.log2_table(df, "us", by=["softirq"])


def plot(run: ToolRun, ax: Any) -> Any:
    """Time in each kind of softirq."""
    df = run.df
    if run.interval:
        df = df.groupby("softirq", as_index=False)["total_us"].sum()
    return frames.plot_bars(df, "softirq", "total_us", ax, "softirq time")


TOOL = Tool(
    name="softirqs",
    answers="Which soft interrupts (network, timers, RCU, block...) run, how often, and "
            "for how long?",
    source=SOURCE, table=table, plot=plot, tables={"distribution": distribution},
    interval=True,
)
