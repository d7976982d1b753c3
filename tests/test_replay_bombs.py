"""Hostile recordings are cheap to refuse: bombs are rejected before they are decoded.

Each crafted file is loaded the way ``%bpf load`` does (load, then announce) in
a fresh interpreter, which reports its peak memory over its own baseline (taken
after importing what loading needs) and the seconds the load took. The child's
address space is capped, so a loader that did decode a bomb fails quickly
instead of exhausting the machine.

The Parquet bombs are written byte by byte: int64 zeros whose pages are one
run-length-encoded run, so a file of a few KB holds billions of values.
"""

from __future__ import annotations

import functools
import io
import json
import re
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ebpf_magic
from ebpf_magic import sessions
from ebpf_magic.data import overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.errors import ReplayError
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import format as fmt

from hostile import load_in_child, page, parquet, run, zeros_parquet

MEMORY = 300 << 20  # peak RSS a refusal may add to the interpreter's
SECONDS = 5.0  # how long a refusal may take
REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "recordings_corpus"


def assert_refused_cheaply(path: Path, message: str) -> str:
    result = load_in_child(path)
    assert result["error"] is not None, "the crafted file loaded"
    assert re.search(message, result["error"]), result["error"]
    assert result["memory"] < MEMORY, f"{result['memory'] >> 20} MB to refuse it"
    assert result["seconds"] < SECONDS, f"{result['seconds']:.1f} s to refuse it"
    assert "Traceback" not in result["error"] and len(result["error"]) < 400
    return result["error"]


# -- recordings around a crafted stream -------------------------------------------------


class _Stream:
    kind = "perf"

    def __init__(self, df: pd.DataFrame) -> None:
        self.df, self.stats = df, {"received": len(df)}

    def capture(self):
        return self.df, self.stats


class _Prog:
    name, source, cflags, pid = "p", "int x;", [], None
    probes = [Probe("tracepoint", "sched:sched_switch", "f")]
    attached = ["tracepoint:sched:sched_switch"]
    backend, readable, tables = "bcc", True, {}
    running, stopped_at, maps = True, None, {}
    globals = SavedGlobals()
    warnings: list[str] = []
    notes: list[str] = []

    def __init__(self, df: pd.DataFrame) -> None:
        self.started_at = time.time()
        self.events = {"ev": _Stream(df)}

    def read_maps(self, names=None) -> dict:
        return {}

    def host_facts(self, hostname: bool = True) -> dict:
        return sessions.writer.host_facts(hostname, self.backend)

    @property
    def overhead(self) -> pd.DataFrame:
        return overhead.frame([{"function": "f", "probes": "tracepoint:sched:sched_switch",
                                "prog_id": 5, "runs": 40, "run_time_ns": 2_000,
                                "seconds": 1.5}])


def recording_with(path: Path, stream: bytes, rows: int, columns: list[list[str]],
                   change=None) -> Path:
    """A recording of one stream whose Parquet member is ``stream``."""
    sessions.save(_Prog(pd.DataFrame({"x": np.zeros(1, np.int64)})), path)
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read(sessions.MANIFEST))
    manifest["streams"][0].update(rows=rows, columns=columns)
    if change:
        change(manifest)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(sessions.MANIFEST, json.dumps(manifest), zipfile.ZIP_DEFLATED)
        zf.writestr("streams/0.parquet", stream)
    return path


def test_crafted_parquet_reads_as_written() -> None:
    flat = pq.read_table(io.BytesIO(zeros_parquet(3, 5)))
    assert flat.num_rows == 15 and flat.column("x").to_pylist() == [0] * 15
    nested = pq.read_table(io.BytesIO(zeros_parquet(2, 3, elements=4, declared_values=3)))
    assert nested.column("x").to_pylist() == [[0] * 4] * 6
    assert pq.ParquetFile(io.BytesIO(zeros_parquet(2, 3, elements=4, declared_values=3))) \
        .metadata.row_group(0).column(0).num_values == 3


def test_parquet_bomb_is_refused_from_its_metadata(tmp_path: Path) -> None:
    bomb = zeros_parquet(30, 10_000_000)  # 2.4 GB of int64 zeros
    path = recording_with(tmp_path / "bomb.bpfrec", bomb, 300_000_000, [["x", "int64"]])
    assert path.stat().st_size < 10_000
    error = assert_refused_cheaply(
        path, r"bomb\.bpfrec:streams/0\.parquet: its metadata declares at least "
              r"[\d,]+ bytes, over the limit of 1,073,741,824 bytes")
    assert "max_bytes=" in error


