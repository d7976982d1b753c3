"""The best of several wall-clock timings, for the benchmarks in this folder."""

from __future__ import annotations

import time
from collections.abc import Callable

REPEAT = 5


def best(fn: Callable[[], object], repeat: int = REPEAT) -> float:
    """The shortest of ``repeat`` runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
