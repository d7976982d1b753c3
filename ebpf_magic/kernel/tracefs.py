"""tracefs, read in one place: where it is mounted, its tracepoints, ftrace's functions.

Every reader raises :class:`OSError`: :class:`NotMounted` (a ``FileNotFoundError``) where
tracefs is not mounted or not readable by this process, else the error of the file read.
Callers turn it into their own error with their own advice.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

PATHS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
MOUNT_HINT = "Mount it: `mount -t tracefs tracefs /sys/kernel/tracing`."


class NotMounted(FileNotFoundError):
    """tracefs is not mounted, or its events are not readable by this process."""


def root() -> Path | None:
    """Where tracefs is mounted with its events readable, or None."""
    for path in PATHS:
        try:
            if (path / "events").is_dir():
                return path
        except PermissionError:  # mounted, but not readable by this user
            continue
    return None


def ensure() -> Path | None:
    """Mount tracefs at /sys/kernel/tracing when it is not mounted and we may mount it."""
    found = root()
    if found is not None or os.geteuid() != 0:
        return found
    subprocess.run(["mount", "-t", "tracefs", "tracefs", str(PATHS[0])],
                   capture_output=True, check=False)
    return root()


def path(*parts: str) -> Path:
    """``parts`` joined under tracefs's mount point; :class:`NotMounted` without one."""
    found = root()
    if found is None:
        raise NotMounted(errno.ENOENT, "tracefs is not mounted or not readable")
    return found.joinpath(*parts)


def read(*parts: str) -> str:
    """The text of tracefs file ``parts`` (``read("events", "sched", "sched_switch", "id")``)."""
    return path(*parts).read_text()


def readable(*parts: str) -> bool:
    """Whether tracefs file ``parts`` can be read here (its mode may say so and root be refused)."""
    try:
        with open(path(*parts), "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def tracepoints() -> list[str]:
    """Every tracepoint as ``CATEGORY:NAME``, in tracefs's order (``available_events``)."""
    return read("available_events").split()


def tracepoint_id(category: str, name: str) -> int:
    """The kernel's id of tracepoint ``category:name``, for ``perf_event_open``."""
    return int(read("events", category, name, "id"))


def tracepoint_format(category: str, name: str) -> str:
    """The format file of tracepoint ``category:name``: its fields, offsets and sizes."""
    return read("events", category, name, "format")


def filter_functions() -> list[str]:
    """The kernel functions ftrace can hook (``available_filter_functions``), module names cut."""
    return [line.split(" ", 1)[0] for line in read("available_filter_functions").splitlines()
            if line]
