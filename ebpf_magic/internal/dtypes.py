"""numpy structured dtypes: the one description of C data the package uses.

A backend describes every map key, map value and event record as a numpy
dtype with the C layout (offsets, padding, nested structs, arrays). Maps and
streams decode raw bytes with it in bulk, and these helpers turn records into
plain Python values and DataFrame columns:

* nested structs become columns named ``outer.inner``;
* ``char[N]`` becomes ``str`` (up to the first NUL);
* other fixed arrays become one column per element, ``name[0]``, ``name[1]``...

Three things numpy cannot say itself travel in dtype metadata:

* ``metadata["enum"] = {value: name}`` on an integer dtype: its column is a categorical of
  the names (a value without a name shows as its number), ``to_python`` gives the name, and
  ``encode`` takes a name or a number;
* ``metadata["bitfields"] = {name: (storage, bit_offset, bits, dtype, big_endian)}`` on a
  struct: ``storage`` is a ``u1`` array field holding the bits, ``bit_offset`` counts from its
  first byte as the compiler does for that byte order, ``dtype`` is the declared type. Each
  bitfield becomes its own column and value in place of the storage field;
* ``metadata["union"] = True`` on a struct whose fields overlap: ``encode`` writes only the
  members given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd


class Bitfield(NamedTuple):
    """Where one bitfield lives: see the module docstring."""

    storage: str
    bit_offset: int
    bits: int
    dtype: np.dtype
    big_endian: bool = False


def bitfields(dt: np.dtype) -> dict[str, Bitfield]:
    """The bitfields of struct dtype ``dt``, by name (empty for most dtypes)."""
    meta = dt.metadata or {}
    return {name: Bitfield(*spec) for name, spec in meta.get("bitfields", {}).items()}


def enum_names(dt: np.dtype) -> dict[int, str] | None:
    """``{value: name}`` of an enum dtype, else None."""
    return (dt.metadata or {}).get("enum")


def fields(dt: np.dtype) -> list[str]:
    """The names a user sees in a struct: its fields, bitfields in place of their storage."""
    by_storage = _by_storage(dt)
    out: list[str] = []
    for name in dt.names or ():
        out.extend(by_storage.get(name, [name]))
    return out


def _by_storage(dt: np.dtype) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, bf in bitfields(dt).items():
        out.setdefault(bf.storage, []).append(name)
    return out


def is_char_array(dt: np.dtype) -> bool:
    """True for ``char[N]``, which numpy holds as bytes ``S<N>``."""
    return dt.kind == "S"


def scalars(dt: np.dtype) -> int:
    """How many scalars ``dt`` holds, each array element counted: at most the columns that
    :func:`columns` makes of it."""
    if dt.names:
        return sum(scalars(dt.fields[name][0]) for name in dt.names)
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return int(np.prod(shape, dtype=object)) * scalars(base)
    return 1


def columns(records: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Flatten structured ``records`` into ``{column name: 1-D array}``."""
    dt = records.dtype
    out: dict[str, Any] = {}
    if dt.names and records.ndim > 1:  # an array of structs: name[0].field, name[1].field...
        flat = records.reshape(len(records), int(np.prod(records.shape[1:])))
        for i in range(flat.shape[1]):
            out.update(columns(flat[:, i], f"{prefix.rstrip('.') or 'value'}[{i}]."))
        return out
    if dt.names:
        packed = bitfields(dt)
        by_storage = _by_storage(dt)
        for name in dt.names:
            sub = records[name]
            if name in by_storage:
                for bit_name in by_storage[name]:
                    bf = packed[bit_name]
                    column = _bitfield_column(sub, bf)
                    names = enum_names(bf.dtype)
                    out[f"{prefix}{bit_name}"] = column if names is None else _enum_column(
                        column, names)
                continue
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
    elif enum_names(dt) is not None:
        out[key] = _enum_column(records, enum_names(dt))
    else:
        out[key] = records
    return out


def _enum_column(values: np.ndarray, names: dict[int, str]) -> pd.Categorical:
    """Enum values as a categorical of their names; every name is a category, in value order."""
    categories = list(dict.fromkeys(names[v] for v in sorted(names)))
    uniq, inverse = np.unique(values, return_inverse=True)
    labels = [names.get(int(u), str(int(u))) for u in uniq]
    categories += [label for label in dict.fromkeys(labels) if label not in categories]
    index = {c: i for i, c in enumerate(categories)}
    codes = np.array([index[label] for label in labels], np.int64)
    return pd.Categorical.from_codes(codes[inverse.reshape(-1)], categories=categories)


