"""A recording's zip: opened once, its directory checked before any member is read.

The file is opened once and that one open file is what every check and
:mod:`zipfile` read, so nothing swapped in at the path afterwards is read. Its
member count and directory size are checked from its end records before
:mod:`zipfile` parses the directory; then every member's name, compression and
declared size, before any is read. Parquet members must be stored: Parquet
compresses its own pages, and a stored member's bytes are the file's own, so
what its structure makes a reader do is bounded by the file's size. Only the
manifest may be deflated (zipfile inflates it in bounded steps), and a member is
read at most once.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from ebpf_magic.errors import ReplayError
from ebpf_magic.sessions import format as fmt
from ebpf_magic.sessions.reader.budget import MORE, Budget

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
            zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
_MANIFEST_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def directory_extent(f: BinaryIO) -> tuple[int, int] | None:
    """``(members, bytes)`` of a zip's central directory, read from its end records alone.

    Finds the end-of-central-directory record (and its ZIP64 form) the way
    :mod:`zipfile` does, so the limits hold for the directory zipfile will read;
    None when there is no such record (zipfile then rejects the file itself).
    """
    size = f.seek(0, os.SEEK_END)
    if size < _EOCD.size:
        return None
    start = max(size - (1 << 16) - _EOCD.size, 0)
    f.seek(start)
    tail = f.read()
    at = len(tail) - _EOCD.size
    if not (tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
    record = _EOCD.unpack_from(tail, at)
    members, directory = record[4], record[5]
    where = start + at  # the record's offset in the file
    if where < _EOCD64_LOCATOR.size + _EOCD64.size:
        return members, directory
    f.seek(where - _EOCD64_LOCATOR.size)
    locator = f.read(_EOCD64_LOCATOR.size)
    if locator[:4] != b"PK\x06\x07":
        return members, directory
    f.seek(where - _EOCD64_LOCATOR.size - _EOCD64.size)
    record64 = _EOCD64.unpack(f.read(_EOCD64.size))
    if record64[0] != b"PK\x06\x06":
        return members, directory
    return record64[7], record64[8]


def _open(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (never blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ReplayError(f"cannot read {path} ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReplayError(f"{path} is not a regular file, so not a recording")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Archive:
    """A recording's zip, opened once and read within ``budget``."""

    def __init__(self, path: Path, budget: Budget) -> None:
        self.path = path
        self.file = _open(path)
        try:
            self.size = os.fstat(self.file.fileno()).st_size
            self._check_directory()
            try:
                self.zf = zipfile.ZipFile(self.file)
                infos = self.zf.infolist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
                    RuntimeError, OverflowError, KeyError, IndexError) as e:
                raise ReplayError(f"{path} is not a recording (not a readable zip file: {e})",
                                  "Recordings are .bpfrec files written by prog.save() or "
                                  "%bpf save.") from None
            self.sizes = self._check_members(infos, budget)
        except BaseException:
            self.file.close()
            raise
        self.budget = budget
        self._read: set[str] = set()

    def _check_directory(self) -> None:
        try:
            extent = directory_extent(self.file)
        except OSError as e:
            raise ReplayError(f"cannot read {self.path} ({e})") from None
        if extent is None:
            return
        members, directory = extent
        if members > fmt.MAX_MEMBERS or directory > fmt.MAX_MEMBERS * fmt.MAX_DIRECTORY_ENTRY:
            raise ReplayError(f"{self.path} lists {members:,} members in {directory:,} bytes, "
                              f"more than a recording may hold ({fmt.MAX_MEMBERS:,} members in "
                              f"{fmt.MAX_MEMBERS * fmt.MAX_DIRECTORY_ENTRY:,} bytes)")

    def _check_members(self, infos: list[zipfile.ZipInfo], budget: Budget) -> dict[str, int]:
        path = self.path
        if len(infos) > fmt.MAX_MEMBERS:
            raise ReplayError(f"{path} has {len(infos)} members, more than a recording may "
                              f"hold ({fmt.MAX_MEMBERS})")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise ReplayError(f"{path} is a crafted file: it repeats member names")
        for name in names:
            if name != fmt.MANIFEST and not fmt.MEMBER.fullmatch(name):
                raise ReplayError(f"{path} is not a recording: unexpected member {name!r}")
        if any(i.flag_bits & 0x1 for i in infos):
            raise ReplayError(f"{path} has encrypted members, which recordings never have")
        for i in infos:
            allowed = _MANIFEST_METHODS if i.filename == fmt.MANIFEST else {zipfile.ZIP_STORED}
            if i.compress_type not in allowed:
                method = _METHODS.get(i.compress_type, f"method {i.compress_type}")
                raise ReplayError(f"{path}: {i.filename} is compressed with {method}; a "
                                  "recording's Parquet members are stored (Parquet compresses "
                                  "its own pages) and its manifest stored or deflated")
            if i.compress_type == zipfile.ZIP_STORED and i.compress_size != i.file_size:
                raise ReplayError(f"{path} is corrupted: {i.filename} is stored in "
                                  f"{i.compress_size:,} bytes but declares {i.file_size:,}")
        if fmt.MANIFEST in names:
            manifest = infos[names.index(fmt.MANIFEST)].file_size
            if manifest > fmt.MAX_MANIFEST:
                raise ReplayError(f"{path}: {fmt.MANIFEST} unpacks to {manifest:,} bytes, more "
                                  f"than a manifest may ({fmt.MAX_MANIFEST:,})")
        total = sum(i.file_size for i in infos)
        if total > budget.unpacked:
            raise ReplayError(f"{path} would unpack to {total:,} bytes, more than the limit "
                              f"({budget.unpacked:,})", MORE)
        return {i.filename: i.file_size for i in infos}

    def read(self, name: str, limit: int | None = None) -> bytes:
        """Member ``name``, at most ``limit`` bytes (and what the budget allows); each member
        is read once."""
        if name not in self.sizes:
            raise ReplayError(f"{self.path} is truncated or incomplete: {name} is missing")
        if name in self._read:
            raise ReplayError(f"{self.path} is a crafted file: {name} is read twice")
        self._read.add(name)
        cap = min(self.sizes[name], self.budget.unpacked if limit is None else limit)
        if self.sizes[name] > cap:
            raise ReplayError(f"{self.path}: {name} is larger than allowed ({cap:,} bytes)")
        try:
            with self.zf.open(name) as f:
                data = f.read(cap + 1)
        except Exception as e:  # noqa: BLE001 - zlib, CRC and format errors of a bad member
            raise ReplayError(f"{self.path} is corrupted: cannot read {name} ({e})") from None
        if len(data) > cap:
            raise ReplayError(f"{self.path}: {name} unpacks to more than it declares")
        self.budget.unpacked -= len(data)
        return data

    def close(self) -> None:
        self.zf.close()
        self.file.close()
