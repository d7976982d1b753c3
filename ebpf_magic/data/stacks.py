"""Stack traces: symbolized frames and folded stacks with counts.

Kernel addresses resolve through :mod:`ebpf_magic.kernel.kallsyms`; user
addresses through :func:`ebpf_magic.backend.symbolize_user` for the process that
was sampled (BCC's symbolizer for BCC's maps where BCC is present, else
:mod:`ebpf_magic.kernel.symbols`). A folded stack is frames joined by ``;`` from the
root to the leaf, the format of flamegraph.pl, and what
:func:`ebpf_magic.present.plots.flamegraph` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ebpf_magic.kernel import kallsyms

KERNEL_START = 0xFFFF800000000000  # x86-64 and arm64 kernel half of the address space
MISSING = "[missing]"  # a stack id the program failed to record (negative id)


def symbolize_user(pid: int, addrs: list[int], backend: str = "") -> list[str]:
    """Names of user addresses in process ``pid``; unknown ones as hex.

    ``backend`` is the backend whose program recorded the addresses ("" if unknown).
    """
    from ebpf_magic.backend import symbolize_user as backend_symbolize

    names = backend_symbolize(pid, list(addrs), backend) if addrs else []
    return [n or f"0x{a:x}" for n, a in zip(names, addrs, strict=True)]


def symbolize(addrs: list[int], pid: int | None = None, backend: str = "") -> list[str]:
    """Frame names, leaf first as stored: kernel addresses by kallsyms, user ones in ``pid``."""
    user = [a for a in addrs if a < KERNEL_START]
    names = {}
    if user and pid is not None:
        names = dict(zip(user, symbolize_user(pid, user, backend), strict=True))
    return [kallsyms.resolve(a) if a >= KERNEL_START else names.get(a, f"0x{a:x}")
            for a in addrs]


def addresses(values: np.ndarray) -> list[list[int]]:
    """Each stack-trace map value (a record of ``ip[]``) as its non-zero addresses."""
    if not len(values):
        return []
    ips = values["ip"] if values.dtype.names else values
    ips = np.asarray(ips).reshape(len(values), -1).view(np.uint64)
    return [[int(a) for a in row[row != 0]] for row in ips]


@runtime_checkable
class LiveStacks(Protocol):
    """A live stack map: raw addresses, symbolized on reading by its backend's symbolizer."""

    @property
    def backend(self) -> str: ...

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]: ...


def stack_frame(stack_map: LiveStacks, pid: int | None = None) -> pd.DataFrame:
    """``stack_id``, ``depth`` and folded ``stack`` (root first) of every stack in the map.

    Kernel frames are always named; user frames only with the ``pid`` they came from.
    """
    keys, values = stack_map.snapshot()
    stacks = addresses(values)
    folded = [";".join(reversed(symbolize(s, pid, stack_map.backend))) for s in stacks]
    return pd.DataFrame({"stack_id": keys.astype(np.int64),
                         "depth": np.array([len(s) for s in stacks], dtype=np.int64),
                         "stack": folded})


_ROLES = {
    "kernel": ("kernel_stack_id", "kern_stack_id", "kernel_stack", "kstack", "kernel_id",
               "kstack_id", "kern_stack"),
    "user": ("user_stack_id", "user_stack", "ustack", "ustack_id", "user_id"),
    "pid": ("pid", "tgid"),
    "comm": ("comm", "name", "task"),
}


def _find(columns: list[str], role: str, given: str | None) -> str | None:
    if given:
        if given not in columns:
            raise KeyError(f"no column {given!r}; columns: {', '.join(columns)}")
        return given
    return next((c for c in _ROLES[role] if c in columns), None)


def folded(counts: Any, stack_map: Any, *, kernel: bool = True, user: bool = True,
           kernel_field: str | None = None, user_field: str | None = None,
           pid_field: str | None = None, comm_field: str | None = None,
           count_field: str | None = None) -> pd.DataFrame:
    """Folded stacks with counts, joining the stack ids in ``counts`` to ``stack_map``.

    ``counts`` is a map (or its DataFrame) whose key holds stack ids, as BCC's
    ``profile`` and ``stackcount`` build: fields named like ``kernel_stack_id``,
    ``user_stack_id``, ``pid`` and ``comm`` are found by name (or name them
    with the ``*_field`` arguments); an integer key is one stack id. Frames go
    ``comm;user root..user leaf;kernel root..kernel leaf``. Returns columns
    ``stack`` and ``count``, largest first. ``stack_map`` may also be a recorded
    stack map's frame (``stack_id``, ``stack``), whose frames are used as stored.
    """
    df = counts if isinstance(counts, pd.DataFrame) else counts.df
    cols = list(df.columns)
    kcol = _find(cols, "kernel", kernel_field)
    ucol = _find(cols, "user", user_field)
    if kcol is None and ucol is None:
        if "key" not in cols:
            raise KeyError("no stack id column found; name it with kernel_field= or user_field=")
        kcol = "key"  # one stack id per key, kernel or user as its addresses say
    pcol, ccol = _find(cols, "pid", pid_field), _find(cols, "comm", comm_field)
    vcol = count_field or ("value" if "value" in cols else next(
        c for c in reversed(cols) if c not in (kcol, ucol, pcol, ccol)))
    frames = _frames_of(stack_map)
    rows = []
    for rec in df.to_dict("records"):
        pid = int(rec[pcol]) if pcol else None
        parts = [str(rec[ccol])] if ccol else []
        if ucol and user:
            parts += frames(rec[ucol], pid)
        if kcol and kernel:
            parts += frames(rec[kcol], pid)
        rows.append((";".join(p for p in parts if p), int(rec[vcol])))
    out = pd.DataFrame(rows, columns=["stack", "count"])
    out = out.groupby("stack", as_index=False, sort=False)["count"].sum()
    return out.sort_values("count", ascending=False, ignore_index=True)


def _frames_of(stack_map: Any) -> Callable[[Any, int | None], list[str]]:
    """``frames(stack_id, pid)``: the frames of one stack of ``stack_map``, root first.

    A live map's stacks are symbolized as asked (user frames need the pid); a recorded
    one's (its frame, or a replayed map) were symbolized when recorded.
    """
    backend = ""
    if isinstance(stack_map, LiveStacks):
        backend = stack_map.backend
        keys, values = stack_map.snapshot()
        ips = dict(zip(keys.astype(np.int64).tolist(), addresses(values), strict=True))
        named: dict[int, list[str]] = {}
    else:
        recorded = stack_map if isinstance(stack_map, pd.DataFrame) else stack_map.df
        ips = {}
        named = {int(i): str(s).split(";") if s else []
                 for i, s in zip(recorded["stack_id"], recorded["stack"], strict=True)}
    cache: dict[tuple[int, int | None], list[str]] = {}

    def frames(stack_id: Any, pid: int | None) -> list[str]:
        sid = int(stack_id)
        if sid < 0:
            return [MISSING]
        if sid in named:
            return named[sid]
        if (sid, pid) not in cache:
            cache[(sid, pid)] = list(reversed(symbolize(ips.get(sid, []), pid, backend)))
        return cache[(sid, pid)]

    return frames