def _bitfield_column(storage: np.ndarray, bf: Bitfield) -> np.ndarray:
    """One bitfield of every record, from its storage bytes (an ``(N, nbytes)`` u1 array)."""
    raw = np.ascontiguousarray(storage).reshape(len(storage), int(np.prod(storage.shape[1:])))
    first, end = bf.bit_offset // 8, -(-(bf.bit_offset + bf.bits) // 8)
    out_dt = bf.dtype.newbyteorder("=")
    if end - first > 8:  # a 64-bit field straddling nine bytes
        return np.array([_bitfield_value(bytes(row), bf) for row in raw], out_dt)
    acc = np.zeros(len(raw), np.uint64)
    for j in range(first, end):
        byte = raw[:, j].astype(np.uint64)
        if bf.big_endian:
            acc = (acc << np.uint64(8)) | byte
        else:
            acc |= byte << np.uint64(8 * (j - first))
    shift = 8 * end - bf.bit_offset - bf.bits if bf.big_endian else bf.bit_offset - 8 * first
    acc = (acc >> np.uint64(shift)) & np.uint64((1 << bf.bits) - 1)
    if bf.dtype.kind == "i":
        signed = acc.astype(np.int64)
        if bf.bits < 64:
            signed = np.where(signed >= 1 << (bf.bits - 1), signed - (1 << bf.bits), signed)
        return signed.astype(out_dt)
    return acc.astype(out_dt)


def _bitfield_value(storage: bytes, bf: Bitfield) -> Any:
    """One bitfield as a Python int (or bool) from its storage bytes."""
    order = "big" if bf.big_endian else "little"
    whole = int.from_bytes(storage, order)
    shift = 8 * len(storage) - bf.bit_offset - bf.bits if bf.big_endian else bf.bit_offset
    value = (whole >> shift) & ((1 << bf.bits) - 1)
    if bf.dtype.kind == "i" and value >= 1 << (bf.bits - 1):
        value -= 1 << bf.bits
    return bool(value) if bf.dtype.kind == "b" else value


def _with_bitfield(storage: bytes, value: Any, bf: Bitfield, name: str) -> bytes:
    """``storage`` with bitfield ``name`` set to ``value``."""
    value = int(value)
    low = -(1 << (bf.bits - 1)) if bf.dtype.kind == "i" else 0
    if not low <= value < low + (1 << bf.bits):
        raise ValueError(f"{value} does not fit in the {bf.bits}-bit field {name!r} "
                         f"({low}..{low + (1 << bf.bits) - 1})")
    order = "big" if bf.big_endian else "little"
    whole = int.from_bytes(storage, order)
    shift = 8 * len(storage) - bf.bit_offset - bf.bits if bf.big_endian else bf.bit_offset
    mask = ((1 << bf.bits) - 1) << shift
    whole = (whole & ~mask) | ((value << shift) & mask)
    return whole.to_bytes(len(storage), order)


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
        if bitfields(dt):
            return dict(_visible_items(value, dt, to_python))
        return {name: to_python(value[name], dt[name]) for name in dt.names}
    if dt.subdtype is not None:
        base = dt.subdtype[0]
        return [to_python(v, base) for v in np.asarray(value).reshape(-1)]
    names = enum_names(dt)
    if names is not None:
        number = int(value)
        return names.get(number, number)
    if is_char_array(dt):
        raw = value if isinstance(value, bytes) else bytes(value)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return value.item() if hasattr(value, "item") else value


def to_key(value: Any, dt: np.dtype) -> Any:
    """One record to a hashable Python value: structs become tuples."""
    if dt.names:
        if bitfields(dt):
            return tuple(v for _, v in _visible_items(value, dt, to_key))
        return tuple(to_key(value[name], dt[name]) for name in dt.names)
    if dt.subdtype is not None:
        return tuple(to_key(v, dt.subdtype[0]) for v in np.asarray(value).reshape(-1))
    return to_python(value, dt)


