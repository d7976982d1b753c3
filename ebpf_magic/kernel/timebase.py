"""Kernel timestamps to wall-clock times.

``bpf_ktime_get_ns()`` reads CLOCK_MONOTONIC and ``bpf_ktime_get_boot_ns()``
CLOCK_BOOTTIME; both count nanoseconds since an arbitrary point. Adding the
current offset to CLOCK_REALTIME turns them into wall-clock datetimes. Times taken
from CLOCK_REALTIME itself (``"realtime"``) need no offset.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pandas as pd

CLOCKS = {"monotonic": time.CLOCK_MONOTONIC, "ktime": time.CLOCK_MONOTONIC,
          "boottime": time.CLOCK_BOOTTIME, "boot": time.CLOCK_BOOTTIME,
          "realtime": time.CLOCK_REALTIME}


def offset_ns(clock: str = "monotonic") -> int:
    """CLOCK_REALTIME minus ``clock``, in ns (the tightest of a few readings)."""
    try:
        clk = CLOCKS[clock]
    except KeyError:
        raise ValueError(f"unknown clock {clock!r}; use one of {sorted(CLOCKS)}") from None
    if clk == time.CLOCK_REALTIME:
        return 0
    best = None
    for _ in range(5):
        a = time.clock_gettime_ns(clk)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b = time.clock_gettime_ns(clk)
        if best is None or b - a < best[0]:
            best = (b - a, real - (a + b) // 2)
    return best[1]


def to_datetime(ns: npt.ArrayLike, clock: str = "monotonic", offset: int | None = None,
                tz: str | None = None) -> pd.Series:
    """Kernel nanosecond timestamps as wall-clock ``datetime64[ns]`` (UTC-naive unless ``tz``)."""
    values = np.asarray(ns, dtype=np.int64) + (offset_ns(clock) if offset is None else offset)
    out = pd.Series(pd.to_datetime(values, unit="ns"))
    if tz:
        out = out.dt.tz_localize("UTC").dt.tz_convert(tz)
    return out
