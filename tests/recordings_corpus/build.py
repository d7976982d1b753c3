"""Write the hostile recordings of ``tests/recordings_corpus/`` (``python build.py [NAME...]``).

Each file is a small recording crafted so that a careless reader pays far more
than its size to refuse it: members compressed with bzip2 or LZMA, a Parquet
footer naming the old parquet-mr writer pyarrow reads past chunk ends for,
zero-size page headers in overlapping row groups, a source that sends a regex
quadratic, JSON columns that decode to 24 times their size, a 2 GiB map layout,
thousands of frames naming one member, a manifest that decodes to hundreds of
MB, a hundred thousand notes. ``test_recordings_corpus.py`` loads each in a child
process and measures what refusing it costs. The files are written deterministically (fixed times
and seeds); bzip2 of 1 GiB takes about ten seconds.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hostile import (  # noqa: E402 - the helpers live beside the tests
    CAPTURED,
    manifest,
    page,
    parquet,
    recording,
    run,
    stream,
    struct_,
    zeros_parquet,
)

ONE_ROW = zeros_parquet(1, 1)  # column x: one int64 zero
CASES: dict[str, Callable[[], bytes]] = {}


def case(f: Callable[[], bytes]) -> Callable[[], bytes]:
    CASES[f.__name__] = f
    return f


def _lower_declared_size(data: bytes, name: bytes, size: int) -> bytes:
    """``data`` (a zip) with member ``name`` declaring ``size`` bytes unpacked, in its local
    header and in the central directory."""
    out = bytearray(data)
    local = out.find(b"PK\x03\x04")
    while local >= 0:
        if out[local + 30:local + 30 + len(name)] == name:
            out[local + 22:local + 26] = size.to_bytes(4, "little")
        local = out.find(b"PK\x03\x04", local + 4)
    central = out.find(b"PK\x01\x02")
    while central >= 0:
        if out[central + 46:central + 46 + len(name)] == name:
            out[central + 24:central + 28] = size.to_bytes(4, "little")
        central = out.find(b"PK\x01\x02", central + 4)
    return bytes(out)


def _compressed_member(method: int, unpacked: int) -> bytes:
    """One stream whose member, compressed with ``method``, unpacks to ``unpacked`` zeros."""
    info = zipfile.ZipInfo("streams/0.parquet", date_time=(2025, 11, 24, 12, 0, 0))
    info.compress_type = method
    info.external_attr = 0o644 << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zi = zipfile.ZipInfo("manifest.json", date_time=(2025, 11, 24, 12, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(zi, json.dumps(manifest([stream("streams/0.parquet", 1, [["x", "int64"]])])))
        with zf.open(info, "w", force_zip64=False) as f:
            block = b"\0" * (64 << 20)
            for _ in range(unpacked // len(block)):
                f.write(block)
    return buf.getvalue()


@case
def bzip2_member() -> bytes:
    """1 GiB of zeros in 785 bytes of bzip2, declared as 100 bytes: zipfile's bzip2 reader
    unpacks a whole compressed chunk per call, whatever was asked for."""
    return _lower_declared_size(_compressed_member(zipfile.ZIP_BZIP2, 1 << 30),
                                b"streams/0.parquet", 100)


@case
def lzma_member() -> bytes:
    """256 MiB of zeros in LZMA, declared honestly (under the default max_bytes)."""
    return _compressed_member(zipfile.ZIP_LZMA, 256 << 20)


@case
def parquet_mr_816() -> bytes:
    """A footer naming parquet-mr 1.2.8, whose column chunk declares no bytes: pyarrow reads
    100 bytes past it (its PARQUET-816 workaround), where a dictionary page of one 128 KiB
    string and a page indexing it 20,000 times wait (2.6 GB decoded); the pages a reader
    walks within the chunk hold none of its values. Load with max_bytes=10 MB."""
    import pyarrow as pa

    def zstd(b: bytes) -> bytes:
        return pa.Codec("zstd", compression_level=19).compress(b).to_pybytes()

    length, rows = 1 << 17, 20_000
    entry = length.to_bytes(4, "little") + b"a" * length
    indexes = bytes([1]) + run(rows, 0)
    body = (page(2, zstd(entry), 1, stored=len(entry))
            + page(0, zstd(indexes), rows, stored=len(indexes)))
    member = parquet(body, [{"name": "x", "type": 6, "chunks": [
        {"start": 4, "size": 0, "stored": 10, "values": rows, "codec": 6}]}], rows, [[0]],
        created_by="parquet-mr version 1.2.8")
    return recording(manifest([stream("streams/0.parquet", rows, [["x", "str"]])]),
                     {"streams/0.parquet": member})


def _zero_size_pages(pages: int, groups: int) -> bytes:
    """``pages`` data pages that hold nothing and take no bytes, which each of ``groups`` row
    groups claims as its column chunk."""
    empty = struct_((1, "i32", 0), (2, "i32", 0), (3, "i32", 0),
                    (5, "struct", struct_((1, "i32", 0), (2, "i32", 0), (3, "i32", 3),
                                          (4, "i32", 3))))
    body = empty * pages
    return parquet(body, [{"name": "x", "type": 2, "chunks": [
        {"start": 4, "size": len(body), "values": 1}]}], groups, [[0]] * groups)


@case
def zero_size_pages() -> bytes:
    """20,000 zero-size page headers claimed by 300 overlapping row groups, the member deflated
    (about 2 KB): six million page headers to walk."""
    member = _zero_size_pages(20_000, 300)
    return recording(manifest([stream("streams/0.parquet", 300, [["x", "int64"]])]),
                     {"streams/0.parquet": member}, compression=zipfile.ZIP_DEFLATED)


@case
def overlapping_row_groups() -> bytes:
    """The same, stored: 1,000 zero-size page headers claimed by 500 row groups."""
    member = _zero_size_pages(1_000, 500)
    return recording(manifest([stream("streams/0.parquet", 500, [["x", "int64"]])]),
                     {"streams/0.parquet": member})


@case
def include_regex() -> bytes:
    """No backend named, and a source of 40,000 newlines: sniffing its dialect with
    ``^\\s*#\\s*include`` in re.M mode takes time quadratic in the newlines."""
    return recording(manifest([stream("streams/0.parquet", 1, [["x", "int64"]])],
                              backend=None, source="\n" * 40_000),
                     {"streams/0.parquet": ONE_ROW})


