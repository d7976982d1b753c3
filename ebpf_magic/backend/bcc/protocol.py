"""Messages between the notebook's process and the compile worker.

A message is a JSON object, framed by its length, optionally carrying file
descriptors (SCM_RIGHTS): the header says how many, and they ride on the header
and, beyond what one ancillary message may carry, on one marker byte per batch.
Nothing is pickled: numpy dtypes travel as the plain descriptors
:func:`dtype_to_json` makes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

_HEADER = struct.Struct("<QI")  # body length, descriptors sent
_BATCH = 250  # descriptors per ancillary message (the kernel's SCM_MAX_FD is 253)


class Closed(EOFError):
    """The other end closed the connection (or died)."""


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = (),
         handed_over: Callable[[], None] | None = None) -> None:
    """Send ``message`` and duplicates of ``fds`` (the sender keeps its own).

    ``handed_over`` runs once the descriptors are in flight and before the rest
    of the message: whatever it closes is closed before the receiver has the reply.
    """
    body = json.dumps(message).encode()
    fds = list(fds)
    header = _HEADER.pack(len(body), len(fds))
    if fds:
        socket.send_fds(sock, [header], fds[:_BATCH])
        for start in range(_BATCH, len(fds), _BATCH):
            socket.send_fds(sock, [b"\0"], fds[start:start + _BATCH])
    else:
        sock.sendall(header)
    if handed_over is not None:
        handed_over()
    sock.sendall(body)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with it (now owned by the caller)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, _BATCH)
    if not data:
        raise Closed("connection closed")
    try:
        header = data + _exactly(sock, _HEADER.size - len(data))
        size, count = _HEADER.unpack(header)
        while len(fds) < count:
            marker, more, _flags, _addr = socket.recv_fds(sock, 1, _BATCH)
            if not marker:
                raise Closed("connection closed mid-message")
            fds += more
        return json.loads(_exactly(sock, size)), fds
    except BaseException:
        _close(fds)
        raise


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
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
