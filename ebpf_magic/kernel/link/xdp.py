"""XDP: a BPF link from a program to a network device; closing it detaches."""

from __future__ import annotations

import errno

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import Link, LinkError, device_index

BPF_XDP = 37  # enum bpf_attach_type
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
MODES = {"skb": XDP_FLAGS_SKB_MODE, "drv": XDP_FLAGS_DRV_MODE, "hw": XDP_FLAGS_HW_MODE}


def device(target: str) -> tuple[int, int]:
    """An ``xdp:`` probe's target, ``DEV[@skb|drv|hw]``, as ``(ifindex, flags)`` for :func:`xdp`.

    Raises :class:`LinkError` naming the devices, or the modes, there are.
    """
    dev, _, mode = target.partition("@")
    if (mode or "skb") not in MODES:
        raise LinkError(errno.EINVAL, f"unknown XDP mode {mode!r}",
                        f"Modes: {', '.join('@' + m for m in MODES)}")
    return device_index(dev), MODES[mode or "skb"]


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
