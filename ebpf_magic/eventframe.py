"""Events to DataFrame columns, with a fast path for ``char[]`` fields.

Event fields such as ``comm`` repeat a few distinct strings over millions of
rows. They are decoded once per distinct value: rows are grouped by an exact
comparison of their bytes, so only the distinct strings pass through Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import dtypes

_MIX = np.uint64(0x9E3779B97F4A7C15)


def strings(arr: np.ndarray) -> np.ndarray:
    """A ``S<N>`` array as an object array of ``str`` (cut at the first NUL, like C)."""
    n, width = len(arr), arr.dtype.itemsize
    if n < 1024:
        return dtypes.decode_strings(arr)
    padded = -width % 8
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(n, width)
    if padded:
        raw = np.concatenate((raw, np.zeros((n, padded), np.uint8)), axis=1)
    words = raw.view(np.uint64)
    key = words[:, 0].copy()
    for i in range(1, words.shape[1]):
        key = key * _MIX ^ words[:, i]
    codes, uniques = pd.factorize(key)
    first = np.empty(len(uniques), np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1)
    if not np.array_equal(words[first][codes], words):  # two strings shared a key
        return dtypes.decode_strings(arr)
    names = dtypes.decode_strings(arr[first])
    return names[codes]


def columns(records: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Like :func:`ebpf_magic.dtypes.columns`, decoding ``char[]`` fields with :func:`strings`."""
    dt = records.dtype
    out: dict[str, Any] = {}
    for name in dt.names:
        field = dt[name]
        if field.names:
            out.update(columns(records[name], f"{prefix}{name}."))
        elif dtypes.is_char_array(field):
            out[prefix + name] = strings(records[name])
        else:
            out.update(dtypes.columns(records[name], prefix + name))
    return out


def frame(records: np.ndarray) -> pd.DataFrame:
    """One column per flattened field of structured ``records``."""
    if not len(records):  # the column names, from one blank record
        return pd.DataFrame(columns(np.zeros(1, records.dtype))).iloc[:0]
    return pd.DataFrame(columns(records), copy=False)
