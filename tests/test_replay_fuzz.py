"""The loader treats a recording as hostile input: every bad file is a ReplayError.

Property tests damage a valid recording (truncate it, flip bytes, replace
manifest fields with values of any JSON type, swap Parquet members) and check
that loading either succeeds or raises ReplayError, never anything else.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpf_magic import sessions
from ebpf_magic.data import overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.errors import ReplayError
from ebpf_magic.probes import Probe
from ebpf_magic.sessions import format as fmt

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Stream:
    kind = "perf"

    def __init__(self, df):
        self.df, self.stats = df, {"received": len(df)}

    def capture(self):
        return self.df, self.stats


class _Map:
    def __init__(self, name, df):
        self.name, self.kind, self.df = name, "hash", df
        self.key_type, self.value_type, self.max_entries = "u32", "u64", 64
        self.declared, self.key_dtype, self.value_dtype = "", None, None
        self.value_columns = ["value"]

    def info(self):
        return {"map": self.name, "entries": len(self.df)}

    def __len__(self):
        return len(self.df)


class _Prog:
    name, source, cflags, pid = "p", "int x;", [], None
    probes = [Probe("tracepoint", "sched:sched_switch", "f")]
    attached = ["tracepoint:sched:sched_switch"]
    backend, readable, tables = "bcc", True, {}
    running, stopped_at = True, None
    globals = SavedGlobals()
    warnings: list[str] = []
    notes: list[str] = []

    def __init__(self):
        self.started_at = time.time()
        self.events = {"ev": _Stream(pd.DataFrame({
            "pid": np.arange(20, dtype=np.uint32), "comm": [f"c{i}" for i in range(20)],
            "stack": pd.Series([["a", "b"]] * 20, dtype=object)}))}
        self.maps = {"m": _Map("m", pd.DataFrame({"key": np.arange(5, dtype=np.uint32),
                                                  "value": np.arange(5, dtype=np.uint64)}))}

    def read_maps(self, names=None):
        return {n: self.maps[n].df for n in (self.maps if names is None else names)}

    def host_facts(self, hostname=True):
        return sessions.writer.host_facts(hostname, self.backend)

    @property
    def overhead(self) -> pd.DataFrame:
        return overhead.frame([{"function": "f", "probes": "tracepoint:sched:sched_switch",
                                "prog_id": 5, "runs": 40, "run_time_ns": 2_000,
                                "seconds": 1.5}])


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("rec") / "valid.bpfrec"
    return sessions.save(_Prog(), path).read_bytes()


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def build(files: dict[str, bytes], deflate: tuple[str, ...] = ()) -> bytes:
    """A zip of ``files``, those named in ``deflate`` deflated, the others stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if name in deflate
                        else zipfile.ZIP_STORED)
    return buf.getvalue()


def load_bytes(tmp_path: Path, data: bytes, **kw):
    path = tmp_path / "case.bpfrec"
    path.write_bytes(data)
    return sessions.load(path, **kw)


def with_manifest(valid: bytes, change) -> bytes:
    files = members(valid)
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    return build(files)


def test_valid_file_loads(valid: bytes, tmp_path: Path) -> None:
    prog = load_bytes(tmp_path, valid)
    assert len(prog.events["ev"].df) == 20 and prog.maps["m"].df["value"].sum() == 10


@FUZZ
@given(st.data())
def test_truncated_files(valid: bytes, tmp_path: Path, data) -> None:
    cut = data.draw(st.integers(0, len(valid) - 1))
    with pytest.raises(ReplayError):
        load_bytes(tmp_path, valid[:cut])


