"""tcpaccept: TCP connections accepted, by which process, from where.

Where ``fexit`` programs load, ``inet_csk_accept``'s return gives every accepted socket,
io_uring's accepts included; elsewhere the return of ``accept``/``accept4`` gives the
new descriptor, whose socket is found through the task's file table with CO-RE.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from ebpf_magic.tools import frames, net
from ebpf_magic.tools.snippets import COMM, FILTER, PID, TID
from ebpf_magic.tools.tool import Reading, Tool, ToolRun, Variant

COMMON = FILTER + net.FLOW + r"""
#define IPPROTO_TCP 6

struct event {
    u64 time;
    u32 pid;
    u32 tid;
    struct flow flow;
    char comm[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);
} events SEC(".maps");

static __always_inline void accepted(const struct sock *sk)
{
    if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || !current_wanted())
        return;
    struct flow f = {};
    read_flow(sk, &f);
    if (!flow_wanted(&f))
        return;
    struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
    if (!e)
        return;
    u64 id = bpf_get_current_pid_tgid();
    e->time = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->flow = f;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    bpf_ringbuf_submit(e, 0);
}
"""

SYSCALLS = COMMON + r"""
static __always_inline int returned(long fd)
{
    if (fd < 0)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
    struct file *file = 0;
    bpf_probe_read_kernel(&file, sizeof(file), fds + fd);
    struct socket *sock = file ? BPF_CORE_READ(file, private_data) : 0;
    if (sock)
        accepted(BPF_CORE_READ(sock, sk));
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4_exit(struct trace_event_raw_sys_exit *ctx) { return returned(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_accept")
int accept_exit(struct trace_event_raw_sys_exit *ctx) { return returned(ctx->ret); }
"""

FEXIT = COMMON + r"""
SEC("fexit/inet_csk_accept")
int BPF_PROG(on_accept, struct sock *sk, struct proto_accept_arg *arg, struct sock *newsk)
{
    accepted(newsk);
    return 0;
}
"""

COLUMNS = ["time", "pid", "tid", "comm", "family", "laddr", "lport", "raddr", "rport"]


def table(r: Reading) -> pd.DataFrame:
    """One row per accepted connection: time, pid, tid, comm, family, laddr, lport (the
    listening port), raddr, rport."""
    ev = r.events("events")
    if not len(ev):
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({"time": ev["time"], "pid": ev["pid"], "tid": ev["tid"],
                         "comm": ev["comm"], **net.flow_columns(ev)})


def plot(run: ToolRun, ax: Any) -> Any:
    """Accepts per second over time, by command."""
    ax = frames.plot_rate(run.df, ax, by="comm")
    ax.set_title("TCP accepts per second by command")
    return ax


TOOL = Tool(
    name="tcpaccept",
    answers="Which processes accept TCP connections, on which port, from where?",
    source=[Variant("fexit", FEXIT, about="every accept, io_uring's too (Linux 6.10 and "
                    "later, where fexit programs load)"),
            Variant("syscalls", SYSCALLS, about="accept(2) and accept4(2)")],
    table=table, plot=plot,
    options=[PID, TID, COMM, replace(net.LPORT, flags=("-P", "--port")), net.RPORT,
             net.IPV4, net.IPV6],
    prepare=net.family, time={"time": "monotonic"},
)