def test_metadata_that_lies_is_refused_from_the_page_headers(tmp_path: Path) -> None:
    # one row holding a billion zeros, while its column claims one value of 16 bytes
    bomb = zeros_parquet(1, 1, elements=1_000_000_000, declared_values=1, declared_size=16)
    meta = pq.ParquetFile(io.BytesIO(bomb)).metadata.row_group(0).column(0)
    assert (meta.num_values, meta.total_uncompressed_size) == (1, 16)
    path = recording_with(tmp_path / "liar.bpfrec", bomb, 1, [["x", "list"]])
    assert path.stat().st_size < 10_000
    assert_refused_cheaply(path, r"liar\.bpfrec:streams/0\.parquet is not a readable Parquet "
                                 r"file \(a column chunk's pages hold more than the 1 values it "
                                 r"declares\)")


def test_strings_are_measured_before_they_expand(tmp_path: Path) -> None:
    # 4000 rows of one 512 KiB string: metadata declares 512 KiB, decoding makes 2 GiB
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(4000, np.int32)),
                                            pa.array(["a" * (512 << 10)]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": column}), buf, compression="zstd", store_schema=False)
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.row_group(0).column(0)
    assert meta.total_uncompressed_size < 1 << 20
    path = recording_with(tmp_path / "strings.bpfrec", buf.getvalue(), 4000, [["x", "str"]])
    assert path.stat().st_size < 10_000
    assert_refused_cheaply(path, r"strings\.bpfrec:streams/0\.parquet: row group 0 decodes to "
                                 r"[\d,]+ bytes, over the limit of 1,073,741,824 bytes")


def test_metadata_pyarrow_cannot_parse_is_an_error_not_an_abort(tmp_path: Path) -> None:
    # pyarrow's column-metadata accessors abort the process on this histogram
    stream = zeros_parquet(1, 5, histogram=[1, 2, 3, 4])
    path = recording_with(tmp_path / "stats.bpfrec", stream, 5, [["x", "int64"]])
    assert_refused_cheaply(path, r"stats\.bpfrec:streams/0\.parquet is not a readable Parquet "
                                 r"file \(")


@functools.cache
def central_directory(members: int) -> bytes:
    """Central-directory entries of ``members`` empty members."""
    entry = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0,
                        0, 0, 0, 0)  # then a 21-byte name
    return b"".join(entry + b"maps/0/%06d.parquet" % i for i in range(members))


def directory_bomb(path: Path, members: int, declared: int) -> Path:
    """A zip whose central directory lists ``members`` empty members (``declared`` in its end
    records), with no data: all zipfile needs to start parsing the directory."""
    directory = central_directory(members)
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared,
                        len(directory), 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(directory), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0, 0)
    path.write_bytes(directory + end64 + locator + end)
    return path


@pytest.mark.parametrize("declared", [1_000_000, 3], ids=["honest", "lying-count"])
def test_million_member_zip_is_refused_from_its_end_record(tmp_path: Path,
                                                           declared: int) -> None:
    path = directory_bomb(tmp_path / "members.bpfrec", 1_000_000, declared)
    with zipfile.ZipFile(directory_bomb(tmp_path / "small.bpfrec", 3, 3)) as zf:
        assert len(zf.infolist()) == 3  # zipfile reads the crafted layout
    assert_refused_cheaply(path, rf"members\.bpfrec lists {declared:,} members in 67,000,000 "
                                 r"bytes, more than a recording may hold \(10,000 members in "
                                 r"1,280,000 bytes\)")


def test_capture_time_out_of_range_is_a_short_error(tmp_path: Path) -> None:
    path = recording_with(tmp_path / "time.bpfrec", sessions.frame_to_parquet(
        pd.DataFrame({"x": np.zeros(1, np.int64)}))[0], 1, [["x", "int64"]],
        lambda m: m["capture"].update(start=1e20))
    assert_refused_cheaply(path, r"malformed recording: capture\.start is out of range "
                                 r"\(1e\+20 s since 1970")


def plain_recording(tmp_path: Path, change) -> Path:
    df = pd.DataFrame({"x": np.zeros(1, np.int64)})
    return recording_with(tmp_path / "r.bpfrec", sessions.frame_to_parquet(df)[0], 1,
                          [["x", "int64"]], change)


@pytest.mark.parametrize("where, value", [
    (("capture", "end"), -1), (("capture", "saved"), 2**70), (("capture", "start"), 1e300),
    (("capture", "start"), fmt.MAX_TIME + 1)])
def test_every_capture_time_is_checked(tmp_path: Path, where: tuple[str, str], value) -> None:
    path = plain_recording(tmp_path, lambda m: m[where[0]].update({where[1]: value}))
    with pytest.raises(ReplayError, match=rf"{where[0]}\.{where[1]} is out of range"):
        ebpf_magic.load(path)


