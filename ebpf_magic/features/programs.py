"""Which program types this kernel loads, learnt by loading the smallest program of each.

Like cilium/ebpf's ``features.HaveProgramType``: ``r0 = 0; exit`` loaded as the type, then
closed at once. That a type loads says nothing of whether its hook attaches here (a
kernel without kprobes still loads kprobe-type programs): attaching is what the backends'
attach probes learn.
"""

from __future__ import annotations

import errno
import os

from ebpf_magic.features.finding import NOT_CHECKED, OK, UNAVAILABLE, Finding
from ebpf_magic.kernel import sysbpf

# mov64 r0, 0; exit
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")
# types whose smallest program loads without an attach target (BTF id, device)
PROBED_TYPES = ("socket_filter", "kprobe", "sched_cls", "tracepoint", "xdp", "perf_event",
                "cgroup_skb", "raw_tracepoint")
_TYPE_NUMBERS = {name: number for number, name in sysbpf.PROG_TYPES.items()}


def check_program_type(name: str) -> Finding:
    """Whether the kernel loads programs of type ``name`` (one of :data:`PROBED_TYPES`).

    ``ok`` when one loaded, ``unavailable`` when the kernel does not know the type,
    ``not checked`` when this process may not load programs.
    """
    if name not in PROBED_TYPES:
        raise ValueError(f"no probe of program type {name!r}; probed: {', '.join(PROBED_TYPES)}")
    check = f"{name} programs"
    try:
        fd = sysbpf.prog_load(_TYPE_NUMBERS[name], _RETURN_ZERO, "GPL", name="feature_probe")
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            return Finding(check, NOT_CHECKED, f"not allowed to load programs ({e.strerror})",
                           "Run with the rights named under privileges.")
        return Finding(check, UNAVAILABLE, f"the kernel refused a {name} program: "
                       f"{e.strerror}", "This kernel lacks the program type (see its config).")
    os.close(fd)
    return Finding(check, OK, f"a {name} program loads")


def program_types() -> dict[str, Finding]:
    """:func:`check_program_type` of every type in :data:`PROBED_TYPES`."""
    return {name: check_program_type(name) for name in PROBED_TYPES}