def _visible_items(value: Any, dt: np.dtype, convert: Any) -> list[tuple[str, Any]]:
    """(name, converted value) of a struct record, bitfields in place of their storage."""
    packed = bitfields(dt)
    by_storage = _by_storage(dt)
    items = []
    for name in dt.names:
        if name in by_storage:
            raw = np.asarray(value[name]).tobytes()
            for b in by_storage[name]:
                number = _bitfield_value(raw, packed[b])
                names = enum_names(packed[b].dtype) or {}
                items.append((b, names.get(number, number)))
        else:
            items.append((name, convert(value[name], dt[name])))
    return items


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
        if len(shape) == 1:
            return [_coerce(v, base) for v in value]
        if not base.names and np.ndim(value) == 1:  # the flat list to_python gives
            return np.reshape(np.asarray([_coerce(v, base) for v in value], base), shape)
        return value
    if is_char_array(dt) and isinstance(value, str):
        return value.encode()
    return value


def _zero(dt: np.dtype) -> Any:
    return np.zeros((), dtype=dt)[()]


def encode(value: Any, dt: np.dtype) -> np.ndarray:
    """A one-element array of ``dt`` holding ``value`` (int, tuple, dict, str...)."""
    arr = np.zeros(1, dtype=dt)
    try:
        if _has_metadata(dt):
            _assign(arr, value, dt)
        else:
            arr[0] = _coerce(value, dt)
    except OverflowError as e:
        raise ValueError(f"{value!r} does not fit in {describe(dt)}") from e
    return arr


def _has_metadata(dt: np.dtype) -> bool:
    """True if ``dt`` or anything inside it carries enum, bitfield or union metadata."""
    if dt.metadata and {"enum", "bitfields", "union"} & set(dt.metadata):
        return True
    if dt.subdtype is not None:
        return _has_metadata(dt.subdtype[0])
    return any(_has_metadata(dt[name]) for name in dt.names or ())


def _assign(target: np.ndarray, value: Any, dt: np.dtype) -> None:
    """Write ``value`` into ``target`` (a length-1 view of ``dt``), one field at a time.

    Fields a dict leaves out stay zero; a union's members are written only if given.
    """
    if not _has_metadata(dt):
        target[0] = _coerce(value, dt)
        return
    if dt.names:
        visible = fields(dt)
        if isinstance(value, Mapping):
            unknown = set(value) - set(visible)
            if unknown:
                raise ValueError(f"unknown field(s) {sorted(unknown)}; fields are {visible}")
            items = list(value.items())
        elif isinstance(value, (tuple, list)):
            if len(value) != len(visible):
                raise ValueError(f"expected {len(visible)} values for fields {visible}, "
                                 f"got {len(value)}")
            items = list(zip(visible, value, strict=True))
        else:
            raise TypeError(f"expected a dict or tuple for a struct with fields {visible}, "
                            f"got {type(value).__name__}")
        packed = bitfields(dt)
        for name, v in items:
            if name in packed:
                bf = packed[name]
                store = target[bf.storage]
                raw = _with_bitfield(store.tobytes(), _enum_number(v, bf.dtype), bf, name)
                store[...] = np.frombuffer(raw, np.uint8).reshape(store.shape)
            else:
                _assign(target[name], v, dt[name])
        return
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        flat = list(value)
        for _ in shape[1:]:
            flat = [v for row in flat for v in row]
        if len(flat) > int(np.prod(shape)):
            raise ValueError(f"{len(flat)} values for an array of {int(np.prod(shape))}")
        for index, v in zip(np.ndindex(*shape), flat, strict=False):
            _assign(target[(slice(None), *index)], v, base)
        return
    target[0] = _enum_number(value, dt)


def _enum_number(value: Any, dt: np.dtype) -> Any:
    """The number of an enum name (other values pass through)."""
    names = enum_names(dt)
    if not isinstance(value, str) or names is None:
        return value
    numbers = {name: number for number, name in reversed(names.items())}
    if value not in numbers:
        raise ValueError(f"{value!r} is not a name of this enum; names are "
                         f"{list(dict.fromkeys(names.values()))}")
    return numbers[value]


def describe(dt: np.dtype) -> str:
    """A short C-like rendering of ``dt`` for tables and errors."""
    if dt.names:
        packed = bitfields(dt)
        inner = ", ".join(
            f"{describe(packed[n].dtype)} {n}:{packed[n].bits}" if n in packed
            else f"{describe(dt[n])} {n}" for n in fields(dt))
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
