"""Events to DataFrame columns, with a fast path for ``char[]`` fields.

Event fields such as ``comm`` repeat a few distinct strings over millions of
rows, mostly in long runs (one busy process, one CPU's batch). They become
codes without a Python step per row: rows are split into runs of equal bytes,
the first row of each run is matched exactly against the distinct values, and
only the distinct strings are decoded. The column is built from codes and
names in the string dtype pandas uses by default: Arrow-backed where pandas
does so, without a Python object per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.internal import dtypes

_MIX = np.uint64(0x9E3779B97F4A7C15)
_SMALL = 1024  # below this many rows decoding each row is as fast
_FEW_RUNS = 65536  # up to this many runs, distinct values are found with a dict
_STR_DTYPE = pd.Series(["x"]).dtype  # pandas' default dtype for str columns
_ARROW_STR = isinstance(_STR_DTYPE, pd.StringDtype) and _STR_DTYPE.storage == "pyarrow"


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _hashed(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)`` of many values: hashed whole rows, checked exactly."""
    n, width = len(arr), arr.dtype.itemsize
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(n, width)
    if -width % 8:
        raw = np.concatenate((raw, np.zeros((n, -width % 8), np.uint8)), axis=1)
    words = raw.view(np.uint64)
    key = words[:, 0].copy()
    for i in range(1, words.shape[1]):
        key = key * _MIX ^ words[:, i]
    codes, uniques = pd.factorize(key)
    first = np.empty(len(uniques), np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1)
    if not np.array_equal(words[first][codes], words):  # two values shared a key
        codes, names = pd.factorize(dtypes.decode_strings(arr))
        return codes, np.asarray(names, dtype=object)
    return codes, dtypes.decode_strings(arr[first])


def factorize(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)`` for a ``S<N>`` array, so that ``names[codes]`` is every row as str."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.intp), np.zeros(0, object)
    starts = np.flatnonzero(np.concatenate(([True], arr[1:] != arr[:-1])))
    heads = arr[starts]
    if len(heads) <= _FEW_RUNS:
        index: dict[bytes, int] = {}
        head_codes = np.fromiter((index.setdefault(v, len(index)) for v in heads.tolist()),
                                 np.intp, len(heads))
        names = np.array([_name(v) for v in index], dtype=object)
    else:
        head_codes, names = _hashed(heads)
    return np.repeat(head_codes, np.diff(np.append(starts, n))), names


def strings(arr: np.ndarray) -> Any:
    """A ``S<N>`` array as a column of ``str`` (cut at the first NUL, like C)."""
    if len(arr) < _SMALL:
        return dtypes.decode_strings(arr)
    codes, names = factorize(arr)
    if not _ARROW_STR:
        return names[codes]
    import pyarrow as pa

    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32, copy=False)),
                                                pa.array(names, pa.large_string()))
    return pd.array(dictionary.dictionary_decode(), dtype=_STR_DTYPE)


def columns(records: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Like :func:`.dtypes.columns`, decoding ``char[]`` fields with :func:`strings`."""
    dt = records.dtype
    if not dt.names:
        if dtypes.is_char_array(dt):
            return {prefix: strings(records)}
        return dtypes.columns(records, prefix)
    if dtypes.bitfields(dt):  # bitfields stand in place of their storage bytes
        return dtypes.columns(records, prefix)
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
