"""C and tables the network tools share: a socket's addresses read with CO-RE.

``read_flow(sk, &flow)`` fills a :data:`FLOW` struct (family, local and remote address
and port, host byte order) from a ``struct sock``; :func:`flow_columns` turns a frame's
flow fields into text addresses and ports.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.tool import Option, flag, natural

FLOW = r"""
#define AF_INET 2
#define AF_INET6 10

struct flow {
    u16 family;
    u16 lport;
    u16 rport;
    u16 pad;
    u8 laddr[16];
    u8 raddr[16];
};

const volatile u16 targ_lport = 0;
const volatile u16 targ_rport = 0;
const volatile u16 targ_family = 0;

static __always_inline void read_flow(const struct sock *sk, struct flow *f)
{
    f->family = BPF_CORE_READ(sk, __sk_common.skc_family);
    f->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
    f->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    if (f->family == AF_INET) {
        u32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
        u32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
        __builtin_memcpy(f->laddr, &l, 4);
        __builtin_memcpy(f->raddr, &r, 4);
    } else {
        BPF_CORE_READ_INTO(&f->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
        BPF_CORE_READ_INTO(&f->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    }
}

/* whether a flow passes the -L/-D port and -4/-6 filters */
static __always_inline bool flow_wanted(const struct flow *f)
{
    if (targ_family && f->family != targ_family)
        return false;
    if (targ_lport && f->lport != targ_lport)
        return false;
    if (targ_rport && f->rport != targ_rport)
        return false;
    return true;
}
"""

LPORT = Option("lport", ("-L", "--localport"), "only this local port", type=natural,
               sets="targ_lport", metavar="PORT")
RPORT = Option("rport", ("-D", "--remoteport"), "only this remote port", type=natural,
               sets="targ_rport", metavar="PORT")
IPV4 = Option("ipv4", ("-4", "--ipv4"), "IPv4 only", type=flag)
IPV6 = Option("ipv6", ("-6", "--ipv6"), "IPv6 only", type=flag)


def family(options: Mapping[str, object]) -> dict[str, int]:
    """The ``targ_family`` global the -4/-6 options set."""
    if options.get("ipv4") and options.get("ipv6"):
        return {}
    if options.get("ipv4"):
        return {"targ_family": 2}
    if options.get("ipv6"):
        return {"targ_family": 10}
    return {}


def flow_columns(df: pd.DataFrame, prefix: str = "flow.") -> dict[str, object]:
    """``family`` (ipv4/ipv6), ``laddr``, ``lport``, ``raddr``, ``rport`` of a frame's flow."""
    fam = df[f"{prefix}family"].to_numpy()
    return {
        "family": ["ipv4" if f == 2 else "ipv6" if f == 10 else str(f) for f in fam],
        "laddr": frames.ip_addresses(fam, frames.array(df, f"{prefix}laddr"),
                                     frames.array(df, f"{prefix}laddr")),
        "lport": df[f"{prefix}lport"].to_numpy(),
        "raddr": frames.ip_addresses(fam, frames.array(df, f"{prefix}raddr"),
                                     frames.array(df, f"{prefix}raddr")),
        "rport": df[f"{prefix}rport"].to_numpy(),
    }


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}


def state_names(values: object) -> list[str]:
    return [TCP_STATES.get(int(v), str(int(v))) for v in values]
