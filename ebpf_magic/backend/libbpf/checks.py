"""The libbpf backend's own doctor checks: can it load programs here, and its attach
probes written as libbpf-style C (``SEC()`` names, maps in ``SEC(".maps")``)."""

from __future__ import annotations

from ebpf_magic.backend.libbpf import available as backend_available
from ebpf_magic.backend.libbpf import version
from ebpf_magic.features import FAIL, OK, AttachProbe, Finding, ProbeSuite


def _count(section: str, function: str, context: str = "void *ctx", body: str = "",
           result: str = "0") -> str:
    return (f'SEC("{section}")\nint {function}({context}) {{{{ {body}{{hit}}; '
            f"return {result}; }}}}")


# the includes first, as a cell's own: <bpf/usdt.bpf.h> declares the maps USDT probes need
_HEADER = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>

struct {{
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, {slots});
}} doctor_hits SEC(".maps");

static __always_inline void doctor_hit(u32 slot)
{{
    u64 *n = bpf_map_lookup_elem(&doctor_hits, &slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}}"""

PROBES = (
    AttachProbe("kprobe", "kprobe:vfs_read", "doctor_kprobe",
                _count("kprobe", "doctor_kprobe"), risky=True),
    AttachProbe("tracepoint", "", "doctor_tracepoint",
                _count("tracepoint/syscalls/sys_enter_getppid", "doctor_tracepoint")),
    AttachProbe("raw tracepoint", "", "doctor_raw_tracepoint",
                _count("raw_tp/sys_enter", "doctor_raw_tracepoint")),
    AttachProbe("fentry", "", "doctor_fentry", _count("fentry/vfs_read", "doctor_fentry"),
                risky=True),
    AttachProbe("uprobe", "uprobe:c:getpid", "doctor_uprobe", _count("uprobe", "doctor_uprobe")),
    AttachProbe("USDT", "usdt:{usdt_binary}:ebpf_magic:doctor", "doctor_usdt",
                _count("usdt", "doctor_usdt")),
    AttachProbe("perf sampling", "profile:hz:99", "doctor_profile",
                _count("perf_event", "doctor_profile")),
    AttachProbe("hardware counters", "hardware:cycles", "doctor_hardware",
                _count("perf_event", "doctor_hardware"), risky=True),
    AttachProbe("perf buffer", "", "doctor_perf_buffer",
                _count("tracepoint/syscalls/sys_enter_getpgrp", "doctor_perf_buffer",
                       body="u32 v = 1; bpf_perf_event_output(ctx, &doctor_perf_events, "
                            "BPF_F_CURRENT_CPU, &v, sizeof(v)); "),
                decl="struct { __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY); "
                     "__uint(key_size, sizeof(u32)); __uint(value_size, sizeof(u32)); "
                     '} doctor_perf_events SEC(".maps");',
                stream="doctor_perf_events"),
    AttachProbe("ring buffer", "", "doctor_ring_buffer",
                _count("tracepoint/syscalls/sys_enter_getsid", "doctor_ring_buffer",
                       body="u32 v = 1; bpf_ringbuf_output(&doctor_ring_events, &v, "
                            "sizeof(v), 0); "),
                decl="struct { __uint(type, BPF_MAP_TYPE_RINGBUF); "
                     '__uint(max_entries, 4096); } doctor_ring_events SEC(".maps");',
                stream="doctor_ring_events"),
    AttachProbe("XDP", "xdp:{xdp_device}", "doctor_xdp",
                _count("xdp", "doctor_xdp", "struct xdp_md *ctx", result="XDP_PASS")),
)


def available() -> Finding:
    """Whether the backend can compile and load programs here: clang, libbpf, BTF."""
    ok, why = backend_available()
    if not ok:
        return Finding("libbpf", FAIL, why, "See the clang, libbpf and BTF rows.")
    return Finding("libbpf", OK, f"libbpf {version()}, CO-RE against the kernel's BTF")


def probes() -> ProbeSuite:
    """The attach probes, as libbpf-style C."""
    return ProbeSuite("libbpf", PROBES, counter="doctor_hits", header=_HEADER,
                      hit="doctor_hit({slot})")
