"""Traffic control: a classifier program on a device's ingress or egress.

Two routes, tried in order (:data:`ROUTES`):

* ``tcx``: a BPF link (kernel >= 6.6); closing its fd detaches, and the kernel
  detaches it too when the process exits;
* ``clsact``: a ``bpf`` filter in direct-action mode under the device's clsact
  qdisc, made through rtnetlink as ``tc filter add ... bpf da`` makes it. The
  link removes its filter on close, and the qdisc too when the link created it
  (a qdisc that was there before is someone else's and stays). Such a filter
  outlives a process killed before it closes the link.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import Link, LinkError

ROUTES = ("tcx", "clsact")
DIRECTIONS = {"ingress": 46, "egress": 47}  # enum bpf_attach_type: BPF_TCX_INGRESS, _EGRESS
# where tcx links do not exist (EINVAL: unknown attach type), or refuse this program
_NO_TCX = (errno.EINVAL, errno.EOPNOTSUPP, 524)

# rtnetlink (linux/rtnetlink.h, linux/pkt_sched.h, linux/pkt_cls.h)
RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER = 36, 37, 44, 45
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x8, 0x200, 0x400
NLMSG_ERROR = 2
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # TC_H_MAKE(TC_H_CLSACT, MIN_...)
ETH_P_ALL = 0x0003
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info


def tc(prog_fd: int, ifindex: int, direction: str, *, name: str = "",
       routes: tuple[str, ...] | None = None) -> Link:
    """Attach classifier ``prog_fd`` to device ``ifindex`` on ``direction`` (ingress, egress).

    The program's return value is its verdict (``TC_ACT_OK`` passes the packet).
    ``name`` labels a clsact filter (as ``tc filter show`` lists it); ``routes`` are
    tried in order (default :data:`ROUTES`).
    """
    if direction not in DIRECTIONS:
        raise LinkError(errno.EINVAL, f"tc direction {direction!r}",
                        "Say ingress or egress: -a tc:DEV:ingress")
    probe_events.sweep_once()
    error: LinkError | None = None
    for route in routes or ROUTES:
        try:
            if route == "tcx":
                return _tcx(prog_fd, ifindex, direction)
            return _clsact(prog_fd, ifindex, direction, name)
        except LinkError as e:
            if route != "tcx" or e.errno not in _NO_TCX:
                raise
            error = e
    assert error is not None
    raise error


def _tcx(prog_fd: int, ifindex: int, direction: str) -> Link:
    description = f"tcx:ifindex {ifindex}:{direction}"
    try:
        fd = sysbpf.link_create(prog_fd, ifindex, DIRECTIONS[direction])
    except OSError as e:
        raise LinkError(e.errno, f"BPF_LINK_CREATE of {description}") from None
    return Link(description, [fd])


def _clsact(prog_fd: int, ifindex: int, direction: str, name: str) -> Link:
    description = f"tc:ifindex {ifindex}:{direction} (clsact)"
    with _Netlink() as nl:
        try:
            nl.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL,
                       _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0),
                       _attr(TCA_KIND, b"clsact\0"))
            own_qdisc = True
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise LinkError(e.errno, f"adding a clsact qdisc for {description}") from None
            own_qdisc = False
        options = (_attr(TCA_BPF_FD, struct.pack("=I", prog_fd)) +
                   _attr(TCA_BPF_NAME, (name or "ebpf_magic").encode()[:255] + b"\0") +
                   _attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
        parent = PARENTS[direction]
        try:
            echo = nl.request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
                              _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent,
                                          socket.htons(ETH_P_ALL)),
                              _attr(TCA_KIND, b"bpf\0") + _attr(TCA_OPTIONS, options))
        except OSError as e:
            if own_qdisc:
                _delete_qdisc(nl, ifindex)
            raise LinkError(e.errno, f"adding a bpf filter for {description}") from None
    _, _, handle, _, info = _TCMSG.unpack_from(echo)

    def undo() -> None:
        with _Netlink() as nl:
            try:
                nl.request(RTM_DELTFILTER, 0,
                           _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info),
                           _attr(TCA_KIND, b"bpf\0"))
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise
            if own_qdisc:
                _delete_qdisc(nl, ifindex)

    return Link(description, [], undo)


def _delete_qdisc(nl: _Netlink, ifindex: int) -> None:
    try:
        nl.request(RTM_DELQDISC, 0,
                   _TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0),
                   _attr(TCA_KIND, b"clsact\0"))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def _attr(kind: int, data: bytes) -> bytes:
    """One rtnetlink attribute, padded to 4 bytes."""
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


class _Netlink:
    """A NETLINK_ROUTE socket for one exchange at a time."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> _Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def request(self, kind: int, flags: int, header: bytes, attrs: bytes) -> bytes:
        """Send one request and wait for its acknowledgement.

        Returns the payload of the echoed message (with ``NLM_F_ECHO``), else b"".
        Raises :class:`OSError` with the kernel's errno.
        """
        self._seq += 1
        body = header + attrs
        self._sock.send(struct.pack("=IHHII", 16 + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0) + body)
        echoed = b""
        while True:
            data = self._sock.recv(65536)
            at = 0
            while at + 16 <= len(data):
                size, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, at)
                if size < 16:
                    raise OSError(errno.EPROTO, "a malformed netlink message")
                payload = data[at + 16:at + size]
                at += (size + 3) & ~3
                if seq != self._seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return echoed
                echoed = payload
