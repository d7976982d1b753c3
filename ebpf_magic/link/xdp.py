"""XDP: a BPF link from a program to a network device; closing it detaches."""

from __future__ import annotations

import errno

from .. import sysbpf
from . import probe_events
from .base import Link, LinkError

BPF_XDP = 37  # enum bpf_attach_type
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3


def xdp(prog_fd: int, ifindex: int, flags: int) -> Link:
    """Attach XDP program ``prog_fd`` to device ``ifindex`` with BPF_LINK_CREATE."""
    probe_events.sweep_once()
    description = f"xdp:ifindex {ifindex} flags {flags:#x}"
    try:
        fd = sysbpf.link_create(prog_fd, ifindex, BPF_XDP, flags)
    except OSError as e:
        hint = ("Another XDP program is attached to this device; detach it first."
                if e.errno == errno.EBUSY else "")
        raise LinkError(e.errno, f"BPF_LINK_CREATE of {description}", hint) from None
    return Link(description, [fd])
