"""tcplife: TCP connections that ended: who, between which addresses, how long, how many
bytes each way.

``inet_sock_set_state`` (a BTF tracepoint, so the ``struct sock`` itself) marks a
connection's birth at its first state before closing, the process at its ``connect``
(SYN_SENT) or its close by the application (FIN_WAIT1, LAST_ACK), and its end at CLOSE,
where the byte counts are read from ``struct tcp_sock`` with CO-RE: ``bytes_acked`` and
``bytes_received``, less the SYN and FINs the state changes show they include.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames, net
from ebpf_magic.tools.snippets import PID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = net.FLOW + r"""
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_CLOSING 11

const volatile u32 targ_pid = 0;

struct life {
    u64 birth;
    u32 pid;
    u8 syn_acked;      /* an active open: the SYN counts in bytes_acked */
    u8 fin_acked;      /* our FIN was acknowledged: it counts in bytes_acked */
    u8 fin_received;   /* theirs arrived: it counts in bytes_received */
    u8 pad;
    struct flow flow;  /* as last seen with its ports (closing unhashes the local one) */
    char comm[16];
};

struct event {
    u64 time;
    u64 duration_ns;
    u64 rx_bytes;
    u64 tx_bytes;
    u32 pid;
    u32 pad;
    struct flow flow;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 16);
    __type(key, const struct sock *);
    __type(value, struct life);
} lives SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, const struct sock *sk, int oldstate, int newstate)
{
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    struct life *l = bpf_map_lookup_elem(&lives, &sk);
    if (newstate < TCP_FIN_WAIT1 && !l) {
        struct life born = {.birth = bpf_ktime_get_ns()};
        bpf_map_update_elem(&lives, &sk, &born, BPF_NOEXIST);
        l = bpf_map_lookup_elem(&lives, &sk);
    }
    if (!l)
        return 0;   /* born before tracing began */
    if (newstate == TCP_SYN_SENT || (!l->pid && (newstate == TCP_FIN_WAIT1 ||
                                                 newstate == TCP_LAST_ACK))) {
        l->pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(l->comm, sizeof(l->comm));
    }
    if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED)
        l->syn_acked = 1;
    if ((oldstate == TCP_FIN_WAIT1 && (newstate == TCP_FIN_WAIT2 ||
                                       newstate == TCP_TIME_WAIT)) ||
        ((oldstate == TCP_LAST_ACK || oldstate == TCP_CLOSING) && newstate == TCP_CLOSE))
        l->fin_acked = 1;
    if (newstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSING || newstate == TCP_TIME_WAIT ||
        (oldstate == TCP_FIN_WAIT2 && newstate == TCP_CLOSE))
        l->fin_received = 1;
    struct flow f = {};
    read_flow(sk, &f);
    if (f.lport)
        l->flow = f;
    if (newstate != TCP_CLOSE)
        return 0;
    if (flow_wanted(&l->flow) && (!targ_pid || l->pid == targ_pid)) {
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            struct tcp_sock *tp = (struct tcp_sock *)sk;
            e->time = bpf_ktime_get_ns();
            e->duration_ns = e->time - l->birth;
            e->rx_bytes = BPF_CORE_READ(tp, bytes_received) - l->fin_received;
            e->tx_bytes = BPF_CORE_READ(tp, bytes_acked) - l->syn_acked - l->fin_acked;
            e->pid = l->pid;
            e->flow = l->flow;
            __builtin_memcpy(e->comm, l->comm, sizeof(e->comm));
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&lives, &sk);
    return 0;
}
"""

COLUMNS = ["time", "pid", "comm", "family", "laddr", "lport", "raddr", "rport", "tx_bytes",
           "rx_bytes", "duration_ms"]


def table(r: Reading) -> pd.DataFrame:
    """One row per connection that closed: time, pid, comm (the process that connected or
    closed it; 0 and "" when none was seen), family, laddr, lport, raddr, rport, tx_bytes
    (payload sent and acknowledged), rx_bytes (payload received), duration_ms (first state
    to close). The SYN and FIN, which TCP numbers like bytes, are not counted."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({"time": ev["time"], "pid": ev["pid"], "comm": ev["comm"],
                         **net.flow_columns(ev), "tx_bytes": ev["tx_bytes"],
                         "rx_bytes": ev["rx_bytes"],
                         "duration_ms": ev["duration_ns"].to_numpy() / 1e6})


def plot(run: ToolRun, ax: Any) -> Any:
    """Bytes each process moved over TCP (sent and received)."""
    df = run.df.groupby(["pid", "comm"], as_index=False)[["tx_bytes", "rx_bytes"]].sum()
    df["bytes"] = df["tx_bytes"] + df["rx_bytes"]
    return frames.plot_bars(df, ["pid", "comm"], "bytes", ax, "TCP bytes by process")


TOOL = Tool(
    name="tcplife",
    answers="Which TCP connections ended: between whom, for how long, moving how many "
            "bytes?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, net.LPORT, net.RPORT, net.IPV4, net.IPV6],
    prepare=net.family, time={"time": "monotonic"},
)
