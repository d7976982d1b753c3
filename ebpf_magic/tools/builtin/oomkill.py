"""oomkill: processes the out-of-memory killer chose, with their memory and the process
whose allocation triggered it.

``oom:mark_victim`` fires in the context of the task that ran out of memory (the
trigger); its fields name the victim and its memory (read with CO-RE, so kernels whose
tracepoint carries only the pid still load, with the other fields zero).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = r"""
struct event {
    u64 time;
    u32 pid;
    u32 trigger_pid;
    u32 trigger_tid;
    u32 uid;
    s32 oom_score_adj;
    u64 total_vm;
    u64 anon_rss;
    u64 file_rss;
    u64 shmem_rss;
    u64 pgtables;
    char comm[16];
    char trigger_comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} events SEC(".maps");

SEC("tracepoint/oom/mark_victim")
int on_victim(struct trace_event_raw_mark_victim *ctx)
{
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return 0;
    __builtin_memset(e, 0, sizeof(*e));
    u64 id = bpf_get_current_pid_tgid();
    e->time = bpf_ktime_get_ns();
    e->pid = ctx->pid;
    e->trigger_pid = id >> 32;
    e->trigger_tid = (u32)id;
    bpf_get_current_comm(e->trigger_comm, sizeof(e->trigger_comm));
    if (bpf_core_field_exists(ctx->__data_loc_comm))
        bpf_probe_read_kernel_str(e->comm, sizeof(e->comm),
                                  (void *)ctx + (ctx->__data_loc_comm & 0xffff));
    if (bpf_core_field_exists(ctx->total_vm)) {
        e->total_vm = ctx->total_vm;
        e->anon_rss = ctx->anon_rss;
        e->file_rss = ctx->file_rss;
        e->shmem_rss = ctx->shmem_rss;
    }
    if (bpf_core_field_exists(ctx->uid))
        e->uid = ctx->uid;
    if (bpf_core_field_exists(ctx->pgtables))
        e->pgtables = ctx->pgtables;
    if (bpf_core_field_exists(ctx->oom_score_adj))
        e->oom_score_adj = ctx->oom_score_adj;
    bpf_ringbuf_submit(e, 0);
    return 0;
}
"""

COLUMNS = ["time", "pid", "comm", "uid", "oom_score_adj", "total_vm_kb", "anon_rss_kb",
           "file_rss_kb", "shmem_rss_kb", "pgtables_kb", "trigger_pid", "trigger_tid",
           "trigger_comm"]


def table(r: Reading) -> pd.DataFrame:
    """One row per victim: time, pid, comm, uid, oom_score_adj, its memory (total_vm_kb,
    anon_rss_kb, file_rss_kb, shmem_rss_kb, pgtables_kb), and the trigger: trigger_pid,
    trigger_tid, trigger_comm (the task whose allocation failed)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    out = ev.rename(columns={f: f"{f}_kb" for f in ("total_vm", "anon_rss", "file_rss",
                                                   "shmem_rss", "pgtables")})
    return out[COLUMNS]


def plot(run: ToolRun, ax: Any) -> Any:
    """Each victim's resident memory when it was killed."""
    df = run.df.assign(rss_kb=lambda d: d["anon_rss_kb"] + d["file_rss_kb"] + d["shmem_rss_kb"])
    return frames.plot_bars(df, ["pid", "comm"], "rss_kb", ax, "OOM victims' resident memory")


TOOL = Tool(
    name="oomkill",
    answers="Which processes does the out-of-memory killer kill, how big were they, and "
            "whose allocation triggered it?",
    source=SOURCE, table=table, plot=plot,
    time={"time": "monotonic"},
)
