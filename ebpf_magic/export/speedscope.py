"""Stack counts as a speedscope file (https://www.speedscope.app), one sampled profile.

The format is speedscope's ``FileFormat.File`` (``src/lib/file-format-spec.ts``): frames
shared by index, and a ``sampled`` profile whose ``samples`` are stacks of frame indices
root first and whose ``weights`` are their values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ebpf_magic.errors import ExportError
from ebpf_magic.export.profile import as_stack_counts
from ebpf_magic.internal import files

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
UNITS = ("none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes")


def speedscope_document(data: Any, *, value: str = "count", unit: str = "none",
                        name: str = "ebpf_magic profile") -> dict[str, Any]:
    """The speedscope file of stack counts as a dict (see :func:`to_speedscope`)."""
    if unit not in UNITS:
        raise ExportError(f"speedscope has no unit {unit!r}", f"Use one of {', '.join(UNITS)}.")
    counted = as_stack_counts(data, value)
    frames: list[dict[str, str]] = []
    index: dict[tuple[str, str], int] = {}
    samples, weights = [], []
    for stack, kinds, weight in zip(counted["frames"], counted["kinds"], counted[value],
                                    strict=True):
        if weight <= 0:  # speedscope ignores an empty sample and refuses a negative one
            continue
        row = []
        for frame, kind in zip(stack, kinds, strict=True):
            if (frame, kind) not in index:
                index[(frame, kind)] = len(frames)
                frames.append({"name": frame, **({"file": f"[{kind}]"} if kind else {})})
            row.append(index[(frame, kind)])
        samples.append(row)
        weights.append(int(weight))
    total = sum(weights)
    return {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": unit, "startValue": 0,
                      "endValue": total, "samples": samples, "weights": weights}],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "ebpf_magic",
    }


def to_speedscope(data: Any, path: str | Path, *, value: str = "count", unit: str = "none",
                  name: str = "ebpf_magic profile") -> Path:
    """Write stack counts to ``path`` as a speedscope JSON file; returns the path.

    ``data`` is any stack-count data (see :mod:`ebpf_magic.export.profile`); ``unit`` is
    the values' unit as speedscope names it (``none`` for sample counts, ``microseconds``
    for off-CPU time...). Frames of a kind (kernel, user, comm) carry it as their ``file``,
    so equal names on both sides stay apart. Stacks of value 0 are left out.
    """
    out = Path(path)
    files.write(out, json.dumps(speedscope_document(data, value=value, unit=unit, name=name)))
    return out
