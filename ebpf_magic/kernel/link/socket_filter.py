"""Socket filters: a program run on every packet a socket receives (SO_ATTACH_BPF).

The link holds its own duplicate of the socket's descriptor, so it can detach
(SO_DETACH_BPF) whenever it is closed, even after the caller closed theirs; the
socket lives until both are closed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket

from ebpf_magic.kernel.link import probe_events
from ebpf_magic.kernel.link.base import Link, LinkError

SO_ATTACH_BPF = 50
SO_DETACH_BPF = 27


def socket_filter(prog_fd: int, sock_fd: int) -> Link:
    """Attach socket-filter program ``prog_fd`` to the socket open as ``sock_fd``.

    The program's return value is how many bytes of each packet the socket keeps
    (0 drops it).
    """
    probe_events.sweep_once()
    description = f"socket:fd {sock_fd}"
    try:
        dup = os.dup(sock_fd)
    except OSError as e:
        raise LinkError(e.errno, f"{description}: no such open descriptor",
                        "Give a socket's fileno() while the socket is open.") from None
    try:
        sock = socket.socket(fileno=dup)
    except OSError as e:
        os.close(dup)
        raise LinkError(e.errno or errno.ENOTSOCK, f"{description} is not a socket",
                        "Give a socket's fileno().") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
    except OSError as e:
        sock.close()
        raise LinkError(e.errno, f"SO_ATTACH_BPF on {description}") from None

    def undo() -> None:
        try:
            with contextlib.suppress(OSError):  # a socket already shut down has nothing to detach
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_BPF, 0)
        finally:
            sock.close()

    return Link(description, [], undo)