@FUZZ
@given(st.data())
def test_flipped_bytes_load_or_fail_cleanly(valid: bytes, tmp_path: Path, data) -> None:
    damaged = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(valid) - 1))] = data.draw(st.integers(0, 255))
    try:
        prog = load_bytes(tmp_path, bytes(damaged))
    except ReplayError as e:
        assert str(e)
    else:
        assert prog.name  # an undamaged part of the file, or damage nobody reads


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def paths(node, prefix=()):
    """Every key path in a JSON document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


@FUZZ
@given(st.data())
def test_manifest_fields_of_any_type(valid: bytes, tmp_path: Path, data) -> None:
    manifest = json.loads(members(valid)["manifest.json"])
    target = data.draw(st.sampled_from([p for p in paths(manifest) if p]))
    value = data.draw(json_values)
    delete = data.draw(st.booleans())

    def change(m):
        node = m
        for k in target[:-1]:
            node = node[k]
        if delete:
            del node[target[-1]]
        else:
            node[target[-1]] = copy.deepcopy(value)

    try:
        load_bytes(tmp_path, with_manifest(valid, change))
    except ReplayError as e:
        assert str(e)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_as_parquet(valid: bytes, tmp_path: Path, blob: bytes) -> None:
    files = members(valid)
    files["streams/0.parquet"] = blob
    with pytest.raises(ReplayError):
        load_bytes(tmp_path, build(files))


@FUZZ
@given(st.data())
def test_damaged_parquet_pages_and_footers(valid: bytes, tmp_path: Path, data) -> None:
    files = members(valid)
    damaged = bytearray(files["streams/0.parquet"])
    for _ in range(data.draw(st.integers(1, 6))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    files["streams/0.parquet"] = bytes(damaged)
    try:
        prog = load_bytes(tmp_path, build(files))
    except ReplayError as e:
        assert str(e)
    else:
        assert len(prog.events["ev"].df) == 20


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_as_file(tmp_path: Path, blob: bytes) -> None:
    with pytest.raises(ReplayError):
        load_bytes(tmp_path, blob)


@pytest.mark.parametrize("name", ["../evil.parquet", "/etc/passwd", "maps/../../x.parquet",
                                  "streams/0.parquet/../../x", "run.py", "streams\\0.parquet",
                                  "streams/0.pickle"])
def test_path_traversal_and_foreign_members(valid: bytes, tmp_path: Path, name: str) -> None:
    files = members(valid)
    files[name] = b"x"
    with pytest.raises(ReplayError, match="unexpected member"):
        load_bytes(tmp_path, build(files))


def test_zip_bomb_is_refused_before_unpacking(valid: bytes, tmp_path: Path) -> None:
    files = members(valid)
    files["manifest.json"] += b" " * (64 << 20)
    bomb = build(files, deflate=("manifest.json",))
    assert len(bomb) < 1 << 20
    with pytest.raises(ReplayError, match=r"manifest\.json unpacks to 67,110,\d{3} bytes, more "
                                          r"than a manifest may \(4,194,304\)"):
        load_bytes(tmp_path, bomb)
    files = members(valid)
    files["maps/0/9.parquet"] = b"\0" * (64 << 20)
    with pytest.raises(ReplayError, match=r"case\.bpfrec would unpack to 67,\d{3},\d{3} bytes, "
                                          r"more than the limit \(33,554,432\)"):
        load_bytes(tmp_path, build(files), max_bytes=32 << 20)


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_DEFLATED, "deflate"),
                                          (zipfile.ZIP_BZIP2, "bzip2"),
                                          (zipfile.ZIP_LZMA, "lzma")])
def test_parquet_members_are_stored(valid: bytes, tmp_path: Path, method: int,
                                    name: str) -> None:
    """A stored member's bytes are the file's own, so what reading it costs is bounded by the
    file's size; Parquet compresses its own pages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, data in members(valid).items():
            zf.writestr(member, data, method if member == "maps/0/0.parquet"
                        else zipfile.ZIP_STORED)
    with pytest.raises(ReplayError, match=rf"maps/0/0\.parquet is compressed with {name}; a "
                                          r"recording's Parquet members are stored"):
        load_bytes(tmp_path, buf.getvalue())


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_the_manifest_may_be_stored_or_deflated(valid: bytes, tmp_path: Path,
                                                method: int) -> None:
    files = members(valid)
    prog = load_bytes(tmp_path, build(files, deflate=("manifest.json",)
                                      if method == zipfile.ZIP_DEFLATED else ()))
    assert len(prog.events["ev"].df) == 20
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data, zipfile.ZIP_BZIP2 if member == "manifest.json"
                        else zipfile.ZIP_STORED)
    with pytest.raises(ReplayError, match=r"manifest\.json is compressed with bzip2"):
        load_bytes(tmp_path, buf.getvalue())


def test_member_that_unpacks_beyond_its_declared_size(valid: bytes, tmp_path: Path) -> None:
    files = members(valid)
    files["manifest.json"] += b" " * 4096
    data = bytearray(build(files, deflate=("manifest.json",)))
    # lower the declared size in the central directory so the member lies about it
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    while data[cd + 46: cd + 46 + 13] != b"manifest.json":
        cd = data.rfind(b"PK\x01\x02", 0, cd)
    data[cd + 24: cd + 28] = (100).to_bytes(4, "little")
    with pytest.raises(ReplayError):
        load_bytes(tmp_path, bytes(data))


