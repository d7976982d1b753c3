"""tcpconnect: outgoing TCP connections (connect), by whom, to where, whether they were
established, and how long that took.

``inet_sock_set_state`` to SYN_SENT happens in the connecting process; the socket's next
state (ESTABLISHED, or CLOSE when refused or timed out) ends the attempt, with the
local port assigned by then.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from ebpf_magic.tools import frames, net
from ebpf_magic.tools.snippets import COMM, FILTER, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = FILTER + net.FLOW + r"""
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2

const volatile u32 targ_uid = 0;
const volatile bool targ_uid_set = false;

struct attempt {
    u64 start;
    u32 pid;
    u32 tid;
    u32 uid;
    char comm[16];
};

struct event {
    u64 time;
    u64 latency_ns;
    u32 pid;
    u32 tid;
    u32 uid;
    s32 state;
    struct flow flow;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, const struct sock *);
    __type(value, struct attempt);
} attempts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    if (newstate == TCP_SYN_SENT) {
        u32 uid = (u32)bpf_get_current_uid_gid();
        if ((targ_uid_set && uid != targ_uid) || !current_wanted())
            return 0;
        u64 id = bpf_get_current_pid_tgid();
        struct attempt a = {.start = bpf_ktime_get_ns(), .pid = id >> 32, .tid = (u32)id,
                            .uid = uid};
        bpf_get_current_comm(a.comm, sizeof(a.comm));
        bpf_map_update_elem(&attempts, &sk, &a, BPF_ANY);
        return 0;
    }
    struct attempt *a = bpf_map_lookup_elem(&attempts, &sk);
    if (!a)
        return 0;
    struct flow f = {};
    read_flow(sk, &f);
    if (flow_wanted(&f)) {
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            e->time = bpf_ktime_get_ns();
            e->latency_ns = e->time - a->start;
            e->pid = a->pid;
            e->tid = a->tid;
            e->uid = a->uid;
            e->state = newstate;
            e->flow = f;
            __builtin_memcpy(e->comm, a->comm, sizeof(e->comm));
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&attempts, &sk);
    return 0;
}
"""

COLUMNS = ["time", "pid", "tid", "uid", "comm", "family", "laddr", "lport", "raddr", "rport",
           "established", "state", "latency_us"]


def table(r: Reading) -> pd.DataFrame:
    """One row per connect: time (its outcome's), pid, tid, uid, comm, family, laddr,
    lport, raddr, rport, established (True when the handshake completed), state (the
    state it moved to: ESTABLISHED, CLOSE...), latency_us (SYN sent to that state)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({"time": ev["time"], "pid": ev["pid"], "tid": ev["tid"],
                         "uid": ev["uid"], "comm": ev["comm"], **net.flow_columns(ev),
                         "established": ev["state"].to_numpy() == 1,
                         "state": net.state_names(ev["state"]),
                         "latency_us": ev["latency_ns"].to_numpy() / 1e3})


def counts(r: Reading) -> pd.DataFrame:
    """Connections per process and destination (tcpconnect -c): pid, comm, raddr, rport,
    connects, established."""
    df = table(r)
    grouped = df.groupby(["pid", "comm", "raddr", "rport"], as_index=False)
    out = grouped.agg(connects=("established", "size"), established=("established", "sum"))
    return out.sort_values("connects", ascending=False, ignore_index=True)


def plot(run: ToolRun, ax: Any) -> Any:
    """Connections per destination."""
    return frames.plot_bars(run.table("counts"), ["comm", "raddr", "rport"], "connects", ax,
                            "TCP connects")


TOOL = Tool(
    name="tcpconnect",
    answers="Which processes open TCP connections to where, do they succeed, and how long "
            "does the handshake take?",
    source=SOURCE, table=table, plot=plot, tables={"counts": counts},
    options=[PID, TID, COMM, net.LPORT, replace(net.RPORT, flags=("-P", "--port")),
             net.IPV4, net.IPV6,
             Option("uid", ("-u", "--uid"), "only this user id", type=natural,
                    sets="targ_uid", metavar="UID")],
    prepare=lambda o: {**net.family(o), "targ_uid_set": o["uid"] is not None},
    time={"time": "monotonic"},
)
