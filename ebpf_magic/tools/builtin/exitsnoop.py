"""exitsnoop: processes (or threads) ending, with their age and how they ended.

On ``sched:sched_process_exit`` the exiting task is the current one: its exit code,
start time and parent are read from its ``task_struct`` with CO-RE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.snippets import COMM, FILTER, PID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, flag

SOURCE = FILTER + r"""
const volatile bool targ_per_thread = false;
const volatile bool targ_failed = false;

struct event {
    u64 time;
    u64 age_ns;
    u32 pid;
    u32 tid;
    u32 ppid;
    s32 exit_code;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tracepoint/sched/sched_process_exit")
int on_exit(void *ctx)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    if (!targ_per_thread && pid != tid)
        return 0;
    if (!current_wanted())
        return 0;
    int code = BPF_CORE_READ(task, exit_code);
    if (targ_failed && code == 0)
        return 0;
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return 0;
    e->time = bpf_ktime_get_ns();
    e->age_ns = e->time - BPF_CORE_READ(task, start_time);
    e->pid = pid;
    e->tid = tid;
    e->ppid = BPF_CORE_READ(task, real_parent, tgid);
    e->exit_code = code;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    bpf_ringbuf_submit(e, 0);
    return 0;
}
"""

COLUMNS = ["time", "pid", "tid", "ppid", "comm", "age_s", "status", "signal", "core_dumped"]


def table(r: Reading) -> pd.DataFrame:
    """One row per exit: time, pid, tid, ppid, comm, age_s (since it started), status (its
    exit status, when it exited), signal (the signal that ended it, if one did),
    core_dumped."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    code = ev["exit_code"].to_numpy().astype(np.int64)
    sig = code & 0x7F
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "ppid": ev["ppid"],
        "comm": ev["comm"], "age_s": ev["age_ns"].to_numpy() / 1e9,
        "status": pd.array(np.where(sig == 0, (code >> 8) & 0xFF, -1), dtype="Int64"),
        "signal": frames.signal_name(sig), "core_dumped": (code & 0x80) != 0,
    }).assign(status=lambda d: d["status"].mask(d["status"] < 0))


def plot(run: ToolRun, ax: Any) -> Any:
    """Exits by command and how they ended."""
    df = run.df
    how = np.where(df["signal"] != "", df["signal"], "exit " + df["status"].astype(str))
    counts = df.assign(how=how).groupby(["comm", "how"]).size().rename("exits").reset_index()
    return frames.plot_bars(counts, ["comm", "how"], "exits", ax, "exits by command and cause")


TOOL = Tool(
    name="exitsnoop",
    answers="Which processes end, how old were they, and did they exit or die of a signal?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, COMM,
             Option("per_thread", ("-T", "--per-thread"), "every thread's end, not only "
                    "processes' (their main thread's)", type=flag, sets="targ_per_thread"),
             Option("failed", ("-x", "--failed"), "only non-zero exit codes and signals",
                    type=flag, sets="targ_failed")],
    time={"time": "monotonic"},
)
