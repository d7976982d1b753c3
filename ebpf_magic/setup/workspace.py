"""The folder a lab serves: a working copy of the teaching notebooks, apart from the checkout.

Whoever uses a root Jupyter server writes files as root in the folder it serves (the
contents API), and a cell in the eBPF kernel can become that user (it can read the
server's token, and its output runs as script in the user's page). Root also runs the
checkout's notebooks (``./run test``, ``notebooks/refresh_recordings.py``). So the lab
never serves the checkout: it serves a copy in a folder of the server user's own,
``/var/lib/ebpf_magic/lab`` for root, ``$XDG_DATA_HOME/ebpf_magic/lab`` for others,
which nothing else runs.

:func:`prepare` brings the copy up to date each time a lab starts: a notebook the user
has not changed since it was copied follows the checkout's; one they changed is theirs
and stays; the recordings are the checkout's (a copy: the kernel only reads them).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

from ebpf_magic.internal import files

ROOT_WORKSPACE = Path("/var/lib/ebpf_magic/lab")
SEEDED = ".ebpf_magic-seeded.json"  # notebook name -> digest of the copy made
RECORDINGS = "recordings"


def default_dir() -> Path:
    """Where this user's lab works: :data:`ROOT_WORKSPACE` for root, else under XDG data."""
    if os.geteuid() == 0:
        return ROOT_WORKSPACE
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "ebpf_magic" / "lab"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _own_dir(path: Path) -> None:
    """``path`` exists as a directory of this user's that no one else may write (one that
    others could write is refused, not mended: they may have planted something there)."""
    if not os.path.lexists(path):
        files.make_dirs(path, 0o755, levels=1)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit(f"{path} must be a directory of uid {os.geteuid()}'s that no one else "
                         f"may write; remove it or fix its owner and mode, then start again")


def _read(path: Path) -> bytes | None:
    """The bytes of the regular file ``path`` (None if absent), never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link: not a copy of ours
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def prepare(source: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Bring the lab folder ``target`` (default :func:`default_dir`) up to date with the
    notebooks of ``source`` (see the module's docstring); return it."""
    source, target = Path(source), Path(target or default_dir())
    files.make_dirs(target.parent, 0o755, levels=0)
    _own_dir(target)
    seeded: dict[str, str] = json.loads(_read(target / SEEDED) or b"{}")
    for notebook in sorted(source.glob("*.ipynb")):
        new = notebook.read_bytes()
        have = _read(target / notebook.name)
        if have is None or _digest(have) == seeded.get(notebook.name):
            files.write(target / notebook.name, new)
            seeded[notebook.name] = _digest(new)
    files.write(target / SEEDED, json.dumps(seeded, indent=1, sort_keys=True) + "\n")
    recordings = target / RECORDINGS
    _own_dir(recordings)
    for rec in sorted((source / RECORDINGS).glob("*.bpfrec")):
        files.write(recordings / rec.name, rec.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic lab-workspace NOTEBOOKS``: prepare the folder and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m ebpf_magic lab-workspace",
        description="Copy the teaching notebooks and their recordings into the folder a lab "
        "serves (never the checkout: root runs the checkout's notebooks, and a lab's user "
        "writes where it serves); print that folder.")
    parser.add_argument("notebooks", help="the checkout's notebooks folder")
    parser.add_argument("--dir", help=f"the lab's folder (default: {ROOT_WORKSPACE} for root, "
                        "else $XDG_DATA_HOME/ebpf_magic/lab)")
    args = parser.parse_args(argv)
    print(prepare(args.notebooks, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
