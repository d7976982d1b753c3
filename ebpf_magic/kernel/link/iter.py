"""BPF iterators: a link per iterator program; each read of it runs the program afresh.

``iter/task``, ``iter/task_file``, ``iter/tcp``, ``iter/bpf_map``... programs are called
once per kernel object while a reader reads the fd BPF_ITER_CREATE makes from the link,
and what they write (``bpf_seq_write``, ``BPF_SEQ_PRINTF``) is what the read returns.
"""

from __future__ import annotations

import errno
import os
import struct

from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.link.base import Link, LinkError

READ_CHUNK = 1 << 16
MAX_BYTES = 1 << 30  # one run's output, at most


class IterLink(Link):
    """An iterator program's link; :meth:`read` runs the iterator and returns its output."""

    def read(self, limit: int = MAX_BYTES) -> bytes:
        """Everything one run of the iterator writes (at most ``limit`` bytes).

        Raises :class:`LinkError` once closed, or when the output exceeds ``limit``.
        """
        fds = self.fds
        if not fds:
            raise LinkError(errno.EBADF, f"reading {self.description}: the link is closed")
        try:
            fd = sysbpf.iter_create(fds[0])
        except OSError as e:
            raise LinkError(e.errno, f"BPF_ITER_CREATE on {self.description}") from None
        chunks, size = [], 0
        try:
            while True:
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except InterruptedError:
                    continue
                except OSError as e:
                    raise LinkError(e.errno, f"reading {self.description}") from None
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    raise LinkError(errno.EFBIG, f"reading {self.description}: more than "
                                    f"{limit:,} bytes", "Write less per object, or filter.")
                chunks.append(chunk)
        finally:
            os.close(fd)


def iterator(prog_fd: int, target: str, *, map_fd: int | None = None,
             tid: int = 0, pid: int = 0) -> IterLink:
    """Link iterator program ``prog_fd`` (of SEC ``iter/TARGET``).

    Map-element iterators (``bpf_map_elem``...) take the map's ``map_fd``; task iterators
    may be limited to one thread ``tid`` or one process ``pid`` (kernel >= 6.1).
    """
    info = b""
    if map_fd is not None:
        info = struct.pack("=I", map_fd)
    elif tid or pid:
        info = struct.pack("=III", tid, pid, 0)
    description = f"iter:{target}" + (f" (map fd {map_fd})" if map_fd is not None else "")
    try:
        fd = sysbpf.iter_link_create(prog_fd, info)
    except OSError as e:
        hint = ("This iterator needs a map: -a iter:TARGET:MAP=FUNCTION."
                if e.errno == errno.EINVAL and map_fd is None else "")
        raise LinkError(e.errno, f"BPF_LINK_CREATE of {description}", hint) from None
    return IterLink(description, [fd])
