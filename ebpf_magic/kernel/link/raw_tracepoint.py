"""Raw tracepoints, and BTF-targeted programs (fentry, fexit, LSM) attached the same way."""

from __future__ import annotations

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import Link, LinkError


def raw_tracepoint(prog_fd: int, name: str | None) -> Link:
    """Attach ``prog_fd`` to raw tracepoint ``name`` with BPF_RAW_TRACEPOINT_OPEN.

    ``name`` is None for fentry/fexit/LSM programs, whose target was fixed at load.
    """
    probe_events.sweep_once()
    description = f"raw_tracepoint:{name}" if name is not None else f"btf target of prog {prog_fd}"
    try:
        fd = sysbpf.raw_tracepoint_open(prog_fd, name)
    except OSError as e:
        raise LinkError(e.errno, f"BPF_RAW_TRACEPOINT_OPEN of {description}") from None
    return Link(description, [fd])
