"""biolatency: block I/O latency, from issue to the device (or, with ``queued``, from
being queued) to completion, as log2 histograms.

BTF tracepoints on ``struct request`` (``block_rq_insert``, ``block_rq_issue``,
``block_rq_complete``) key each request by its address; per disk and per operation on
request.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import block, frames
from ebpf_magic.tools.snippets import ADD, LOG2, MILLISECONDS, unit
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, flag

SOURCE = LOG2 + ADD + block.REQUEST + r"""
const volatile bool targ_queued = false;
const volatile bool targ_per_disk = false;
const volatile bool targ_per_op = false;
const volatile bool targ_ms = false;

struct bio_key {
    u32 dev;
    u32 op;
    u32 slot;
    u32 pad;
};

struct bio_totals {
    u64 count;
    u64 total_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, struct request *);
    __type(value, u64);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 14);
    __type(key, struct bio_key);
    __type(value, u64);
} hist SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 12);
    __type(key, struct bio_key);
    __type(value, struct bio_totals);
} sums SEC(".maps");

static __always_inline void begin(struct request *rq, bool issue)
{
    if (!rq_wanted(rq))
        return;
    u64 now = bpf_ktime_get_ns();
    /* queued time counts from insert; a request issued without one starts at issue */
    bpf_map_update_elem(&start, &rq, &now, issue && targ_queued ? BPF_NOEXIST : BPF_ANY);
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(on_insert, struct request *rq)
{
    if (targ_queued)
        begin(rq, false);
    return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(on_issue, struct request *rq)
{
    begin(rq, true);
    return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_complete, struct request *rq, int error, unsigned int nr_bytes)
{
    u64 *t0 = bpf_map_lookup_elem(&start, &rq);
    if (!t0)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *t0;
    bpf_map_delete_elem(&start, &rq);
    struct bio_key key = {.dev = targ_per_disk ? rq_dev(rq) : 0,
                          .op = targ_per_op ? rq_op(rq) : 0};
    struct bio_totals *s = bpf_map_lookup_elem(&sums, &key);
    if (!s) {
        struct bio_totals zero = {};
        bpf_map_update_elem(&sums, &key, &zero, BPF_NOEXIST);
        s = bpf_map_lookup_elem(&sums, &key);
    }
    if (s) {
        __sync_fetch_and_add(&s->count, 1);
        __sync_fetch_and_add(&s->total_ns, delta);
    }
    key.slot = log2_slot(delta / (targ_ms ? 1000000 : 1000));
    MAP_ADD(&hist, &key, 1);
    return 0;
}
"""


def _labels(options: dict) -> list[str]:
    return (["disk"] if options.get("per_disk") else []) + (
        ["op"] if options.get("per_op") else [])


def _named(df: pd.DataFrame, options: dict) -> pd.DataFrame:
    by = _labels(options)
    out = df.drop(columns=["dev", "op", "pad"])
    if "disk" in by:
        out["disk"] = block.disk_names(df["dev"])
    if "op" in by:
        out["op"] = block.op_names(df["op"])
    return out


def table(r: Reading) -> pd.DataFrame:
    """Log2 buckets of I/O latency: [disk,] [op,] low_us, high_us, count (_ms with
    milliseconds)."""
    df = r.maps("hist").rename(columns={"value": "count"})
    return frames.log2_table(_named(df, r.options), unit(r.options), by=_labels(r.options))


def totals(r: Reading) -> pd.DataFrame:
    """Per [disk and op]: count, total_us, mean_us (exact sums; _ms with milliseconds)."""
    u = unit(r.options)
    scale = 1e6 if u == "ms" else 1e3
    df = r.maps("sums")
    by = _labels(r.options)
    if not len(df):
        return pd.DataFrame({c: [] for c in [*by, "count", f"total_{u}", f"mean_{u}"]})
    out = _named(df.drop(columns=["slot"]), r.options)
    out[f"total_{u}"] = out.pop("total_ns") / scale
    out[f"mean_{u}"] = out[f"total_{u}"] / out["count"].clip(lower=1)
    return out[[*by, "count", f"total_{u}", f"mean_{u}"]]


def plot(run: ToolRun, ax: Any) -> Any:
    """The latency histogram (a heatmap over time for interval runs)."""
    u = unit(run.options)
    if run.interval:
        return frames.plot_heatmap(run.df, u, ax, "block I/O latency")
    return frames.plot_histogram(run.df, u, ax, "block I/O latency", by=_labels(run.options),
                                 name="biolatency")


TOOL = Tool(
    name="biolatency",
    answers="How long do block I/Os take (per disk, per operation)?",
    source=SOURCE, table=table, plot=plot, tables={"totals": totals},
    options=[block.DISK, MILLISECONDS,
             Option("queued", ("-Q", "--queued"), "include the time queued in the kernel",
                    type=flag, sets="targ_queued"),
             Option("per_disk", ("-D", "--disks"), "one histogram per disk", type=flag,
                    sets="targ_per_disk"),
             Option("per_op", ("-F", "--flags"), "one histogram per operation (read, "
                    "write...)", type=flag, sets="targ_per_op")],
    prepare=block.prepare, interval=True,
)