def test_snapshot_times_are_checked(tmp_path: Path) -> None:
    def far_snapshot(m: dict) -> None:
        m["maps"] = [{"name": "m", "kind": "hash", "declared": "", "key_type": "u32",
                      "value_type": "u64", "max_entries": 1, "key_dtype": None,
                      "value_dtype": None, "info": {}, "snapshots": [
                          {"time": 1e13, "file": "maps/0/0.parquet", "rows": 1,
                           "columns": [["x", "int64"]], "index": []}]}]

    with pytest.raises(ReplayError, match=r"maps\[0\]\.snapshots\[0\]\.time is out of range"):
        ebpf_magic.load(plain_recording(tmp_path, far_snapshot))


def test_times_in_range_load_and_show(tmp_path: Path) -> None:
    prog = ebpf_magic.load(plain_recording(
        tmp_path, lambda m: m["capture"].update(start=fmt.MAX_TIME, end=None)))
    assert "at 2242-03-16" in str(prog.recording)
    odd = sessions.RecordingInfo(Path("x"), 1, {}, 1e20, None, None)
    assert "at unknown time" in str(odd)


def test_huge_parquet_footer_is_refused(tmp_path: Path) -> None:
    table = pa.table({"x": np.zeros(1, np.int64)})
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({"pad": "a" * (8 << 20)}), buf)
    path = recording_with(tmp_path / "footer.bpfrec", buf.getvalue(), 1, [["x", "int64"]])
    with pytest.raises(ReplayError, match=r"footer\.bpfrec:streams/0\.parquet has a "
                                          r"[\d,]+-byte metadata footer"):
        ebpf_magic.load(path)


def test_max_bytes_bounds_decoded_frames(tmp_path: Path) -> None:
    stream = zeros_parquet(1, 100_000)  # 800 KB decoded from a few hundred bytes
    path = recording_with(tmp_path / "r.bpfrec", stream, 100_000, [["x", "int64"]])
    assert ebpf_magic.load(path).events["ev"].df["x"].sum() == 0
    assert sum(i.file_size for i in zipfile.ZipFile(path).infolist()) < 100_000
    with pytest.raises(ReplayError, match=r"over the limit of 200,000 bytes"):
        ebpf_magic.load(path, max_bytes=200_000)


def test_frames_read_row_group_by_row_group(tmp_path: Path) -> None:
    df = pd.DataFrame({"pid": np.arange(20, dtype=np.uint32),
                       "comm": [f"c{i % 3}" for i in range(20)],
                       "stack": pd.Series([["a", f"b{i}"] for i in range(20)], dtype=object)})
    member, desc = sessions.frame_to_parquet(df)
    table = pq.read_table(io.BytesIO(member))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=6)
    assert pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.num_row_groups == 4
    path = recording_with(tmp_path / "r.bpfrec", buf.getvalue(), 20, desc["columns"])
    pd.testing.assert_frame_equal(ebpf_magic.load(path).events["ev"].df, df, check_exact=True)


@pytest.mark.parametrize("path", sorted((REPO / "notebooks" / "recordings").glob("*.bpfrec")),
                         ids=lambda p: p.name)
def test_committed_recordings_still_load(path: Path) -> None:
    prog = ebpf_magic.load(path)
    assert len(prog.maps) or len(prog.events)
    assert "unknown time" not in str(prog.recording)


def test_decoded_size_adds_up_across_row_groups(tmp_path: Path) -> None:
    # three row groups of 100 copies of one 1 KiB string: each fits 500 KB, together not
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(300, np.int32)),
                                            pa.array(["a" * 1024]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": column}), buf, row_group_size=100, store_schema=False)
    path = recording_with(tmp_path / "r.bpfrec", buf.getvalue(), 300, [["x", "str"]])
    assert len(ebpf_magic.load(path).events["ev"].df["x"].str.len().unique()) == 1
    with pytest.raises(ReplayError, match=r"r\.bpfrec:streams/0\.parquet: it decodes to at "
                                          r"least [\d,]+ bytes, over the limit of 500,000"):
        ebpf_magic.load(path, max_bytes=500_000)


def test_prefix_sharing_strings_are_refused(tmp_path: Path) -> None:
    # DELTA_BYTE_ARRAY values reuse the previous value's prefix: a page can hold more than itself
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": ["a" * 100] * 10}), buf, use_dictionary=False,
                   column_encoding={"x": "DELTA_BYTE_ARRAY"})
    path = recording_with(tmp_path / "r.bpfrec", buf.getvalue(), 10, [["x", "str"]])
    with pytest.raises(ReplayError, match=r"not a readable Parquet file \(a page is "
                                          r"DELTA_BYTE_ARRAY-encoded"):
        ebpf_magic.load(path)


