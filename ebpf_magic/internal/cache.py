"""Where ebpf_magic keeps what it builds once and reuses (kernel header trees, vmlinux.h,
compiled programs).

Root's cache, :data:`SYSTEM_CACHE`, is readable by every user, so the eBPF kernel (an
unprivileged account) reuses the header trees and ``vmlinux.h`` root built. Compiled
programs are kept apart, per user, in a directory only that user can read
(:func:`lookup`, :func:`store`): a cell's program is its author's.

Nothing is used that another user could have written (:func:`trusted`): root never
loads what the eBPF kernel's account could have put in its way, and that account's
cache is its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from ebpf_magic.internal import settings

SYSTEM_CACHE = Path("/var/cache/ebpf_magic")
OBJECTS = "objects"  # compiled programs, below the cache directory, private to their user
MAX_OBJECTS = 256  # entries kept per kind; the least recently used go first


def cache_dir() -> Path:
    """Where this process keeps its cache.

    ``$EBPF_MAGIC_CACHE`` when set, else :data:`SYSTEM_CACHE` for root, else the
    user's XDG cache.
    """
    if os.environ.get("EBPF_MAGIC_CACHE"):
        return Path(os.environ["EBPF_MAGIC_CACHE"])
    if os.geteuid() == 0:
        return SYSTEM_CACHE
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                "ebpf_magic")


def _owners() -> set[int]:
    """Users whose files this process may trust: itself and root."""
    return {0, os.geteuid()}


def trusted(path: Path | str) -> bool:
    """Whether nobody but this process's user (or root) could have written ``path``.

    ``path`` (symbolic links resolved) must exist and belong to this user or root, as
    must every directory above it, and none may be writable by group or others; a
    directory above it may be world-writable only with the sticky bit (``/tmp``), where
    nobody can replace what another user put there. For root that means root's own
    files in root's own directories only.
    """
    try:
        real = Path(os.path.realpath(path))
        info = os.lstat(real)
    except OSError:
        return False
    owners = _owners()
    if info.st_uid not in owners or info.st_mode & 0o022:
        return False
    for parent in real.parents:
        try:
            info = os.lstat(parent)
        except OSError:
            return False
        if info.st_uid not in owners:
            return False
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return False
    return True


def make_dirs(path: Path | str, mode: int = 0o755) -> None:
    """Make directory ``path`` and those missing above it, below an existing directory that
    is :func:`trusted`: nothing is made (nor written later) where another user could
    redirect it. :class:`PermissionError` naming the directory otherwise."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    if not trusted(path):
        raise PermissionError(errno.EACCES, "another user could write there (or above it); "
                              "a cache must be this user's own", str(path))
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, mode)


def key(*parts: object) -> str:
    """A cache key: the hash of ``parts`` (anything JSON can write)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_MAGIC = b"ebpf_magic cache entry\n"


def pack(meta: dict, blob: bytes = b"") -> bytes:
    """An entry of ``meta`` (anything JSON can write) and raw bytes ``blob``."""
    head = json.dumps(meta).encode()
    return _MAGIC + str(len(head)).encode() + b"\n" + head + blob


def unpack(data: bytes | None) -> tuple[dict, bytes] | None:
    """``(meta, blob)`` of an entry :func:`pack` made; None for anything else."""
    if not data or not data.startswith(_MAGIC):
        return None
    size, sep, rest = data[len(_MAGIC):].partition(b"\n")
    try:
        meta = json.loads(rest[:int(size)]) if sep else None
    except ValueError:
        return None
    return (meta, rest[int(size):]) if isinstance(meta, dict) else None


def objects_dir(kind: str) -> Path:
    """The directory of this user's compiled ``kind`` entries (it may not exist yet)."""
    return cache_dir() / OBJECTS / kind


def lookup(kind: str, entry: str) -> bytes | None:
    """The bytes stored as ``entry`` of ``kind``, if there and :func:`trusted`; else None
    (and while :data:`.settings.cache` is False)."""
    if not settings.cache:
        return None
    folder = Path(os.path.realpath(objects_dir(kind)))  # checked and used as resolved
    path = folder / entry
    if not trusted(folder):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & 0o077):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: kept longest
    return data


def store(kind: str, entry: str, data: bytes) -> bool:
    """Keep ``data`` as ``entry`` of ``kind``, readable by this user only.

    Best effort: False where the cache cannot be written or is not :func:`trusted`, and
    while :data:`.settings.cache` is False.
    """
    if not settings.cache:
        return False
    try:
        _private_dirs(objects_dir(kind))
        folder = Path(os.path.realpath(objects_dir(kind)))  # checked and used as resolved
        if not trusted(folder):
            return False
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / entry)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _evict(folder)
    except OSError:
        return False
    return True


def _private_dirs(folder: Path) -> None:
    """``folder`` and the objects directory above it, made and kept mode 0700."""
    make_dirs(folder, 0o700)
    for d in (folder.parent, folder):
        if os.lstat(d).st_uid == os.geteuid():
            os.chmod(d, 0o700)


def _evict(folder: Path) -> None:
    """Remove the least recently used entries beyond :data:`MAX_OBJECTS`."""
    entries = []
    for e in os.scandir(folder):
        if not e.name.startswith(".") and e.is_file(follow_symlinks=False):
            entries.append((e.stat(follow_symlinks=False).st_mtime, e.path))
    for _mtime, path in sorted(entries)[:max(0, len(entries) - MAX_OBJECTS)]:
        with contextlib.suppress(OSError):
            os.unlink(path)
