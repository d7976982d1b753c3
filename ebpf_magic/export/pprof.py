"""Stack counts as a pprof profile: gzipped ``profile.proto``, read by pprof, Parca, Pyroscope.

The schema is google/pprof's ``proto/profile.proto`` (package ``perftools.profiles``),
declared here field by field and built into message classes by protobuf at run time, so
no generated code has to match the installed protobuf. :func:`message` gives the
``Profile`` class, for reading a file back.
"""

from __future__ import annotations

import functools
import gzip
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebpf_magic.export.profile import KERNEL, USER, as_stack_counts
from ebpf_magic.internal import files

PACKAGE = "perftools.profiles"
KERNEL_MAPPING = "[kernel.kallsyms]"  # the name perf and Parca give kernel text
USER_MAPPING = "[user]"  # user frames come named, without the file they were in
_REPEATED = "repeated"
# message -> (field, number, type, label); scalar types by name, messages by their name
SCHEMA: dict[str, list[tuple[str, int, str, str]]] = {
    "Profile": [
        ("sample_type", 1, "ValueType", _REPEATED), ("sample", 2, "Sample", _REPEATED),
        ("mapping", 3, "Mapping", _REPEATED), ("location", 4, "Location", _REPEATED),
        ("function", 5, "Function", _REPEATED), ("string_table", 6, "string", _REPEATED),
        ("drop_frames", 7, "int64", ""), ("keep_frames", 8, "int64", ""),
        ("time_nanos", 9, "int64", ""), ("duration_nanos", 10, "int64", ""),
        ("period_type", 11, "ValueType", ""), ("period", 12, "int64", ""),
        ("comment", 13, "int64", _REPEATED), ("default_sample_type", 14, "int64", ""),
    ],
    "ValueType": [("type", 1, "int64", ""), ("unit", 2, "int64", "")],
    "Sample": [("location_id", 1, "uint64", _REPEATED), ("value", 2, "int64", _REPEATED),
               ("label", 3, "Label", _REPEATED)],
    "Label": [("key", 1, "int64", ""), ("str", 2, "int64", ""), ("num", 3, "int64", ""),
              ("num_unit", 4, "int64", "")],
    "Mapping": [
        ("id", 1, "uint64", ""), ("memory_start", 2, "uint64", ""),
        ("memory_limit", 3, "uint64", ""), ("file_offset", 4, "uint64", ""),
        ("filename", 5, "int64", ""), ("build_id", 6, "int64", ""),
        ("has_functions", 7, "bool", ""), ("has_filenames", 8, "bool", ""),
        ("has_line_numbers", 9, "bool", ""), ("has_inline_frames", 10, "bool", ""),
    ],
    "Location": [("id", 1, "uint64", ""), ("mapping_id", 2, "uint64", ""),
                 ("address", 3, "uint64", ""), ("line", 4, "Line", _REPEATED),
                 ("is_folded", 5, "bool", "")],
    "Line": [("function_id", 1, "uint64", ""), ("line", 2, "int64", "")],
    "Function": [("id", 1, "uint64", ""), ("name", 2, "int64", ""),
                 ("system_name", 3, "int64", ""), ("filename", 4, "int64", ""),
                 ("start_line", 5, "int64", "")],
}


@functools.cache
def message(name: str = "Profile") -> Any:
    """The protobuf message class of ``perftools.profiles.NAME`` (``Profile`` by default)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="perftools/profiles/profile.proto",
                                              package=PACKAGE, syntax="proto3")
    for msg_name, fields in SCHEMA.items():
        msg = file.message_type.add(name=msg_name)
        for field, number, kind, label in fields:
            f = msg.field.add(name=field, number=number,
                              label=fdp.LABEL_REPEATED if label else fdp.LABEL_OPTIONAL)
            if kind in SCHEMA:
                f.type = fdp.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{kind}"
            else:
                f.type = getattr(fdp, f"TYPE_{kind.upper()}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


class _Strings:
    """The profile's string table: index 0 is ""."""

    def __init__(self) -> None:
        self.table = [""]
        self._index = {"": 0}

    def __call__(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.table)
            self.table.append(text)
        return self._index[text]


def to_pprof(data: Any, path: str | Path, *, value: str = "count",
             sample_type: tuple[str, str] = ("samples", "count"),
             period_ns: float | None = None, time_ns: int | None = None,
             duration_ns: int | None = None, comments: Sequence[str] = ()) -> Path:
    """Write stack counts to ``path`` as a gzipped pprof profile; returns the path.

    ``data`` is any stack-count data (see :mod:`ebpf_magic.export.profile`); each stack
    with a value above 0 is one sample, its locations leaf first. ``sample_type`` names
    the value and its unit (``("samples", "count")``; off-CPU time:
    ``("off_cpu", "microseconds")``). ``period_ns`` (1e9 / the sampling rate) adds a
    ``("cpu", "nanoseconds")`` value of count x period, so pprof shows time. Every
    distinct frame is one function and one location; kernel frames (kind ``"kernel"``)
    belong to the mapping ``[kernel.kallsyms]``, user frames to ``[user]``, others
    (the process name) to none. Other columns become sample labels (``pid``, ``host``).
    """
    counted = as_stack_counts(data, value)
    profile = message()()
    strings = _Strings()
    types = [sample_type] + ([("cpu", "nanoseconds")] if period_ns else [])
    for kind, unit in types:
        profile.sample_type.add(type=strings(kind), unit=strings(unit))
    if period_ns:
        profile.period_type.type = strings("cpu")
        profile.period_type.unit = strings("nanoseconds")
        profile.period = int(round(period_ns))
    mappings: dict[str, int] = {}
    for kind, filename in ((USER, USER_MAPPING), (KERNEL, KERNEL_MAPPING)):  # main one first
        if any(kind in ks for ks in counted["kinds"]):
            mappings[kind] = len(mappings) + 1
            profile.mapping.add(id=mappings[kind], filename=strings(filename),
                                has_functions=True)
    locations: dict[tuple[str, str], int] = {}
    labels = [c for c in counted.columns if c not in ("frames", "kinds", value)]
    for row in counted.to_dict("records"):
        amount = int(row[value])
        if amount <= 0:
            continue
        ids = []
        for name, kind in zip(reversed(row["frames"]), reversed(row["kinds"]), strict=True):
            key = (name, kind)
            if key not in locations:
                locations[key] = len(locations) + 1
                profile.function.add(id=locations[key], name=strings(name),
                                     system_name=strings(name))
                loc = profile.location.add(id=locations[key], mapping_id=mappings.get(kind, 0))
                loc.line.add(function_id=locations[key])
            ids.append(locations[key])
        sample = profile.sample.add(location_id=ids, value=[amount] + (
            [int(round(amount * period_ns))] if period_ns else []))
        for column in labels:
            _label(sample.label.add(), strings, column, row[column])
    profile.time_nanos = time.time_ns() if time_ns is None else int(time_ns)
    if duration_ns is not None:
        profile.duration_nanos = int(duration_ns)
    profile.comment.extend(strings(c) for c in comments)
    profile.string_table.extend(strings.table)  # last: every string is interned by now
    out = Path(path)
    files.write(out, gzip.compress(profile.SerializeToString(), mtime=0))
    return out


def _label(label: Any, strings: _Strings, key: str, val: Any) -> None:
    label.key = strings(str(key))
    if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, np.integer)):
        label.str = strings(str(val))
    else:
        label.num = int(val)
