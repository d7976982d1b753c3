"""Arrow columns as the pandas values the manifest says they held, checked against their type.

What they cost decoded was charged when they were read (:mod:`.parquet`),
``json`` columns by what their text may decode to.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.errors import ReplayError
from ebpf_magic.sessions import format as fmt

_STRINGS = ("str", "object:str", "json", "category", "string")


def values(col: Any, kind: str, where: str) -> Any:
    """An Arrow array of ``where`` as the values of manifest type ``kind``."""
    import pyarrow as pa

    t = col.type
    bad = ReplayError(f"{where} does not match the manifest: {t} is not {kind}")
    if kind in fmt.NUMERIC:
        dt = np.dtype(kind)
        if t != pa.from_numpy_dtype(dt) or col.null_count:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    if fmt.TIMES.fullmatch(kind):
        dt = np.dtype(kind)
        unit = np.datetime_data(dt)[0]
        want = pa.timestamp(unit) if dt.kind == "M" else pa.duration(unit)
        if t != want:
            raise bad
        return col.to_numpy(zero_copy_only=False).astype(dt, copy=False)
    m = fmt.TZ_TIMES.fullmatch(kind)
    if m:
        if t != pa.timestamp(m.group(1), tz="UTC"):
            raise bad
        return pd.Series(col.to_pandas()).astype(kind)
    if kind in _STRINGS:
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise bad
        if kind == "json":
            try:
                return _objects([None if v is None else json.loads(v) for v in col.to_pylist()])
            except (ValueError, RecursionError) as e:
                raise ReplayError(f"{where}: a json column holds invalid JSON ({e})") from None
        strings = col.to_pylist()
        if kind == "category":
            return pd.Categorical(strings)
        if kind in ("str", "string"):
            return pd.array(strings, dtype=kind)
        return _objects(strings)
    if kind == "bytes":
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind == "list":
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_null(t)):
            raise bad
        return _objects(col.to_pylist())
    if kind in fmt.EXTENSION_DTYPES:
        ok = {"boolean": pa.types.is_boolean, "string": pa.types.is_string}.get(
            kind, pa.types.is_integer if "Int" in kind else pa.types.is_floating)
        if not (ok(t) or pa.types.is_null(t)):
            raise bad
        return pd.array(col.to_pylist(), dtype=kind)
    raise ReplayError(f"{where}: unknown column type {kind!r} in the manifest")


def _objects(items: list[Any]) -> pd.Series:
    """Python objects as an ``object`` column (pandas would infer ``str`` from strings)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return pd.Series(out, dtype=object, copy=False)
