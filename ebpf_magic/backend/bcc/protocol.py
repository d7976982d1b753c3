"""Messages between the notebook's process and the compile worker.

A message is a JSON object, framed by its length, optionally carrying file
descriptors (SCM_RIGHTS): the header says how many, and they ride on the header
and, beyond what one ancillary message may carry, on one marker byte per batch.
Descriptors arrive close-on-exec, so no program a cell starts inherits them.
Nothing is pickled: numpy dtypes travel as the plain descriptors
:func:`dtype_to_json` makes.

With a ``deadline`` (a :func:`time.monotonic` time), a whole message is sent or
received by then, header to last byte, or :class:`Timeout` is raised: a peer that
stalls mid-message holds no one past it.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_HEADER = struct.Struct("<QI")  # body length, descriptors sent
_BATCH = 250  # descriptors per ancillary message (the kernel's SCM_MAX_FD is 253)


class Closed(EOFError):
    """The other end closed the connection (or died)."""


class Timeout(Exception):
    """The deadline passed before a whole message was sent or received."""


def _until(sock: socket.socket, deadline: float | None) -> None:
    """Let the next operation on ``sock`` block until ``deadline`` at most (None: no bound)."""
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("the deadline passed")
    sock.settimeout(left)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = (),
         handed_over: Callable[[], None] | None = None, deadline: float | None = None) -> None:
    """Send ``message`` and duplicates of ``fds`` (the sender keeps its own), all of it by
    ``deadline``.

    ``handed_over`` runs once the descriptors are in flight and before the rest
    of the message: whatever it closes is closed before the receiver has the reply.
    """
    body = json.dumps(message).encode()
    fds = list(fds)
    header = _HEADER.pack(len(body), len(fds))
    try:
        _until(sock, deadline)
        if fds:
            socket.send_fds(sock, [header], fds[:_BATCH])
            for start in range(_BATCH, len(fds), _BATCH):
                _until(sock, deadline)
                socket.send_fds(sock, [b"\0"], fds[start:start + _BATCH])
        else:
            sock.sendall(header)
        if handed_over is not None:
            handed_over()
        _until(sock, deadline)
        sock.sendall(body)
    except TimeoutError:
        raise Timeout("the message was not taken in time") from None


def receive(sock: socket.socket, deadline: float | None = None
            ) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with it (now owned by the caller, and
    close-on-exec), all of it by ``deadline``."""
    fds: list[int] = []
    try:
        _until(sock, deadline)
        data = _recv_fds(sock, _HEADER.size, fds)
        if not data:
            raise Closed("connection closed")
        header = data + _exactly(sock, _HEADER.size - len(data), deadline)
        size, count = _HEADER.unpack(header)
        while len(fds) < count:
            _until(sock, deadline)
            marker = _recv_fds(sock, 1, fds)
            if not marker:
                raise Closed("connection closed mid-message")
        return json.loads(_exactly(sock, size, deadline)), fds
    except BaseException as e:
        _close(fds)
        if isinstance(e, TimeoutError):  # the socket's own timeout
            raise Timeout("the message did not arrive in time") from None
        raise


def _recv_fds(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    """Up to ``size`` bytes, adding the descriptors that came with them to ``fds``.

    The descriptors arrive close-on-exec (MSG_CMSG_CLOEXEC: ``socket.recv_fds``
    drops its ``flags`` before Python 3.12, so recvmsg is called here).
    """
    ints = array.array("i")
    data, ancillary, flags, _addr = sock.recvmsg(
        size, socket.CMSG_SPACE(_BATCH * ints.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints.frombytes(payload[:len(payload) - len(payload) % ints.itemsize])
    fds += ints
    if flags & socket.MSG_CTRUNC:
        raise Closed("descriptors were cut off in transit")
    return data


def _exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    chunks = []
    while size:
        _until(sock, deadline)
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise Closed("connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def dtype_to_json(dtype: np.dtype | None) -> Any:
    """A JSON-safe description of ``dtype`` (structs keep their offsets and padding)."""
    if dtype is None:
        return None
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": dtype_to_json(base), "shape": list(shape)}
    if dtype.names is not None:
        fields = [dtype.fields[n] for n in dtype.names]
        return {"names": list(dtype.names), "formats": [dtype_to_json(f[0]) for f in fields],
                "offsets": [f[1] for f in fields], "itemsize": dtype.itemsize}
    return dtype.str


def dtype_from_json(desc: Any) -> np.dtype | None:
    """The dtype :func:`dtype_to_json` described."""
    if desc is None:
        return None
    if isinstance(desc, str):
        return np.dtype(desc)
    if "base" in desc:
        return np.dtype((dtype_from_json(desc["base"]), tuple(desc["shape"])))
    return np.dtype({"names": desc["names"],
                     "formats": [dtype_from_json(f) for f in desc["formats"]],
                     "offsets": desc["offsets"], "itemsize": desc["itemsize"]})