def test_too_many_members(valid: bytes, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fmt, "MAX_MEMBERS", 50)
    files = members(valid)
    files.update({f"maps/0/{i}.parquet": b"" for i in range(100, 160)})
    with pytest.raises(ReplayError, match="members"):
        load_bytes(tmp_path, build(files))


def test_repeated_member_names(valid: bytes, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning):
        for name, blob in members(valid).items():
            zf.writestr(name, blob)
        zf.writestr("manifest.json", b"{}")
    with pytest.raises(ReplayError, match="repeats"):
        load_bytes(tmp_path, buf.getvalue())


def parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.mark.parametrize("table", [
    pa.table({"key": pa.array([1, 2, 3, 4, 5], pa.uint64()),
              "value": pa.array([0, 1, 2, 3, 4], pa.uint64())}),  # key's type differs
    pa.table({"key": pa.array([1, 2, 3, 4], pa.uint32()),
              "value": pa.array([0, 1, 2, 3], pa.uint64())}),  # fewer rows
    pa.table({"value": pa.array([0, 1, 2, 3, 4], pa.uint64()),
              "key": pa.array([1, 2, 3, 4, 5], pa.uint32())}),  # columns reordered
    pa.table({"key": pa.array([1, None, 3, 4, 5], pa.uint32()),
              "value": pa.array([0, 1, 2, 3, 4], pa.uint64())}),  # nulls in an integer
    pa.table({"key": pa.array(["a"] * 5), "value": pa.array([0] * 5, pa.uint64())}),
])
def test_parquet_that_does_not_match_the_manifest(valid: bytes, tmp_path: Path, table) -> None:
    files = members(valid)
    files["maps/0/0.parquet"] = parquet(table)
    with pytest.raises(ReplayError, match="manifest"):
        load_bytes(tmp_path, build(files))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(version=99), "version 99"),
    (lambda m: m.update(format="something else"), "not an ebpf_magic recording"),
    (lambda m: m["maps"][0]["snapshots"][0].update(file="../../etc/passwd"), "missing"),
    (lambda m: m["maps"][0].update(key_dtype=["O"]), "malformed field"),
    (lambda m: m["maps"][0].update(key_dtype="O"), "unsupported type"),
    (lambda m: m["maps"][0].update(value_dtype=[["a", "<u8", [1 << 30]]]), "shape"),
    (lambda m: m["streams"][0]["columns"][0].__setitem__(1, "object"), "unknown column type"),
    (lambda m: m["streams"][0]["columns"][0].__setitem__(1, "pickle"), "unknown column type"),
    (lambda m: m["capture"].update(start=float("nan")), "finite"),
    (lambda m: m["maps"][0]["info"].update(script="x"), r"maps\[0\]\.info has unknown fields"),
    (lambda m: m["maps"][0]["info"].update(entries="<b>3</b>"), "wrong type"),
    (lambda m: m["maps"][0]["info"].update(max_entries=[1]), "wrong type"),
    (lambda m: m["maps"][0]["snapshots"][0].update(file="streams/0.parquet"),
     r"maps\[0\]\.snapshots\[0\] names streams/0\.parquet, which another frame names too"),
    (lambda m: m["maps"][0].update(value_dtype=[[f"f{i}", "<u4"] for i in range(4097)]),
     r"maps\[0\]\.value_dtype has more than 4,096 fields"),
    (lambda m: m["maps"][0].update(value_dtype=[["a", [[f"f{i}", "<u4"] for i in range(3000)]],
                                                ["b", [[f"f{i}", "<u4"] for i in range(2000)]]]),
     r"maps\[0\]\.value_dtype has more than 4,096 fields"),
    (lambda m: m["maps"][0].update(key_dtype=[["a", "<u8", [1 << 20, 5]]]),
     r"maps\[0\]\.key_dtype has 5,242,880 elements, more than a map's key or value holds"),
])
def test_crafted_manifests(valid: bytes, tmp_path: Path, change, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        load_bytes(tmp_path, with_manifest(valid, change))


@pytest.mark.parametrize("stats", [{"received": "5"}, {"received": 1.5},
                                   {"lost_per_cpu": {"x": 1}}, {"lost_per_cpu": {"0": "1"}},
                                   {"lost_per_cpu": [1]}, {"lost_per_cpu": {"1" * 40: 1}}])
def test_stream_stats_of_the_wrong_shape_are_rejected(valid: bytes, tmp_path: Path,
                                                      stats: dict) -> None:
    data = with_manifest(valid, lambda m: m["streams"][0].update(stats=stats))
    with pytest.raises(ReplayError, match=r"malformed recording: streams\[0\]\.stats"):
        load_bytes(tmp_path, data)


def test_map_listing_from_a_recording_is_shown_escaped(valid: bytes, tmp_path: Path) -> None:
    """Strings a recording chooses reach the browser's HTML as text, never as markup."""
    from ebpf_magic.present.widgets import MapBrowser

    evil = "<img src=x onerror=alert(1)>"
    data = with_manifest(valid, lambda m: m["maps"][0]["info"].update(kind=evil, key=evil))
    prog = load_bytes(tmp_path, data)
    browser = MapBrowser(prog, start=False)
    html = browser.listing.value + browser.table.value
    browser.close()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_frames_are_counted_before_any_is_read(valid: bytes, tmp_path: Path) -> None:
    def many(m: dict) -> None:
        m["maps"][0]["snapshots"] = [{"time": 1.0, "file": f"maps/0/{i}.parquet", "rows": 1,
                                      "columns": [["x", "int64"]]} for i in range(10_000)]

    with pytest.raises(ReplayError, match=r"it describes 10,001 frames, more than a recording "
                                          r"holds \(10,000\)"):
        load_bytes(tmp_path, with_manifest(valid, many))


@pytest.mark.parametrize("elements, columns", [(16, [f"slots[{i}]" for i in range(16)]),
                                               (5000, ["value"])])
def test_value_columns_are_derived_from_small_layouts_only(valid: bytes, tmp_path: Path,
                                                           elements: int,
                                                           columns: list[str]) -> None:
    """A recording that does not list its maps' value columns gets them from the value's
    layout, one a scalar: for a layout of thousands, the usual names instead."""
    def change(m: dict) -> None:
        del m["maps"][0]["value_columns"]
        m["maps"][0]["value_dtype"] = [["slots", "<u8", [elements]]]

    prog = load_bytes(tmp_path, with_manifest(valid, change))
    assert prog.maps["m"].value_columns == columns


def test_a_recording_without_a_backend_replays_as_bcc(valid: bytes, tmp_path: Path) -> None:
    """Recordings were written without their backend only while BCC was the only one: replay
    names it without sniffing the source (libbpf's dialect here)."""
    def change(m: dict) -> None:
        del m["program"]["backend"]
        m["program"]["source"] = '#include <vmlinux.h>\nSEC("tp/x") int f(void *c) { return 0; }'

    assert load_bytes(tmp_path, with_manifest(valid, change)).backend == "bcc"


def test_the_file_is_opened_once(valid: bytes, tmp_path: Path, monkeypatch) -> None:
    """A file swapped in at the path after the zip's end records were checked is never read:
    every check and the zip reader read the one file opened."""
    from ebpf_magic.sessions.reader import archive

    path = tmp_path / "case.bpfrec"
    path.write_bytes(valid)
    swapped = tmp_path / "swapped"
    swapped.write_bytes(b"not a zip" * 100)
    checked = archive.directory_extent

    def then_swap(f):
        extent = checked(f)
        swapped.replace(path)
        return extent

    monkeypatch.setattr(archive, "directory_extent", then_swap)
    prog = sessions.load(path)
    assert path.read_bytes() == b"not a zip" * 100
    assert len(prog.events["ev"].df) == 20 and prog.maps["m"].df["value"].sum() == 10


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    from ebpf_magic.sessions import reader

    fifo = tmp_path / "pipe.bpfrec"
    os.mkfifo(fifo)
    with pytest.raises(ReplayError, match=r"pipe\.bpfrec is not a regular file"):
        reader.read(fifo)


def test_a_member_is_read_once(valid: bytes, tmp_path: Path) -> None:
    from ebpf_magic.sessions.reader.archive import Archive
    from ebpf_magic.sessions.reader.budget import Budget

    path = tmp_path / "case.bpfrec"
    path.write_bytes(valid)
    archive = Archive(path, Budget(unpacked=1 << 20, decoded=1 << 20))
    try:
        archive.read("maps/0/0.parquet")
        with pytest.raises(ReplayError, match=r"maps/0/0\.parquet is read twice"):
            archive.read("maps/0/0.parquet")
    finally:
        archive.close()
