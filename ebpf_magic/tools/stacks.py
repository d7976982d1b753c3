"""C and tables for the tools that count stacks (offcputime, profile, wakeuptime).

Stack traces go to a ``BPF_MAP_TYPE_STACK_TRACE`` map whose value size is given
explicitly (``MAX_DEPTH`` addresses), so no sizing is needed before load; a task's
kernel and user stack ids are kept with what is counted for them. Tables fold each
stack, symbolized (root first), next to its process, thread and command.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from ebpf_magic.data import stacks as data_stacks
from ebpf_magic.tools import frames
from ebpf_magic.tools.tool import Option, Reading, count, flag

MAX_DEPTH = 127

STACK_MAP = f"#define MAX_DEPTH {MAX_DEPTH}\n" + r"""
const volatile bool targ_user_only = false;
const volatile bool targ_kernel_only = false;

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(key_size, sizeof(u32));
    __uint(value_size, MAX_DEPTH * sizeof(u64));
    __uint(max_entries, STACK_ENTRIES);
} stacks SEC(".maps");

#define NO_STACK -1
#define KERNEL_STACK(ctx) (targ_user_only ? NO_STACK : bpf_get_stackid(ctx, &stacks, 0))
#define USER_STACK(ctx) (targ_kernel_only ? NO_STACK : \
                         bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK))
"""

EFAULT = 14  # bpf_get_stackid's error where there is no such stack (a kernel thread's user one)
NO_STACK = -1

USER_ONLY = Option("user_only", ("-U", "--user-stacks-only"), "user stacks only",
                   type=flag, sets="targ_user_only")
KERNEL_ONLY = Option("kernel_only", ("-K", "--kernel-stacks-only"), "kernel stacks only",
                     type=flag, sets="targ_kernel_only")


def stack_options_lowercase() -> tuple[Option, Option]:
    """-u and -k for user-only and kernel-only stacks, as offcputime and wakeuptime name them
    (profile's are -U and -K)."""
    return (replace(USER_ONLY, flags=("-u", "--user-stacks-only")),
            replace(KERNEL_ONLY, flags=("-k", "--kernel-stacks-only")))


def stack_entries(entries: int) -> str:
    """The ``#define`` sizing the stack map (before the C that declares it)."""
    return f"#define STACK_ENTRIES {entries}\n"


STACK_STORAGE = Option("stack_storage_size", ("--stack-storage-size",),
                       "stack traces kept (distinct stacks beyond it are counted as "
                       "[missing])", type=count, default=16384, metavar="N")


def stack_table(r: Reading, counts: str, value: str, scale: float = 1.0,
                pid: str = "pid") -> pd.DataFrame:
    """The counts map ``counts`` (keyed by ``user_stack_id``, ``kernel_stack_id`` and
    the rest) as rows of its other key columns, ``stack`` (folded, root first) and
    ``value`` (its value divided by ``scale``), largest first.

    User stacks are symbolized in the process of each row's ``pid`` column.
    """
    df = frames.summed(r.maps(counts)).rename(columns={"value": "_value"})
    keys = [c for c in df.columns if c not in ("_value", "user_stack_id", "kernel_stack_id")]
    if not len(df):
        return pd.DataFrame({c: [] for c in [*keys, "stack", value]})
    ids = df.copy()
    for col in ("user_stack_id", "kernel_stack_id"):
        # no stack there (a kernel thread's user stack, a user-mode sample's kernel one)
        absent = (ids[col] == -EFAULT) | (ids[col] == NO_STACK)
        ids[col] = ids[col].astype(object).where(~absent, None)
    stack = _folded(ids, r, pid)
    out = df[keys].assign(stack=stack, **{value: df["_value"].to_numpy() / scale})
    if scale == 1.0:
        out[value] = out[value].astype(np.int64)
    out = out.groupby(keys + ["stack"], as_index=False, sort=False)[value].sum()
    return out.sort_values(value, ascending=False, ignore_index=True)


def _folded(ids: pd.DataFrame, r: Reading, pid: str) -> list[str]:
    """Each row's folded stack: a live map symbolizes now (user frames in the row's
    process), a recorded one's frames are as they were symbolized when recorded."""
    frames = _frames_of(r)
    pids = ids[pid].tolist() if pid in ids.columns else [None] * len(ids)
    out = []
    for row_pid, uid, kid in zip(pids, ids["user_stack_id"], ids["kernel_stack_id"],
                                 strict=True):
        parts: list[str] = []
        if uid is not None:
            parts += frames(int(uid), None if row_pid is None else int(row_pid))
        if kid is not None:
            parts += frames(int(kid), None)
        out.append(";".join(_without_tracing(parts)))
    return out


def _frames_of(r: Reading) -> Callable[[int, int | None], list[str]]:
    """``frames(stack_id, pid)``: one stack's frames, root first ([missing] for an id the
    program failed to record)."""
    cache: dict[tuple[int, int | None], list[str]] = {}
    if r.program.running:
        live = r.map_view("stacks")
        keys, values = live.snapshot()
        addresses = dict(zip(keys.astype(np.int64).tolist(),
                             data_stacks.addresses(values), strict=True))

        def name(stack_id: int, pid: int | None) -> list[str]:
            found = data_stacks.symbolize(addresses.get(stack_id, []), pid, live.backend)
            return list(reversed(found))
    else:
        recorded = r.maps("stacks")
        named = {int(i): str(s).split(";") if s else [] for i, s in
                 zip(recorded["stack_id"], recorded["stack"], strict=True)}

        def name(stack_id: int, _pid: int | None) -> list[str]:  # recorded: named already
            return named.get(stack_id, [])

    def frames(stack_id: int, pid: int | None) -> list[str]:
        if stack_id < 0:
            return [data_stacks.MISSING]
        if (stack_id, pid) not in cache:
            cache[(stack_id, pid)] = name(stack_id, pid)
        return cache[(stack_id, pid)]

    return frames


# frames of the tracing machinery itself, at the leaf of a stack taken in a BPF program
_TRACING = re.compile(r"^(bpf_prog_\w+|bpf_trace_run\d+|__traceiter_\w+|__bpf_trace_\w+|"
                      r"perf_trace_\w+|trace_call_bpf|bpf_get_stackid\w*)$")


def _without_tracing(frames: list[str]) -> list[str]:
    """``frames`` (root first) without the tracing machinery's frames at the leaf."""
    end = len(frames)
    while end and _TRACING.match(frames[end - 1]):
        end -= 1
    return frames[:end]
