"""biosnoop: every block I/O: who issued it, to which disk, where, how big, how long.

The process is the one that submitted the request (``block_io_start``, in its context;
on kernels without it, the one running at ``block_rq_insert``); the time queued runs from
insert to issue, the latency from issue to completion (``block_rq_complete``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import block
from ebpf_magic.tools.snippets import COMM, FILTER, PID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun, Variant

COMMON = FILTER + block.REQUEST + r"""
struct bio_start {
    u64 insert;
    u64 issue;
    u32 pid;
    u32 tid;
    char comm[16];
};

struct event {
    u64 time;
    u64 sector;
    u64 queued_ns;
    u64 latency_ns;
    u32 pid;
    u32 tid;
    u32 dev;
    u32 op;
    u32 bytes;
    s32 error;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, struct request *);
    __type(value, struct bio_start);
} start SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 24);
} events SEC(".maps");

/* the submitting task, in its own context */
static __always_inline void submitted(struct request *rq)
{
    if (!rq_wanted(rq) || !current_wanted())
        return;
    u64 id = bpf_get_current_pid_tgid();
    struct bio_start s = {.pid = id >> 32, .tid = (u32)id};
    bpf_get_current_comm(s.comm, sizeof(s.comm));
    bpf_map_update_elem(&start, &rq, &s, BPF_NOEXIST);
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(on_insert, struct request *rq)
{
    ON_INSERT
    struct bio_start *s = bpf_map_lookup_elem(&start, &rq);
    if (s)
        s->insert = bpf_ktime_get_ns();
    return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(on_issue, struct request *rq)
{
    struct bio_start *s = bpf_map_lookup_elem(&start, &rq);
    if (s)
        s->issue = bpf_ktime_get_ns();
    return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_complete, struct request *rq, int error, unsigned int nr_bytes)
{
    struct bio_start *s = bpf_map_lookup_elem(&start, &rq);
    if (!s)
        return 0;
    if (s->issue) {
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            e->time = bpf_ktime_get_ns();
            e->sector = BPF_CORE_READ(rq, __sector);
            e->queued_ns = s->insert ? s->issue - s->insert : 0;
            e->latency_ns = e->time - s->issue;
            e->pid = s->pid;
            e->tid = s->tid;
            e->dev = rq_dev(rq);
            e->op = rq_op(rq);
            e->bytes = nr_bytes;
            e->error = error;
            __builtin_memcpy(e->comm, s->comm, sizeof(e->comm));
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&start, &rq);
    return 0;
}
"""

IO_START = r"""
SEC("tp_btf/block_io_start")
int BPF_PROG(on_io_start, struct request *rq)
{
    submitted(rq);
    return 0;
}
"""

COLUMNS = ["time", "pid", "tid", "comm", "disk", "op", "sector", "bytes", "queued_us",
           "latency_us", "error"]


def table(r: Reading) -> pd.DataFrame:
    """One row per request, at its completion: time, pid, tid, comm (the submitter), disk,
    op (read, write...), sector, bytes, queued_us (insert to issue; 0 if never queued),
    latency_us (issue to completion), error (the block layer's status, 0 for success)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
        "disk": block.disk_names(ev["dev"]), "op": block.op_names(ev["op"]),
        "sector": ev["sector"], "bytes": ev["bytes"],
        "queued_us": ev["queued_ns"].to_numpy() / 1e3,
        "latency_us": ev["latency_ns"].to_numpy() / 1e3, "error": ev["error"],
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Latency of each I/O over time, by disk and operation."""
    df = run.df
    for (disk, op), part in df.groupby(["disk", "op"]):
        ax.scatter(part["time"], part["latency_us"], s=6, label=f"{disk} {op}")
    ax.set_yscale("log")
    ax.set_ylabel("latency_us")
    ax.set_title("block I/O latency")
    if len(df):
        ax.legend()
        from ebpf_magic.present import plots

        plots.time_axis(ax)
    return ax


TOOL = Tool(
    name="biosnoop",
    answers="Which process does which block I/O, to which disk and sector, how big, and "
            "how long does it take?",
    source=[Variant("block_io_start", COMMON.replace("ON_INSERT", "") + IO_START,
                    about="the submitter from its own context (Linux 6.5 and later)"),
            Variant("insert", COMMON.replace("ON_INSERT", "submitted(rq);"),
                    about="the submitter as the task running at insert")],
    table=table, plot=plot, options=[PID, COMM, block.DISK],
    prepare=block.prepare, time={"time": "monotonic"},
)
