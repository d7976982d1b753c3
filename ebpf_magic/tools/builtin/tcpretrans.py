"""tcpretrans: TCP segments retransmitted, on which connections, in which state.

``tcp_retransmit_skb`` (a BTF tracepoint) gives the socket; its addresses and state are
read with CO-RE. Retransmissions happen in timers and softirqs, so no process is named.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ebpf_magic.tools import frames, net
from ebpf_magic.tools.tool import Reading, Tool, ToolRun

SOURCE = net.FLOW + r"""
struct event {
    u64 time;
    s32 state;
    u32 pad;
    struct flow flow;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
    struct flow f = {};
    read_flow(sk, &f);
    if (!flow_wanted(&f))
        return 0;
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return 0;
    e->time = bpf_ktime_get_ns();
    e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
    e->flow = f;
    bpf_ringbuf_submit(e, 0);
    return 0;
}
"""

COLUMNS = ["time", "family", "laddr", "lport", "raddr", "rport", "state"]


def table(r: Reading) -> pd.DataFrame:
    """One row per retransmitted segment: time, family, laddr, lport, raddr, rport, state
    (the connection's TCP state)."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({"time": ev["time"], **net.flow_columns(ev),
                         "state": net.state_names(ev["state"])})


def counts(r: Reading) -> pd.DataFrame:
    """Retransmits per connection (tcpretrans -c): laddr, lport, raddr, rport, retransmits."""
    df = table(r)
    out = df.groupby(["laddr", "lport", "raddr", "rport"], as_index=False).size()
    out = out.rename(columns={"size": "retransmits"})
    return out.sort_values("retransmits", ascending=False, ignore_index=True)


def plot(run: ToolRun, ax: Any) -> Any:
    """Retransmits per second over time, by remote address."""
    df = run.df.assign(peer=lambda d: d["raddr"].astype(str) + ":" + d["rport"].astype(str))
    ax = frames.plot_rate(df, ax, by="peer")
    ax.set_title("TCP retransmits per second")
    return ax


TOOL = Tool(
    name="tcpretrans",
    answers="Which TCP connections retransmit, how often, in which state?",
    source=SOURCE, table=table, plot=plot, tables={"counts": counts},
    options=[net.LPORT, net.RPORT, net.IPV4, net.IPV6],
    prepare=net.family, time={"time": "monotonic"},
)
