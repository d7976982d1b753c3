"""numpy structured dtypes: the one description of C data the package uses.

A backend describes every map key, map value and event record as a numpy
dtype with the C layout (offsets, padding, nested structs, arrays). Maps and
streams decode raw bytes with it in bulk, and these helpers turn records into
plain Python values and DataFrame columns:

* nested structs become columns named ``outer.inner``;
* ``char[N]`` becomes ``str`` (up to the first NUL);
* other fixed arrays become one column per element, ``name[0]``, ``name[1]``...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def is_char_array(dt: np.dtype) -> bool:
    """True for ``char[N]``, which numpy holds as bytes ``S<N>``."""
    return dt.kind == "S"


def columns(records: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Flatten structured ``records`` into ``{column name: 1-D array}``."""
    dt = records.dtype
    out: dict[str, Any] = {}
    if dt.names:
        for name in dt.names:
            sub = records[name]
            out.update(columns(sub, f"{prefix}{name}." if dt[name].names else f"{prefix}{name}"))
        return out
    key = prefix.rstrip(".") or "value"
    if dt.subdtype is not None or records.ndim > 1:
        base = dt.subdtype[0] if dt.subdtype is not None else dt
        shape = records.shape[1:] if records.ndim > 1 else dt.subdtype[1]
        flat = records.reshape(len(records), int(np.prod(shape)))
        for i in range(flat.shape[1]):
            out.update(columns(np.ascontiguousarray(flat[:, i]).view(base), f"{key}[{i}]"))
        return out
    if is_char_array(dt):
        out[key] = decode_strings(records)
    else:
        out[key] = records
    return out


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """Decode a bytes array (``S<N>``) to an object array of ``str``, cut at the first NUL."""
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(len(arr), arr.dtype.itemsize)
    # zero everything from the first NUL on; numpy then drops the trailing NULs
    raw = np.where(np.cumsum(raw == 0, axis=1) > 0, 0, raw).astype(np.uint8)
    head = raw.view(arr.dtype).reshape(len(arr))
    return np.char.decode(head, "utf-8", "replace").astype(object)


def frame(records: np.ndarray, prefix: str = "") -> pd.DataFrame:
    """A DataFrame with one column per flattened field of ``records``."""
    return pd.DataFrame(columns(records, prefix), copy=False)


def to_python(value: Any, dt: np.dtype) -> Any:
    """One record to plain Python: ints, floats, str, lists, dicts for structs."""
    if dt.names:
        return {name: to_python(value[name], dt[name]) for name in dt.names}
    if dt.subdtype is not None:
        base = dt.subdtype[0]
        return [to_python(v, base) for v in np.asarray(value).reshape(-1)]
    if is_char_array(dt):
        raw = value if isinstance(value, bytes) else bytes(value)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return value.item() if hasattr(value, "item") else value


def to_key(value: Any, dt: np.dtype) -> Any:
    """One record to a hashable Python value: structs become tuples."""
    if dt.names:
        return tuple(to_key(value[name], dt[name]) for name in dt.names)
    if dt.subdtype is not None:
        return tuple(to_key(v, dt.subdtype[0]) for v in np.asarray(value).reshape(-1))
    return to_python(value, dt)


def _coerce(value: Any, dt: np.dtype) -> Any:
    """Turn a user's Python value into something numpy can assign to ``dt``."""
    if dt.names:
        if isinstance(value, Mapping):
            unknown = set(value) - set(dt.names)
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}; fields are {list(dt.names)}")
            return tuple(_coerce(value.get(n, _zero(dt[n])), dt[n]) for n in dt.names)
        if isinstance(value, (tuple, list)):
            if len(value) != len(dt.names):
                raise ValueError(f"expected {len(dt.names)} values for fields {list(dt.names)}, "
                                 f"got {len(value)}")
            return tuple(_coerce(v, dt[n]) for v, n in zip(value, dt.names, strict=True))
        raise TypeError(f"expected a dict or tuple for a struct with fields {list(dt.names)}, "
                        f"got {type(value).__name__}")
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return [_coerce(v, base) for v in value] if len(shape) == 1 else value
    if is_char_array(dt) and isinstance(value, str):
        return value.encode()
    return value


def _zero(dt: np.dtype) -> Any:
    return np.zeros((), dtype=dt)[()]


def encode(value: Any, dt: np.dtype) -> np.ndarray:
    """A one-element array of ``dt`` holding ``value`` (int, tuple, dict, str...)."""
    arr = np.zeros(1, dtype=dt)
    try:
        arr[0] = _coerce(value, dt)
    except OverflowError as e:
        raise ValueError(f"{value!r} does not fit in {describe(dt)}") from e
    return arr


def describe(dt: np.dtype) -> str:
    """A short C-like rendering of ``dt`` for tables and errors."""
    if dt.names:
        inner = ", ".join(f"{describe(dt[n])} {n}" for n in dt.names)
        return f"struct {{{inner}}}"
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return f"{describe(base)}[{']['.join(map(str, shape))}]"
    if is_char_array(dt):
        return f"char[{dt.itemsize}]"
    names = {"i": "s", "u": "u", "f": "f"}
    if dt.kind in names:
        return f"{names[dt.kind]}{dt.itemsize * 8}"
    return str(dt)
