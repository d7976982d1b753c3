"""Stream options: their defaults, their checks, and the errors and warnings of streams.

See :mod:`ebpf_magic.data.streams` for what each option does.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ebpf_magic.data.maps import normalize_dtype
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import sysbpf
from ebpf_magic.kernel.perfbuf import PAGE_SIZE

DEFAULTS: dict[str, Any] = {"max_rows": 1_000_000, "page_cnt": None, "wakeup_bytes": None,
                            "poll_ms": 50, "batch_ms": 2}
OPTIONS = frozenset(DEFAULTS) | {"dtypes", "time", "spill"}


class StreamOptionError(BPFError, ValueError):
    """A stream option has a value no stream can use."""


class StreamWarning(UserWarning):
    """A stream stopped delivering events (its reason is in :attr:`Stream.failure`)."""


def _need_int(options: Mapping[str, Any], key: str, lo: int, hi: int, what: str) -> None:
    value = options.get(key)
    if value is None and key in ("page_cnt", "wakeup_bytes"):
        return  # sized automatically
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            not lo <= value <= hi:
        raise StreamOptionError(f"stream option {key}={value!r} is not {what}",
                                f"Give {key} as a whole number from {lo:,} to {hi:,}.")


def check_options(options: Mapping[str, Any]) -> None:
    """Reject unknown or unusable stream options with a :class:`StreamOptionError`.

    Called before anything is compiled or attached, so a typo costs nothing.
    """
    unknown = set(options) - OPTIONS
    if unknown:
        raise StreamOptionError(f"unknown stream option(s) {sorted(unknown)}",
                                f"Options are {', '.join(sorted(OPTIONS))}.")
    opts = {**DEFAULTS, **options}
    ram = os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    _need_int(opts, "max_rows", 1, ram // 8, "a row count that fits in memory")
    _need_int(opts, "page_cnt", 1, ram // PAGE_SIZE // 4 // len(sysbpf.online_cpus()),
              "a page count whose rings fit in memory")
    page_cnt = opts["page_cnt"]
    if page_cnt is not None and page_cnt & (page_cnt - 1):
        raise StreamOptionError(f"stream option page_cnt={page_cnt} is not a power of two",
                                f"Try page_cnt={1 << (page_cnt.bit_length() - 1)}.")
    _need_int(opts, "wakeup_bytes", 0, 1 << 31, "a byte count")
    for key in ("poll_ms", "batch_ms"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not 0 <= value <= 60_000 or (key == "poll_ms" and value == 0):
            raise StreamOptionError(f"stream option {key}={value!r} is not a usable time",
                                    f"Give {key} in milliseconds, up to 60000"
                                    f"{' (more than 0)' if key == 'poll_ms' else ''}.")
    if opts.get("spill") is not None:
        spill = Path(opts["spill"])
        try:
            spill.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StreamOptionError(f"cannot spill to {spill}: {e.strerror}",
                                    "Give spill a directory you can write to.") from None
        if not os.access(spill, os.W_OK | os.X_OK):
            raise StreamOptionError(f"cannot spill to {spill}: not writable",
                                    "Give spill a directory you can write to.")


def as_dtype(layout: Any) -> np.dtype:
    """A structured numpy dtype from a numpy dtype, a ctypes type, or a dtype spec."""
    dt = normalize_dtype(np.dtype(layout))
    return dt if dt.names else np.dtype([("value", dt)])
