"""This kernel's system call names by number, read from the kernel itself.

Each syscall the kernel traces has a ``struct syscall_metadata`` holding its name and
number; the trace events of all syscalls are linked in one list. A small program, run
once, finds one syscall's event through a perf event this process opens (its ``struct
file`` to ``perf_event`` to ``trace_event_call``), walks the list with CO-RE reads and
keeps every syscall's number and name. So the names are this kernel's, for its
architecture, the newest syscalls included. Where that cannot run (no tracefs, no BPF,
a kernel without syscall trace events), the C library's ``<asm/unistd.h>`` for this
machine is read instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import subprocess

from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import sysbpf, tracefs

SOURCE = r"""
struct name {
    s32 nr;
    char text[48];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1024);
    __type(key, u32);
    __type(value, struct name);
} names SEC(".maps");

const volatile u32 targ_pid = 0;
const volatile u32 event_fd = 0;

struct walk {
    struct list_head *start;
    struct list_head *pos;
    void *class;
};

static __always_inline void keep(struct trace_event_call *call)
{
    struct syscall_metadata *meta = BPF_CORE_READ(call, data);
    if (!meta)
        return;
    u32 nr = BPF_CORE_READ(meta, syscall_nr);
    struct name *slot = bpf_map_lookup_elem(&names, &nr);
    if (!slot)
        return;
    slot->nr = nr;
    bpf_probe_read_kernel_str(slot->text, sizeof(slot->text), BPF_CORE_READ(meta, name));
}

static long step(u32 i, struct walk *w)
{
    struct list_head *pos = w->pos;
    struct list_head *next = BPF_CORE_READ(pos, next);
    if (!next || next == w->start)
        return 1;
    w->pos = next;
    struct trace_event_call *call = container_of(next, struct trace_event_call, list);
    if (BPF_CORE_READ(call, class) == w->class)
        keep(call);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int walk(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != targ_pid)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
    struct file *file = 0;
    bpf_probe_read_kernel(&file, sizeof(file), fds + event_fd);
    struct perf_event *event = BPF_CORE_READ(file, private_data);
    struct trace_event_call *first = BPF_CORE_READ(event, tp_event);
    if (!first)
        return 0;
    keep(first);
    struct walk w = {};
    w.start = &first->list;
    w.pos = &first->list;
    w.class = BPF_CORE_READ(first, class);
    bpf_loop(1 << 16, step, &w, 0);
    return 0;
}
"""

_PERF_TYPE_TRACEPOINT = 2
_DISABLED = 1


@functools.cache
def names() -> dict[int, str]:
    """``{number: name}`` of this kernel's system calls (``read``, ``newstat``...).

    Read once per process from the running kernel (its names: ``newstat`` for stat(2),
    ``umount`` for umount2(2)); numbers it has no metadata for (syscalls it was built
    without) are named from ``<asm/unistd.h>``, as is everything where the kernel cannot
    be asked (see the module doc).
    """
    try:
        kernel = from_kernel()
    except (BPFError, OSError):
        kernel = {}
    return {**from_headers(), **kernel}


def from_kernel() -> dict[int, str]:
    """The names from the kernel's own syscall metadata (BPFError/OSError if it cannot)."""
    from ebpf_magic.program import Program

    event = tracefs.tracepoint_id("syscalls", "sys_enter_getppid")
    attr = sysbpf.PerfEventAttr()
    attr.type, attr.size, attr.config = _PERF_TYPE_TRACEPOINT, ctypes.sizeof(attr), event
    attr.sample_period, attr.flags = 1, _DISABLED
    fd = sysbpf.perf_event_open(attr, -1, 0)
    try:
        with Program(SOURCE, name="syscall_names", backend="libbpf",
                     globals={"targ_pid": os.getpid(), "event_fd": fd}) as prog:
            os.getppid()
            df = prog.maps["names"].df
    finally:
        os.close(fd)
    found = {int(nr): str(text).removeprefix("sys_") for nr, text in
             zip(df["nr"], df["text"], strict=True) if text}
    if len(found) < 10:
        raise BPFError("the kernel's syscall metadata could not be read")
    return found


_NR = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", re.M)


def from_headers() -> dict[int, str]:
    """The names the C library's ``<asm/unistd.h>`` gives for this machine (may lack the
    newest syscalls); empty when there is no compiler to ask."""
    text = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["cc", "-E", "-dM", "-"], input="#include <asm/unistd.h>\n",
                              capture_output=True, text=True, timeout=30).stdout
    return {int(nr): name for name, nr in _NR.findall(text)}


def name(number: int) -> str:
    """The name of syscall ``number``, or ``syscall_NUMBER`` for one this kernel has not."""
    return names().get(int(number), f"syscall_{int(number)}")
