"""Writing files without following links: every file ebpf_magic writes goes through here.

A file is created under a fresh name in its target's own directory (``O_CREAT|O_EXCL|
O_NOFOLLOW``, relative to that directory opened once), filled, given its mode and renamed
over the target. A symbolic link planted at the target or at any name this module might
use is replaced or refused, never written through, so a process that may write the
directory cannot make root write somewhere else; a reader never sees half a file; a
failure leaves the target as it was. Directory trees are built the same way: in a fresh
private directory beside the target, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class AtomicFile:
    """A new file that becomes ``path`` on :meth:`commit` (or never, on :meth:`discard`).

    ``file`` is a binary file object open on the temporary name; ``mode`` is set
    exactly (whatever the umask) before the rename.
    """

    def __init__(self, path: str | os.PathLike, mode: int = 0o644) -> None:
        self.path = Path(path)
        self.mode = mode
        self._dir = os.open(self.path.parent, _DIR)
        try:
            for _ in range(100):
                self._tmp = f".{self.path.name}.{secrets.token_hex(6)}.tmp"
                try:
                    fd = os.open(self._tmp, _NEW, 0o600, dir_fd=self._dir)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(f"no free temporary name beside {self.path}")
            self.file: BinaryIO = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(self._dir)
            raise

    def commit(self) -> Path:
        """Give the file its mode and rename it over ``path`` (a link there is replaced)."""
        try:
            self.file.flush()
            os.fchmod(self.file.fileno(), self.mode)
            self.file.close()
            os.replace(self._tmp, self.path.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except BaseException:
            self.discard()
            raise
        os.close(self._dir)
        self._dir = -1
        return self.path

    def discard(self) -> None:
        """Remove the temporary file; ``path`` stays as it was."""
        if self._dir < 0:
            return
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp, dir_fd=self._dir)
        os.close(self._dir)
        self._dir = -1

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], object],
          mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` (bytes, UTF-8 text, or a function that writes to the
    binary file it is given), never writing through a link; return ``path``."""
    with AtomicFile(path, mode) as out:
        if callable(data):
            data(out.file)
        else:
            out.file.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def make_dirs(path: str | os.PathLike, mode: int = 0o755, levels: int = 1) -> Path:
    """``mkdir -p path``, then ``mode`` for ``path`` and the directories above it,
    ``levels`` of them in all (none for 0).

    The mode is set through the directory itself, opened without following a link: a
    link in their place is an error (``OSError``), never a change to where it leads.
    Directories of other users are left as they are.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents][:levels]:
        fd = os.open(p, _DIR | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) != mode and st.st_uid == os.geteuid():
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return path


def replace_dir(path: str | os.PathLike, build: Callable[[Path], object],
                mode: int = 0o755) -> Path:
    """Build a directory tree with ``build(tmp)`` in a fresh private directory beside
    ``path``, make its directories ``mode`` and its regular files ``mode & 0o666``, and
    rename it over ``path`` (an older tree there is removed); return ``path``."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        build(tmp)
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, mode)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), mode & 0o666)
        try:
            os.replace(tmp, path)
        except OSError as e:  # an older tree: move it aside, then put the new one in place
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
