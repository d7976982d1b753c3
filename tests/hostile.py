"""Hostile recordings, written byte by byte, and what loading one costs, measured in a child.

The Parquet writers here speak Thrift's compact protocol directly, so a file can
say anything a footer or page header can say (billions of run-length-encoded
zeros in a few bytes, pages that lie about their sizes, row groups that
overlap). :func:`recording` wraps members in a zip with fixed timestamps, so the
same call always writes the same bytes. :func:`load_in_child` loads a file in a
fresh interpreter the way a user first looks at one (load, announce, every
stream's and map's frame, every map's value columns) and reports the error, the
CPU seconds, the wall seconds and the peak memory over the child's own baseline.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

_CODES = {"i32": 5, "i64": 6, "bin": 8, "list": 9, "struct": 12}
ADDRESS_SPACE = 6 << 30  # the child's cap: far above a refusal, below what a bomb would take


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def thrift(kind: str, v: Any) -> bytes:
    if kind in ("i32", "i64"):
        return varint((v << 1) ^ (v >> 63))
    if kind == "bin":
        raw = v if isinstance(v, bytes) else v.encode()
        return varint(len(raw)) + raw
    if kind == "struct":
        return v
    item, items = v
    n = len(items)
    head = bytes([n << 4 | _CODES[item]]) if n < 15 else bytes([0xF0 | _CODES[item]]) + varint(n)
    return head + b"".join(thrift(item, x) for x in items)


def struct_(*fields: tuple[int, str, Any]) -> bytes:
    """A Thrift struct of ``(field id, type, value)``, ids ascending."""
    out, last = bytearray(), 0
    for fid, kind, v in fields:
        out.append((fid - last) << 4 | _CODES[kind])
        out += thrift(kind, v)
        last = fid
    return bytes(out + b"\0")


def run(count: int, value: int) -> bytes:
    """One run of the RLE/bit-packed hybrid encoding: ``count`` times ``value``."""
    return varint(count << 1) + bytes([value])


def page(kind: int, payload: bytes, values: int, stored: int | None = None,
         encoding: int = 8) -> bytes:
    """A page header and its payload: a dictionary page (``kind`` 2, PLAIN) or a data page v1
    (``encoding`` 8: RLE_DICTIONARY values, RLE levels). ``stored`` is the payload's size
    before compression (the payload as it is, by default)."""
    if kind == 2:
        described = (7, "struct", struct_((1, "i32", values), (2, "i32", 0)))
    else:
        described = (5, "struct", struct_((1, "i32", values), (2, "i32", encoding),
                                          (3, "i32", 3), (4, "i32", 3)))
    size = len(payload) if stored is None else stored
    return struct_((1, "i32", kind), (2, "i32", size), (3, "i32", len(payload)),
                   described) + payload


def parquet(body: bytes, columns: list[dict[str, Any]], rows: int, groups: list[list[int]],
            created_by: str | None = None) -> bytes:
    """A Parquet file: ``body`` after the magic, then a footer.

    ``columns`` are flat leaf columns (``name``, ``type``: Parquet's physical type
    number); ``groups`` lists, per row group, the index into ``chunks`` of each
    column's chunk, where each chunk (``start``, ``size``, ``values``, ``codec``,
    optional ``dictionary``, ``stored``) is given by ``columns[i]["chunks"]``.
    """
    schema = [struct_((4, "bin", "schema"), (5, "i32", len(columns)))]
    schema += [struct_((1, "i32", c["type"]), (3, "i32", 0), (4, "bin", c["name"]))
               for c in columns]
    row_groups = []
    for group in groups:
        chunks = []
        group_rows = 0
        for c, k in zip(columns, group, strict=True):
            ch = c["chunks"][k]
            group_rows = ch.get("rows", ch["values"])
            fields = [(1, "i32", c["type"]), (2, "list", ("i32", [0, 3, 8])),
                      (3, "list", ("bin", [c["name"]])), (4, "i32", ch.get("codec", 0)),
                      (5, "i64", ch["values"]), (6, "i64", ch.get("stored", ch["size"])),
                      (7, "i64", ch["size"]), (9, "i64", ch["start"])]
            if "dictionary" in ch:
                fields.append((11, "i64", ch["dictionary"]))
            chunks.append(struct_((2, "i64", ch["start"]), (3, "struct", struct_(*fields))))
        row_groups.append(struct_((1, "list", ("struct", chunks)), (2, "i64", 0),
                                  (3, "i64", group_rows)))
    fields = [(1, "i32", 1), (2, "list", ("struct", schema)), (3, "i64", rows),
              (4, "list", ("struct", row_groups))]
    if created_by is not None:
        fields.append((6, "bin", created_by))
    footer = struct_(*fields)
    return b"PAR1" + body + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def zeros_parquet(groups: int, rows: int, elements: int = 0, declared_values: int | None = None,
                  declared_size: int | None = None, histogram: list[int] | None = None) -> bytes:
    """Column ``x``: int64 zeros in ``groups`` row groups of ``rows`` rows.

    ``elements`` makes ``x`` a list<int64> whose rows each hold that many
    zeros; ``declared_values`` and ``declared_size`` replace what each column's
    metadata says it holds; ``histogram`` adds size statistics with that
    definition-level histogram.
    """
    values = rows * elements if elements else rows
    dictionary = page(2, b"\0" * 8, 1)
    payload = bytes([1]) + run(values, 0)
    if elements:
        reps = b"".join(run(1, 0) + run(elements - 1, 1) for _ in range(rows))
        defs = run(values, 2)
        payload = (len(reps).to_bytes(4, "little") + reps + len(defs).to_bytes(4, "little")
                   + defs + payload)
    chunk = dictionary + page(0, payload, values)
    size = len(chunk) if declared_size is None else declared_size
    path = ["x", "list", "element"] if elements else ["x"]
    out = bytearray(b"PAR1")
    row_groups = []
    for _ in range(groups):
        start = len(out)
        out += chunk
        fields = [(1, "i32", 2), (2, "list", ("i32", [0, 3, 8])), (3, "list", ("bin", path)),
                  (4, "i32", 0),
                  (5, "i64", values if declared_values is None else declared_values),
                  (6, "i64", size), (7, "i64", len(chunk)),
                  (9, "i64", start + len(dictionary)), (11, "i64", start)]
        if histogram is not None:
            fields.append((16, "struct", struct_((3, "list", ("i64", histogram)))))
        meta = struct_(*fields)
        column = struct_((2, "i64", start), (3, "struct", meta))
        row_groups.append(struct_((1, "list", ("struct", [column])), (2, "i64", size),
                                  (3, "i64", rows)))
    schema = [struct_((4, "bin", "schema"), (5, "i32", 1))]
    if elements:
        schema += [struct_((3, "i32", 1), (4, "bin", "x"), (5, "i32", 1), (6, "i32", 3)),
                   struct_((3, "i32", 2), (4, "bin", "list"), (5, "i32", 1))]
    schema.append(struct_((1, "i32", 2), (3, "i32", 0), (4, "bin", path[-1])))
    footer = struct_((1, "i32", 1), (2, "list", ("struct", schema)),
                     (3, "i64", groups * rows), (4, "list", ("struct", row_groups)))
    return bytes(out + footer + len(footer).to_bytes(4, "little") + b"PAR1")


# -- recordings -------------------------------------------------------------------------

CAPTURED = 1_764_000_000.0  # a fixed capture time, so crafted files are the same every time


def manifest(streams: list[dict[str, Any]] = (), maps: list[dict[str, Any]] = (),
             **program: Any) -> dict[str, Any]:
    """A manifest of one program with these streams and maps (``program`` overrides its
    fields; ``backend=None`` leaves the backend out, as recordings written before it was
    recorded do)."""
    prog = {"name": "p", "source": "int x;", "cflags": [], "pid": None, "probes": [],
            "attached": ["tracepoint:sched:sched_switch"], "backend": "bcc"}
    prog.update(program)
    if prog["backend"] is None:
        del prog["backend"]
    return {"format": "ebpf_magic.recording", "version": 1, "program": prog,
            "host": {"system": "Linux", "kernel": "6.18.0", "machine": "x86_64",
                     "hostname": None, "cpus": 2, "bcc": "0.26.0"},
            "capture": {"start": CAPTURED, "end": CAPTURED + 1, "saved": CAPTURED + 2},
            "streams": list(streams), "maps": list(maps), "tables": []}


def stream(member: str, rows: int, columns: list[list[str]], name: str = "ev") -> dict:
    return {"name": name, "kind": "perf", "file": member, "rows": rows, "columns": columns,
            "index": [], "stats": {"received": rows}}


def zip_bytes(members: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of ``(name, data, compression)`` members, with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, date_time=(2025, 11, 24, 12, 0, 0))
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def recording(manifest_: dict[str, Any], members: dict[str, bytes] = None,
              compression: int = zipfile.ZIP_STORED) -> bytes:
    """A recording: the manifest (deflated, as the writer does) and ``members`` (stored, or
    ``compression``)."""
    parts = [("manifest.json", json.dumps(manifest_).encode(), zipfile.ZIP_DEFLATED)]
    parts += [(name, data, compression) for name, data in (members or {}).items()]
    return zip_bytes(parts)


# -- what loading costs -----------------------------------------------------------------

CHILD = r"""
import json, resource, sys, time
import numpy, pandas, pyarrow, pyarrow.parquet, pyarrow.compute
import ebpf_magic
from ebpf_magic import sessions
from ebpf_magic.errors import ReplayError

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

max_bytes = json.loads(sys.argv[2])
exec(sys.argv[3])
base, start, wall = peak(), cpu(), time.perf_counter()
try:
    prog = sessions.load(sys.argv[1], **({} if max_bytes is None else {"max_bytes": max_bytes}))
    print(sessions.announce(prog), file=sys.stderr)
    for s in prog.events.values():
        s.df
    for m in prog.maps.values():
        m.df, m.value_columns, m.info()
    error = None
except ReplayError as e:
    error = str(e)
print(json.dumps({"error": error, "cpu": cpu() - start, "seconds": time.perf_counter() - wall,
                  "memory": peak() - base}))
"""


def load_in_child(path: Path, max_bytes: int | None = None, timeout: float = 300,
                  prelude: str = "") -> dict[str, Any]:
    """What loading ``path`` in a fresh interpreter raised (``error``, None if it loaded),
    and cost: ``cpu`` and wall ``seconds``, peak ``memory`` over the child's baseline.

    ``prelude`` is Python the child runs first (to change a limit, say)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    done = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(max_bytes),
                           prelude],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)
