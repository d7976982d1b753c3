"""bindsnoop: sockets bound to addresses and ports (bind(2)), by whom, with the result.

The entry copies the address the caller passes (family, port, address) and the socket's
protocol, found from the descriptor through the task's file table with CO-RE; the return
sends them with the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.tools import frames
from ebpf_magic.tools.net import IPV4, IPV6, family
from ebpf_magic.tools.snippets import COMM, FAILED, FILTER, PID, TID
from ebpf_magic.tools.tool import Option, Reading, Tool, ToolRun, natural

SOURCE = FILTER + r"""
#define AF_INET 2
#define AF_INET6 10
const volatile bool targ_failed = false;
const volatile u16 targ_port = 0;
const volatile u16 targ_family = 0;

struct bind_call {
    u16 family;
    u16 port;
    u16 protocol;
    u16 type;
    s32 fd;
    u8 addr[16];
};

struct event {
    u64 time;
    u32 pid;
    u32 tid;
    s32 ret;
    struct bind_call call;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 10240);
    __type(key, u32);
    __type(value, struct bind_call);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_bind")
int bind_enter(struct trace_event_raw_sys_enter *ctx)
{
    if (!current_wanted())
        return 0;
    struct bind_call c = {.fd = ctx->args[0]};
    const void *uaddr = (const void *)ctx->args[1];
    bpf_probe_read_user(&c.family, sizeof(c.family), uaddr);
    if (c.family == AF_INET) {
        struct sockaddr_in sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), uaddr);
        c.port = bpf_ntohs(sa.sin_port);
        __builtin_memcpy(c.addr, &sa.sin_addr.s_addr, 4);
    } else if (c.family == AF_INET6) {
        struct sockaddr_in6 sa = {};
        bpf_probe_read_user(&sa, sizeof(sa), uaddr);
        c.port = bpf_ntohs(sa.sin6_port);
        __builtin_memcpy(c.addr, &sa.sin6_addr, 16);
    }
    if ((targ_family && c.family != targ_family) || (targ_port && c.port != targ_port))
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
    struct file *file = 0;
    bpf_probe_read_kernel(&file, sizeof(file), fds + c.fd);
    struct socket *sock = file ? BPF_CORE_READ(file, private_data) : 0;
    if (sock) {
        c.type = BPF_CORE_READ(sock, type);
        c.protocol = BPF_CORE_READ(sock, sk, sk_protocol);
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    bpf_map_update_elem(&calls, &tid, &c, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_bind")
int bind_exit(struct trace_event_raw_sys_exit *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct bind_call *c = bpf_map_lookup_elem(&calls, &tid);
    if (!c)
        return 0;
    if (!targ_failed || ctx->ret < 0) {
        struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
            e->time = bpf_ktime_get_ns();
            e->pid = id >> 32;
            e->tid = tid;
            e->ret = ctx->ret;
            e->call = *c;
            bpf_get_current_comm(e->comm, sizeof(e->comm));
            bpf_ringbuf_submit(e, 0);
        }
    }
    bpf_map_delete_elem(&calls, &tid);
    return 0;
}
"""

PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6", 262: "mptcp",
             255: "raw"}
TYPES = {1: "stream", 2: "dgram", 3: "raw", 5: "seqpacket"}
COLUMNS = ["time", "pid", "tid", "comm", "fd", "family", "protocol", "addr", "port", "ret",
           "errno"]


def table(r: Reading) -> pd.DataFrame:
    """One row per bind: time, pid, tid, comm, fd, family (ipv4, ipv6, or the number),
    protocol (tcp, udp... from the socket; its type for others), addr, port, ret, errno."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    fam = ev["call.family"].to_numpy()
    addr = frames.array(ev, "call.addr")
    ret = ev["ret"]
    proto = [PROTOCOLS.get(int(p)) or TYPES.get(int(t), str(int(p)))
             for p, t in zip(ev["call.protocol"], ev["call.type"], strict=True)]
    return pd.DataFrame({
        "time": ev["time"], "pid": ev["pid"], "tid": ev["tid"], "comm": ev["comm"],
        "fd": ev["call.fd"],
        "family": ["ipv4" if f == 2 else "ipv6" if f == 10 else str(f) for f in fam],
        "protocol": proto, "addr": frames.ip_addresses(fam, addr, addr),
        "port": ev["call.port"].astype(np.uint16), "ret": ret,
        "errno": frames.errno_name(-ret.where(ret < 0, 0)),
    })


def plot(run: ToolRun, ax: Any) -> Any:
    """Binds by command and port."""
    counts = run.df.groupby(["comm", "protocol", "port"]).size().rename("binds").reset_index()
    return frames.plot_bars(counts, ["comm", "protocol", "port"], "binds", ax, "binds")


TOOL = Tool(
    name="bindsnoop",
    answers="Which processes bind sockets to which addresses and ports, and which binds "
            "fail?",
    source=SOURCE, table=table, plot=plot,
    options=[PID, TID, COMM, FAILED, IPV4, IPV6,
             Option("port", ("-P", "--port"), "only binds to this port", type=natural,
                    sets="targ_port", metavar="PORT")],
    prepare=family,
    time={"time": "monotonic"},
)