@case
def json_column() -> bytes:
    """A json column of 90 rows of one 1 MB text of empty lists: charged as strings
    (2 x bytes + 64 a row) it fits max_bytes=200 MB, decoded it is 2 GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "[" + "[]," * 333_333 + "[]]"
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": pa.array([text] * 90)}), buf, compression="zstd")
    return recording(manifest([stream("streams/0.parquet", 90, [["x", "json"]])]),
                     {"streams/0.parquet": buf.getvalue()})


@case
def layout_2gib() -> bytes:
    """A map whose value layout is an array of 8.4 M 255-byte elements (2 GiB), recorded
    without value_columns: deriving them makes one column per element."""
    snapshot = {"time": CAPTURED, "file": "maps/0/0.parquet", "rows": 1,
                "columns": [["x", "int64"]], "index": []}
    m = {"name": "m", "kind": "hash", "declared": "", "key_type": "u32",
         "value_type": "struct big", "max_entries": 1, "key_dtype": "<u4",
         "value_dtype": [["a", "V255", [1 << 20, 8]]], "info": {}, "snapshots": [snapshot]}
    return recording(manifest(maps=[m]), {"maps/0/0.parquet": ONE_ROW})


@case
def many_frames() -> bytes:
    """4,000 snapshots of a map all naming one member, each read again."""
    snapshots = [{"time": CAPTURED + i, "file": "maps/0/0.parquet", "rows": 1,
                  "columns": [["x", "int64"]], "index": []} for i in range(4000)]
    m = {"name": "m", "kind": "hash", "declared": "", "key_type": "u32", "value_type": "u64",
         "max_entries": 1, "key_dtype": None, "value_dtype": None, "info": {},
         "snapshots": snapshots}
    return recording(manifest(maps=[m]), {"maps/0/0.parquet": ONE_ROW})


def _padded_manifest(size: int) -> bytes:
    m = manifest([stream("streams/0.parquet", 1, [["x", "int64"]])])
    head = json.dumps(m)[:-1] + ', "pad": ['
    lists = (size - len(head) - 2) // 3
    text = head + "[]," * (lists - 1) + "[]]}"
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as zf:
        zi = zipfile.ZipInfo("manifest.json", date_time=(2025, 11, 24, 12, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(zi, text, compresslevel=9)
        zi = zipfile.ZipInfo("streams/0.parquet", date_time=(2025, 11, 24, 12, 0, 0))
        zf.writestr(zi, ONE_ROW)
    return data.getvalue()


@case
def manifest_16mb() -> bytes:
    """A manifest of 16 MB (deflated to about 16 KB), 5 M empty lists: 400 MB decoded."""
    return _padded_manifest((16 << 20) - 64)


@case
def manifest_values() -> bytes:
    """A manifest of 4 MB, 1.3 M empty lists: over 100 MB decoded."""
    return _padded_manifest((4 << 20) - 64)


@case
def many_notes() -> bytes:
    """150,000 notes of one character each in a manifest of under 4 MB: decoded within the
    manifest's bound, then refused by their count before any is kept."""
    m = manifest([stream("streams/0.parquet", 1, [["x", "int64"]])])
    m["warnings"] = []
    m["notes"] = [{"text": "x", "kind": "variant"}] * 60_000 + [{"text": "x"}] * 90_000
    return recording(m, {"streams/0.parquet": ONE_ROW})


def main(names: list[str]) -> None:
    for name in names or CASES:
        path = HERE / f"{name}.bpfrec"
        path.write_bytes(CASES[name]())
        print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
