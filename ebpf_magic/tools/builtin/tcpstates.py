"""tcpstates: every TCP state change, with the time spent in the state left.

``inet_sock_set_state`` (a BTF tracepoint) gives the socket; the time of its previous
change is kept per socket until it closes. The process is the one running at the change,
which is the socket's own only for changes made in its system calls (connect, close).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames, net
from ebpf_magic.tools.snippets import PID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = net.FLOW + r"""
#define IPPROTO_TCP 6
#define TCP_CLOSE 7

const volatile u32 targ_pid = 0;

struct event {
    u64 time;
    u64 skaddr;
    u64 in_state_ns;
    u32 pid;
    u32 tid;
    s32 oldstate;
    s32 newstate;
    struct flow flow;
    char comm[16];
};

struct seen {
    u64 time;
    struct flow flow;   /* as last seen with its ports (closing unhashes the local one) */
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, const struct sock *);
    __type(value, struct seen);
} last SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (targ_pid && (id >> 32) != targ_pid)
        return 0;
    struct seen now = {.time = bpf_ktime_get_ns()};
    read_flow(sk, &now.flow);
    struct seen *before = bpf_map_lookup_elem(&last, &sk);
    if (!now.flow.lport && before)
        now.flow = before->flow;
    struct flow f = now.flow;
    if (!flow_wanted(&f))
        return 0;
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (e) {
        e->time = now.time;
        e->skaddr = (u64)sk;
        e->in_state_ns = before ? now.time - before->time : 0;
        e->pid = id >> 32;
        e->tid = (u32)id;
        e->oldstate = oldstate;
        e->newstate = newstate;
        e->flow = f;
        bpf_get_current_comm(e->comm, sizeof(e->comm));
        bpf_ringbuf_submit(e, 0);
    }
    if (newstate == TCP_CLOSE)
        bpf_map_delete_elem(&last, &sk);
    else
        bpf_map_update_elem(&last, &sk, &now, BPF_ANY);
    return 0;
}
"""

COLUMNS = ["time", "skaddr", "pid", "tid", "comm", "family", "laddr", "lport", "raddr",
           "rport", "oldstate", "newstate", "in_state_ms"]


def table(r: Reading) -> pd.DataFrame:
    """One row per state change: time, skaddr (the socket's address, which ties its
    changes together), pid, tid, comm (running at the change), family, laddr, lport,
    raddr, rport, oldstate, newstate, in_state_ms (time in oldstate; <NA> for a socket's
    first change seen)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    spent = ev["in_state_ns"].to_numpy() / 1e6
    return pd.DataFrame({"time": ev["time"],
                         "skaddr": [f"0x{int(a):x}" for a in ev["skaddr"]],
                         "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
                         **net.flow_columns(ev),
                         "oldstate": net.state_names(ev["oldstate"]),
                         "newstate": net.state_names(ev["newstate"]),
                         "in_state_ms": pd.array(np.where(spent > 0, spent, np.nan),
                                                 dtype="Float64")})


def plot(run: ToolRun, ax: Any) -> Any:
    """State changes counted by transition."""
    df = run.df
    counts = df.groupby(["oldstate", "newstate"]).size().rename("changes").reset_index()
    return frames.plot_bars(counts, ["oldstate", "newstate"], "changes", ax,
                            "TCP state changes")


TOOL = Tool(
    name="tcpstates",
    answers="Which TCP state changes happen, on which connections, and how long did each "
            "state last?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, net.LPORT, net.RPORT, net.IPV4, net.IPV6],
    prepare=net.family, time={"time": "monotonic"},
)
