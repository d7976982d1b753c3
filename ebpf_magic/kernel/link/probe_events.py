"""Probe events defined in tracefs (``uprobe_events``, ``kprobe_events``).

When the perf PMU route is refused, a probe is defined by writing a line to
tracefs and opened as a tracepoint. Such an entry outlives the process that
wrote it if that process dies without removing it, so ours carry the pid in
their group name (``ebpf_magic_<pid>``), as BCC's carry it at the end of the
event name (``..._bcc_<pid>``); entries whose process is gone are stale.

A pid only names a process within its pid namespace, and containers may share
the host's tracefs. A process outside the initial pid namespace adds the
namespace to its group (``ebpf_magic_<pid>_ns<inode>``) and judges only its own
namespace's entries; the initial namespace judges the plain ``ebpf_magic_<pid>``
and BCC's entries. An entry no one can judge is never removed.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import threading
import time
import unicodedata
from pathlib import Path

from ebpf_magic.kernel import tracefs
from ebpf_magic.kernel.link.base import LinkError

GROUP_PREFIX = "ebpf_magic_"
KINDS = ("uprobe", "kprobe")
_OURS = re.compile(rf"^{GROUP_PREFIX}(\d+)(?:_ns(\d+))?$")
INITIAL_PID_NS = 0xEFFFFFFC  # the kernel's PROC_PID_INIT_INO: the initial pid namespace
_BCC = re.compile(r"_bcc_(\d+)$")
_seq = itertools.count()
_swept = False
_sweep_lock = threading.Lock()
BUSY_TIMEOUT = 5.0  # seconds a detached probe's entry may stay busy before removal gives up


def pid_namespace() -> int:
    """The inode number of this process's pid namespace."""
    return os.stat("/proc/self/ns/pid").st_ino


def group() -> str:
    """This process's tracefs group name (its namespace added outside the initial one)."""
    ns = pid_namespace()
    return f"{GROUP_PREFIX}{os.getpid()}" + ("" if ns == INITIAL_PID_NS else f"_ns{ns}")


def _events_file(kind: str, what: str) -> Path:
    root = tracefs.root()
    if root is None:
        raise LinkError(errno.ENOENT, f"{what}: tracefs is not mounted or not readable",
                        "Mount it: `mount -t tracefs tracefs /sys/kernel/tracing`.")
    path = root / f"{kind}_events"
    if not path.exists():
        raise LinkError(errno.ENOENT, f"{what}: {path} does not exist",
                        f"This kernel was built without {kind}s.")
    return path


def _write(path: Path, line: bytes) -> None:
    # O_APPEND: opening these files for plain writing would delete every entry.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# bytes the kernel's isspace() takes for a separator when it splits a probe definition (its
# ctype table counts 0xA0 as a space: a byte of UTF-8 text, as in "à")
_KERNEL_SPACES = frozenset(b"\t\n\v\f\r \xa0")


def checked_target(kind: str, target: str) -> bytes:
    """``target`` as the bytes a definition line may carry, or a :class:`LinkError`.

    The kernel splits a line of ``uprobe_events``/``kprobe_events`` at whitespace
    and takes each line for a command: a path with a newline (a traced process
    can map a file of any name) would define or delete other probes.
    """
    raw = os.fsencode(target)
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in target) \
            or not _KERNEL_SPACES.isdisjoint(raw):
        raise LinkError(errno.EINVAL, f"{kind} target {target!r} holds whitespace or a control "
                        f"character, which {kind}_events cannot take (the kernel would split "
                        "the definition there)",
                        "Attach through a name without them, e.g. a symlink to the binary: "
                        "`ln -s 'odd name' /tmp/plain` and probe /tmp/plain.")
    return raw


def add(kind: str, target: str, *, retprobe: bool = False) -> tuple[str, str]:
    """Define a ``kind`` probe on ``target`` (``PATH:0xOFF`` or ``FUNC+OFF``).

    Returns ``(group, event)``; the event appears under tracefs events/GROUP/EVENT.
    A target with whitespace or control characters is refused (:func:`checked_target`).
    """
    raw = checked_target(kind, target)
    tag = re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(target))[:40]
    event = f"{'r' if retprobe else 'p'}_{tag}_{next(_seq)}"
    grp = group()
    what = f"adding {kind} event {grp}/{event} for {target}"
    path = _events_file(kind, what)
    try:
        _write(path, f"{'r' if retprobe else 'p'}:{grp}/{event} ".encode() + raw + b"\n")
    except OSError as e:
        raise LinkError(e.errno, f"{what} in {path}") from None
    return grp, event


def remove(kind: str, grp: str, event: str, *, busy_timeout: float = 0.0) -> None:
    """Delete probe event ``grp/event``; an entry already gone is not an error.

    A perf event the kernel frees after an RCU grace period keeps the entry busy
    for a moment after its last fd is closed: ``busy_timeout`` seconds of EBUSY
    are retried.
    """
    root = tracefs.root()
    if root is None:
        return
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    while True:
        try:
            _write(root / f"{kind}_events", f"-:{grp}/{event}\n".encode())
            return
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):
                return
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise LinkError(e.errno, f"removing {kind} event {grp}/{event}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _entries() -> list[tuple[str, str, str]]:
    """``(kind, group, event)`` of every probe event in tracefs."""
    root = tracefs.root()
    found = []
    for kind in KINDS:
        try:
            text = (root / f"{kind}_events").read_text() if root is not None else ""
        except OSError:
            continue
        for line in text.splitlines():
            head = line.split(" ", 1)[0]
            _, _, name = head.partition(":")
            grp, _, event = name.partition("/")
            if event:
                found.append((kind, grp, event))
    return found


def _owner(grp: str, event: str) -> int | None:
    """The pid, in this process's pid namespace, that owns an entry; None if not judgeable."""
    ns = pid_namespace()
    ours = _OURS.match(grp)
    if ours:
        entry_ns = int(ours.group(2)) if ours.group(2) else INITIAL_PID_NS
        return int(ours.group(1)) if entry_ns == ns else None
    other_tool = _BCC.search(event)
    return int(other_tool.group(1)) if other_tool and ns == INITIAL_PID_NS else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale() -> list[tuple[str, str, str]]:
    return [(kind, grp, event) for kind, grp, event in _entries()
            if (pid := _owner(grp, event)) is not None and not _alive(pid)]


def stale_probe_events() -> list[str]:
    """``GROUP/EVENT`` of uprobe and kprobe events left by processes that have exited."""
    return [f"{grp}/{event}" for _, grp, event in _stale()]


def remove_stale_probe_events(*, busy_timeout: float = 1.0) -> list[str]:
    """Remove the stale probe events; return the ``GROUP/EVENT`` names removed.

    The kernel frees a just-killed process's perf events a moment after it exits;
    an entry still busy after ``busy_timeout`` seconds is left for a later call.
    """
    removed = []
    for kind, grp, event in _stale():
        try:
            remove(kind, grp, event, busy_timeout=busy_timeout)
        except LinkError:
            continue  # still opened by someone, or not ours to remove
        removed.append(f"{grp}/{event}")
    return removed


def sweep_once() -> None:
    """Remove stale probe events the first time this process attaches; never raises."""
    global _swept
    if _swept:
        return
    with _sweep_lock:
        if _swept:
            return
        _swept = True
        try:
            remove_stale_probe_events(busy_timeout=0.0)
        except Exception:  # noqa: BLE001 - housekeeping must never stop an attach
            pass