def test_strings_measured_dictionary_encoded_read_back_the_same(tmp_path: Path) -> None:
    # one long string among short ones: the bound (longest x count) is over max_bytes, the real
    # size is not; read dictionary-encoded and measured, the columns come back as written
    words = ["b"] * 999 + ["a" * 100_000]
    df = pd.DataFrame({"comm": pd.Series(words, dtype=object),
                       "stack": pd.Series([[w, "c"] for w in words], dtype=object)})
    member, desc = sessions.frame_to_parquet(df)
    path = recording_with(tmp_path / "r.bpfrec", member, 1000, desc["columns"])
    back = ebpf_magic.load(path, max_bytes=10_000_000)
    pd.testing.assert_frame_equal(back.events["ev"].df, df, check_exact=True)


def test_pages_must_hold_every_value_of_their_chunk() -> None:
    """The parquet-mr file of the corpus, with the writer check off: the pages within its
    column chunk hold none of the 20,000 values it declares, so pyarrow would read on past
    the chunk (where a dictionary of 128 KiB strings waits); it is refused for that."""
    result = load_in_child(CORPUS / "parquet_mr_816.bpfrec", 10_000_000, prelude=(
        "from ebpf_magic.sessions.reader import parquet\nparquet.READS_PAST_CHUNKS = ()"))
    assert result["error"] is not None and result["error"].endswith(
        "is not a readable Parquet file (a column chunk's pages hold 0 values, not the 20,000 "
        "it declares)"), result["error"]
    assert result["memory"] < 100 << 20


def int64_chunk(pages: list[bytes], values: int) -> bytes:
    """Column ``x`` (int64, ``values`` rows) whose one column chunk is ``pages``."""
    body = b"".join(pages)
    return parquet(body, [{"name": "x", "type": 2, "chunks": [
        {"start": 4, "size": len(body), "values": values}]}], values, [[0]])


DICTIONARY = page(2, b"\0" * 8, 1)  # one int64 zero
DATA = page(0, bytes([1]) + run(5, 0), 5)  # five indexes of entry 0, one bit each


@pytest.mark.parametrize("pages, message", [
    ([DICTIONARY, page(0, b"\1", 0), DATA], "a data page holds no values"),
    ([DICTIONARY, page(1, b"", 0), DATA], "a column chunk holds a page of type 1"),
    ([DICTIONARY, DATA, DICTIONARY], "a column chunk holds a page of type 2"),
], ids=["empty data page", "index page", "second dictionary"])
def test_pages_are_only_what_recordings_write(tmp_path: Path, pages: list[bytes],
                                              message: str) -> None:
    """Data pages of at least one value after at most one dictionary page: the page walk costs
    at most a page header per value."""
    good = recording_with(tmp_path / "good.bpfrec", int64_chunk([DICTIONARY, DATA], 5), 5,
                          [["x", "int64"]])
    assert ebpf_magic.load(good).events["ev"].df["x"].tolist() == [0] * 5
    path = recording_with(tmp_path / "r.bpfrec", int64_chunk(pages, 5), 5, [["x", "int64"]])
    with pytest.raises(ReplayError, match=rf"not a readable Parquet file \({message}"):
        ebpf_magic.load(path)


def test_pages_of_a_chunk_are_capped(tmp_path: Path, monkeypatch) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": np.arange(5000, dtype=np.int64)}), buf, data_page_size=4096,
                   use_dictionary=False)
    pages = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.row_group(0).column(0)
    path = recording_with(tmp_path / "r.bpfrec", buf.getvalue(), 5000, [["x", "int64"]])
    assert ebpf_magic.load(path).events["ev"].df["x"].sum() == sum(range(5000))
    monkeypatch.setattr(fmt, "MAX_PAGES_PER_CHUNK", 4)
    with pytest.raises(ReplayError, match=r"not a readable Parquet file \(a column chunk has "
                                          r"more than 4 pages\)"):
        ebpf_magic.load(path)
    assert pages.total_compressed_size > 4 * 4096  # more than four pages of it


@pytest.mark.parametrize("dictionary", [True, False], ids=["dictionary", "plain"])
def test_json_columns_are_charged_by_what_they_decode_to(tmp_path: Path,
                                                         dictionary: bool) -> None:
    # 20 rows of 10 KB of empty lists: 400 KB as strings, about 5 MB as Python lists
    text = "[" + "[]," * 3333 + "[]]"
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": [text] * 20}), buf, use_dictionary=dictionary)
    path = recording_with(tmp_path / "r.bpfrec", buf.getvalue(), 20, [["x", "json"]])
    assert ebpf_magic.load(path).events["ev"].df["x"][19] == [[]] * 3334
    with pytest.raises(ReplayError, match=r"r\.bpfrec:streams/0\.parquet: row group 0 would "
                                          r"decode, its json parsed, to [\d,]+ bytes, over "
                                          r"the limit of 2,000,000 bytes"):
        ebpf_magic.load(path, max_bytes=2_000_000)
