"""The BCC backend's own doctor checks: can it load programs here, and its attach probes
written in BCC's dialect (table macros, ``.increment()``, ``KFUNC_PROBE``)."""

from __future__ import annotations

from ebpf_magic.backend.bcc import headers, version
from ebpf_magic.errors import BCCNotFoundError
from ebpf_magic.features import FAIL, OK, AttachProbe, Finding, ProbeSuite
from ebpf_magic.kernel import host


def _count(function: str) -> str:
    return f"int {function}(void *ctx) {{{{ {{hit}}; return 0; }}}}"


# one tracepoint each for the buffers: BCC keeps one perf event per tracepoint name and program
PROBES = (
    AttachProbe("kprobe", "kprobe:vfs_read", "doctor_kprobe", _count("doctor_kprobe"),
                risky=True),
    AttachProbe("tracepoint", "tracepoint:syscalls:sys_enter_getppid", "doctor_tracepoint",
                _count("doctor_tracepoint")),
    AttachProbe("raw tracepoint", "rawtracepoint:sys_enter", "doctor_raw_tracepoint",
                _count("doctor_raw_tracepoint")),
    AttachProbe("fentry", "", "kfunc__vfs_read", "KFUNC_PROBE(vfs_read) {{ {hit}; return 0; }}",
                reported_as=("kfunc__vmlinux__vfs_read",), risky=True),
    AttachProbe("uprobe", "uprobe:c:getpid", "doctor_uprobe", _count("doctor_uprobe")),
    AttachProbe("USDT", "usdt:{usdt_binary}:ebpf_magic:doctor", "doctor_usdt",
                _count("doctor_usdt")),
    AttachProbe("perf sampling", "profile:hz:99", "doctor_profile", _count("doctor_profile")),
    AttachProbe("hardware counters", "hardware:cycles", "doctor_hardware",
                _count("doctor_hardware"), risky=True),
    AttachProbe("perf buffer", "tracepoint:syscalls:sys_enter_getpgrp", "doctor_perf_buffer",
                "int doctor_perf_buffer(void *ctx) {{ u32 v = 1; "
                "doctor_perf_events.perf_submit(ctx, &v, sizeof(v)); {hit}; return 0; }}",
                decl="BPF_PERF_OUTPUT(doctor_perf_events);", stream="doctor_perf_events"),
    AttachProbe("ring buffer", "tracepoint:syscalls:sys_enter_getsid", "doctor_ring_buffer",
                "int doctor_ring_buffer(void *ctx) {{ u32 v = 1; "
                "doctor_ring_events.ringbuf_output(&v, sizeof(v), 0); {hit}; return 0; }}",
                decl="BPF_RINGBUF_OUTPUT(doctor_ring_events, 8);", stream="doctor_ring_events"),
    AttachProbe("XDP", "xdp:{xdp_device}", "doctor_xdp",
                "int doctor_xdp(struct xdp_md *ctx) {{ {hit}; return XDP_PASS; }}"),
)


def available() -> Finding:
    """Whether BCC can compile and load programs here: its package and kernel headers."""
    try:
        found_version = version()
    except BCCNotFoundError as e:
        return Finding("bcc", FAIL, e.message, e.hint)
    try:
        found = headers.ensure()
    except OSError as e:
        return Finding("bcc", FAIL, f"could not prepare kernel headers: {e}",
                       "See the kernel headers row.")
    if found.path is None:
        return Finding("bcc", FAIL, f"no kernel headers for {host.release()}",
                       headers.install_hint())
    return Finding("bcc", OK, f"BCC {found_version}, compiling against {found.source}")


def probes() -> ProbeSuite:
    """The attach probes, in BCC's dialect."""
    return ProbeSuite("bcc", PROBES, counter="doctor_hits",
                      header="BPF_ARRAY(doctor_hits, u64, {slots});",
                      hit="doctor_hits.increment({slot})")
