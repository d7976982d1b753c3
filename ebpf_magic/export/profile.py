"""Stack-count data in one shape, for the profile exports and differential flame graphs.

A *stack-count frame* is a DataFrame with

- ``frames``: per row a sequence of frame names (list or tuple of str), root first;
- a value column, ``count`` unless another is named: a whole number >= 0 per stack
  (samples, or microseconds off CPU, or bytes...: the writers take its unit);
- optionally ``kinds``: per row a sequence as long as ``frames`` saying what each frame
  is: ``"kernel"``, ``"user"``, or another word for a frame of neither (``"comm"``, the
  process name :func:`ebpf_magic.data.stacks.stack_counts` puts first);
- any other column (``pid``, ``host``...): a label of the stack (pprof sample labels).

Any front end can produce one: :func:`ebpf_magic.data.stacks.stack_counts` builds it
from a counts map and a ``BPF_STACK_TRACE`` map, live or replayed. The writers also take
folded stacks (``stack`` with frames joined by ``;``, and ``count``: what
:func:`ebpf_magic.data.stacks.folded` returns and flamegraph.pl reads) and an iterable
of ``(stack, count)`` pairs whose stack is a folded str or a sequence of frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.data import stacks
from ebpf_magic.errors import ExportError
from ebpf_magic.internal import files

KERNEL, USER = "kernel", "user"
SHAPE_HINT = ("Pass a stack-count frame (frames: names root first, count), folded stacks "
              "(stack, count: ebpf_magic.data.stacks.folded) or (stack, count) pairs.")


def _frames(stack: Any) -> tuple[str, ...]:
    if isinstance(stack, str):
        return tuple(stack.split(";")) if stack else ()
    if isinstance(stack, Iterable):
        return tuple(str(f) for f in stack)
    raise ExportError(f"a stack must be a folded str or a sequence of frame names, not "
                      f"{type(stack).__name__}", SHAPE_HINT)


def as_stack_counts(data: Any, value: str = "count") -> pd.DataFrame:
    """``data`` as a stack-count frame: ``frames`` and ``kinds`` (tuples), ``value``, labels.

    Rows keep their order; a value of 0 is kept (the writers skip it). Raises
    :class:`~ebpf_magic.errors.ExportError` for anything else, or for a value that is
    negative, missing or not a whole number.
    """
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        df = pd.DataFrame(list(data), columns=["stack", value])
    else:
        raise ExportError(f"not stack counts: a {type(data).__name__}", SHAPE_HINT)
    if "frames" in df.columns:
        frames = [_frames(f) for f in df["frames"]]
    elif "stack" in df.columns:
        frames = [_frames(s) for s in df["stack"]]
    else:
        raise ExportError(f"no frames or stack column; columns: {', '.join(map(str, df.columns))}",
                          SHAPE_HINT)
    if value not in df.columns:
        raise ExportError(f"no value column {value!r}; columns: "
                          f"{', '.join(map(str, df.columns))}",
                          "Name the column that holds each stack's count: value='...'.")
    values = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=float)
    if len(values) and (np.isnan(values).any() or (values < 0).any()
                        or (values != np.round(values)).any()):
        raise ExportError(f"column {value!r} holds values that are not whole numbers >= 0",
                          "Stack counts are samples, or whole units of time or size.")
    if "kinds" in df.columns:
        kinds = [tuple(str(k) for k in ks) for ks in df["kinds"]]
        bad = next((i for i, (f, k) in enumerate(zip(frames, kinds, strict=True))
                    if len(f) != len(k)), None)
        if bad is not None:
            raise ExportError(f"row {bad}: {len(kinds[bad])} kinds for {len(frames[bad])} frames",
                              "kinds needs one entry per frame (kernel, user, or another word).")
    else:
        kinds = [("",) * len(f) for f in frames]
    out = pd.DataFrame({"frames": pd.Series(frames, dtype=object),
                        "kinds": pd.Series(kinds, dtype=object),
                        value: values.astype(np.int64)})
    for column in df.columns:
        if column not in ("frames", "stack", "kinds", value):
            out[column] = df[column].to_numpy()
    return out


def to_folded(data: Any, path: str | Path | None = None, value: str = "count") -> str:
    """Folded text, one ``frame;frame;... count`` line per stack, as flamegraph.pl reads.

    Equal stacks are summed and the lines go largest first, so the text of
    :func:`ebpf_magic.data.stacks.folded`'s frame is its rows. Written to ``path``
    too when given.
    """
    folded = stacks.fold(as_stack_counts(data, value), value)
    text = "".join(f"{s} {int(n)}\n"
                   for s, n in zip(folded["stack"], folded["count"], strict=True))
    if path is not None:
        files.write(path, text)
    return text


def read_folded(source: str | Path) -> pd.DataFrame:
    """Folded stacks (``stack``, ``count``) from folded text or a file of it.

    Each line is frames joined by ``;``, a space, and a count (the format of
    flamegraph.pl, inferno and BCC's ``profile -f``); blank lines are skipped.
    """
    text = source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and Path(source).is_file()):
        text = Path(source).read_text()
    rows = []
    for number, line in enumerate(str(text).splitlines(), 1):
        if not line.strip():
            continue
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            raise ExportError(f"line {number} of the folded text does not end in a count: "
                              f"{line[:80]!r}", "Each line is 'frame;frame;... COUNT'.")
        rows.append((stack, int(count)))
    return pd.DataFrame(rows, columns=["stack", "count"]).astype({"count": np.int64})
