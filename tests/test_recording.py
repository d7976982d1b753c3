"""Recordings: save -> load keeps every row and dtype; replay needs neither BCC nor root."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

import ebpf_magic
from ebpf_magic import sessions
from ebpf_magic.data import overhead
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.errors import BPFError, ReplayError
from ebpf_magic.probes import Probe


class FakeStream:
    kind = "perf"

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.stats = {"received": len(df), "lost_kernel": 3, "dropped_cap": 0,
                      "lost_per_cpu": {1: 3}}

    def capture(self):
        return self.df, self.stats


class FakeMap:
    def __init__(self, name: str, df: pd.DataFrame, kind: str = "hash") -> None:
        self.name, self.kind, self.df = name, kind, df
        self.key_type, self.value_type, self.max_entries = "u32", "u64", 1024
        self.declared, self.key_dtype, self.value_dtype = "", None, None
        self.value_columns = ["value"]

    def info(self) -> dict:
        return {"map": self.name, "kind": self.kind, "entries": len(self.df)}

    def __len__(self) -> int:
        return len(self.df)


class FakeProgram:
    """Just the attributes a recording reads from a program."""

    backend, readable, tables = "bcc", True, {}
    globals = SavedGlobals()

    def __init__(self, events: dict, maps: dict) -> None:
        self.name, self.source, self.cflags, self.pid = "fake", "int x;", ["-DN=1"], 42
        self.probes = [Probe("tracepoint", "syscalls:sys_enter_write", "on_write", 42)]
        self.attached = ["tracepoint:syscalls:sys_enter_write"]
        self.started_at, self.stopped_at, self.running = time.time() - 3, None, True
        self.warnings: list = []
        self.notes: list = []
        self.events = {k: FakeStream(v) for k, v in events.items()}
        self.maps = {k: FakeMap(k, v) for k, v in maps.items()}

    def read_maps(self, names=None) -> dict:
        return {n: self.maps[n].df for n in (self.maps if names is None else names)}

    def host_facts(self, hostname: bool = True) -> dict:
        return sessions.writer.host_facts(hostname, self.backend)

    @property
    def overhead(self) -> pd.DataFrame:
        """Two functions, one of which never ran (no time per run: NaN)."""
        return overhead.frame([
            {"function": "on_write", "probes": "tracepoint:syscalls:sys_enter_write",
             "prog_id": 12, "runs": 300, "run_time_ns": 45_000, "seconds": 3.0},
            {"function": "unused", "probes": "", "prog_id": 13, "runs": 0, "run_time_ns": 0,
             "seconds": 3.0}])


def manifest_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(sessions.MANIFEST))


def every_kind_of_column() -> pd.DataFrame:
    n = 5
    return pd.DataFrame({
        "u64": np.array([0, 1, 2**64 - 1, 2**63, 7], np.uint64),
        "i8": np.array([-128, 127, 0, 1, -1], np.int8),
        "u16": np.arange(n, dtype=np.uint16),
        "f32": np.array([1.5, np.nan, -0.0, np.inf, 3], np.float32),
        "f64": np.array([1e-300, 2, 3, np.nan, 5], np.float64),
        "flag": np.array([True, False, True, True, False]),
        "ts": pd.to_datetime(np.arange(n) * 10**9 + 123, unit="ns"),
        "utc": pd.to_datetime(np.arange(n), unit="s", utc=True),
        "delta": pd.to_timedelta(np.arange(n), unit="ms"),
        "comm": ["a", "bé", "", "x y", "z"],
        "obj_str": pd.Series(["a", None, "c", "d", "e"], dtype=object),
        "nullable": pd.array([1, None, 3, 4, 5], dtype="Int64"),
        "string": pd.array(["p", None, "q", "r", "s"], dtype="string"),
        "raw": pd.Series([b"\0a", b"", None, b"\xff", b"x"], dtype=object),
        "stack": pd.Series([["main", "f"], [], ["g"], ["a", "b", "c"], ["z"]], dtype=object),
        "key.pid": np.array([1, 2, 3, 4, 5], np.uint32),
    })


def test_round_trip_keeps_every_row_and_dtype(tmp_path: Path) -> None:
    events = every_kind_of_column()
    counts = pd.DataFrame({"key": np.array([3, 1, 2], np.uint32),
                           "value": np.array([10, 20, 2**64 - 1], np.uint64)})
    prog = FakeProgram({"events": events, "empty": events.iloc[:0]}, {"counts": counts})
    path = sessions.save(prog, tmp_path / "sub" / "fake.bpfrec")

    back = ebpf_magic.load(path)
    pd.testing.assert_frame_equal(back.events["events"].df, events, check_exact=True)
    pd.testing.assert_frame_equal(back.events["empty"].df, events.iloc[:0], check_exact=True)
    pd.testing.assert_frame_equal(back.maps["counts"].df, counts, check_exact=True)
    assert back.events["events"].stats == {"received": 5, "lost_kernel": 3, "dropped_cap": 0,
                                           "lost_per_cpu": {1: 3}}
    assert back.maps["counts"].info() == {"map": "counts", "kind": "hash", "entries": 3}
    assert (back.name, back.source, back.cflags, back.pid) == ("fake", "int x;", ["-DN=1"], 42)
    assert back.probes == prog.probes and back.attached == prog.attached
    assert back.running is False and back.prog_ids() == []
    info = back.recording
    assert info.host["kernel"] == os.uname().release and info.host["cpus"] == os.cpu_count()
    assert info.host["hostname"] == os.uname().nodename
    assert info.start == pytest.approx(prog.started_at)
    assert "captured on" in str(info) and str(path) in str(info)


def test_indexed_frames_and_hostname_left_out(tmp_path: Path) -> None:
    hist = pd.DataFrame({"count": np.array([1, 5, 2], np.uint64)},
                        index=pd.Index([1, 2, 4], name="bucket", dtype=np.uint64))
    prog = FakeProgram({}, {"hist": hist})
    back = ebpf_magic.load(prog_path := sessions.save(prog, tmp_path / "h.bpfrec",
                                                      hostname=False))
    pd.testing.assert_frame_equal(back.maps["hist"].df, hist, check_exact=True)
    assert back.recording.host["hostname"] is None
    manifest = json.loads(zipfile.ZipFile(prog_path).read("manifest.json"))
    assert os.uname().nodename not in json.dumps(manifest["host"])


def test_snapshots_over_time_replay(tmp_path: Path) -> None:
    prog = FakeProgram({}, {"hist": pd.DataFrame({"value": np.array([1], np.uint64)})})
    snaps = [sessions.Snapshot(1000.0 + i, {"hist": pd.DataFrame(
        {"value": np.array([i, i * 2], np.uint64)})}) for i in range(3)]
    back = ebpf_magic.load(sessions.save(prog, tmp_path / "s.bpfrec", snapshots=snaps))
    stacked = back.maps["hist"].snapshots
    assert len(stacked) == 3 * 2 + 1  # three periodic snapshots, then the final one
    assert list(stacked.columns) == ["time", "value"]
    assert stacked["time"].iloc[0] == pd.Timestamp(1000, unit="s", tz="UTC")
    assert stacked["value"].tolist()[:6] == [0, 0, 1, 2, 2, 4]
    browser = back.browse()
    assert list(browser.model.listing()["map"]) == ["hist"]
    rec = sessions.record_snapshots(back)
    assert [s.time for s in rec.snapshots][:3] == [1000.0, 1001.0, 1002.0]
    pd.testing.assert_frame_equal(rec.frame("hist"), stacked)
    # a replayed program saves again, identically
    again = ebpf_magic.load(back.save(tmp_path / "again.bpfrec"))
    pd.testing.assert_frame_equal(again.maps["hist"].snapshots, stacked)


def test_unrecordable_column_is_a_clear_error(tmp_path: Path) -> None:
    prog = FakeProgram({"e": pd.DataFrame({"c": pd.Series([1 + 2j])})}, {})
    with pytest.raises(BPFError, match="cannot hold"):
        sessions.save(prog, tmp_path / "x.bpfrec")
    assert not (tmp_path / "x.bpfrec").exists()


def test_recordings_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(sessions.RECORDINGS_ENV, raising=False)
    assert sessions.recording_path("lat") == tmp_path / "recordings" / "lat.bpfrec"
    assert sessions.find_recording("lat") is None
    sessions.save(FakeProgram({}, {}), tmp_path / "recordings" / "lat.bpfrec")
    assert sessions.find_recording("lat") == tmp_path / "recordings" / "lat.bpfrec"
    monkeypatch.setenv(sessions.RECORDINGS_ENV, str(tmp_path / "elsewhere"))
    assert sessions.find_recording("lat") is None
    assert sessions.find_recording("../lat") is None
    with pytest.raises(ValueError):
        sessions.recording_path("../../etc/passwd")
    monkeypatch.setenv(sessions.REPLAY_ENV, "1")
    assert sessions.can_run_live() == (False, "replay was requested (EBPF_MAGIC_REPLAY=1)")
    assert ebpf_magic.is_live() is False


REPLAY_SCRIPT = """
import sys
sys.modules["bcc"] = None  # importing BCC would fail
import ebpf_magic
prog = ebpf_magic.load(sys.argv[1])
print(prog.maps["counts"].df.to_json())
print(ebpf_magic.is_live())
assert not any(m == "bcc" or m.startswith("bcc.") for m in sys.modules if sys.modules[m])
"""


def run_unprivileged(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``args`` as nobody without capabilities when we are root, else as ourselves."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path)}
    return subprocess.run(prefix + args, capture_output=True, text=True, env=env, timeout=120)


def test_replay_needs_no_privileges_and_no_bcc() -> None:
    with tempfile.TemporaryDirectory(prefix="ebpf_magic_replay_") as tmp:
        check_unprivileged_replay(Path(tmp))


def check_unprivileged_replay(tmp_path: Path) -> None:
    counts = pd.DataFrame({"key": np.array([1, 2], np.uint32),
                           "value": np.array([5, 6], np.uint64)})
    path = sessions.save(FakeProgram({}, {"counts": counts}), tmp_path / "c.bpfrec")
    tmp_path.chmod(0o755)
    path.chmod(0o644)
    script = tmp_path / "replay_it.py"
    script.write_text(REPLAY_SCRIPT)
    script.chmod(0o644)
    done = run_unprivileged([sys.executable, str(script), str(path)], tmp_path)
    assert done.returncode == 0, done.stderr
    frame, live = done.stdout.splitlines()[-2:]
    assert json.loads(frame) == {"key": {"0": 1, "1": 2}, "value": {"0": 5, "1": 6}}
    assert live == "False"


SOURCE = """
BPF_HASH(counts, u32, u64);
BPF_ARRAY(sizes, u64, 4);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid != PID || args->count > 3)
        return 0;
    counts.increment(tgid);
    u32 i = args->count;
    sizes.increment(i);
    return 0;
}
"""


@pytest.mark.kernel
def test_live_program_round_trip(tmp_path: Path, no_leaks) -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    with ebpf_magic.Program(SOURCE, name="writes", defines={"PID": os.getpid()}) as prog:
        rec = sessions.record_snapshots(prog, every=0.05)
        for i in range(30):
            os.write(fd, b"x" * (1 + i % 3))
        time.sleep(0.3)
        path = prog.save(tmp_path / "writes.bpfrec")
        live_counts, live_sizes = prog.maps["counts"].df, prog.maps["sizes"].df
    os.close(fd)
    rec._thread.join(timeout=2)
    assert not rec.running, "the snapshot thread must end when the program stops"

    back = ebpf_magic.load(path)
    pd.testing.assert_frame_equal(back.maps["counts"].df, live_counts, check_exact=True)
    pd.testing.assert_frame_equal(back.maps["sizes"].df, live_sizes, check_exact=True)
    assert back.maps["counts"].df.to_dict("list") == {"key": [os.getpid()], "value": [30]}
    assert back.maps["sizes"].df["value"].tolist() == [0, 10, 10, 10]
    assert back.maps["sizes"].info()["kind"] == "array"
    assert back.maps["counts"].key_dtype == np.dtype(np.uint32)
    assert back.attached == prog.attached and back.source == SOURCE
    assert back.recording.host["bcc"], "the BCC version is recorded"
    assert back.backend == prog.backend == "bcc"
    stacked = back.maps["counts"].snapshots
    assert stacked["time"].is_monotonic_increasing and len(stacked) >= 2
    assert stacked["value"].iloc[-1] == 30

    with pytest.raises(BPFError, match="stopped"):
        sessions.save(prog, tmp_path / "late.bpfrec", snapshots=[])
    # after the program stopped, its recorder's snapshots still save
    late = ebpf_magic.load(prog.save(tmp_path / "late.bpfrec"))
    assert late.maps["counts"].df["value"].iloc[-1] == 30


LIBBPF_SOURCE = """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, u32);
    __type(value, u64);
} sizes SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_write")
int on_write(struct trace_event_raw_sys_enter *ctx)
{
    u32 i = ctx->args[2];
    u64 *n;
    if ((bpf_get_current_pid_tgid() >> 32) != PID || ctx->args[2] > 3)
        return 0;
    n = bpf_map_lookup_elem(&sizes, &i);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


@pytest.mark.kernel
def test_libbpf_program_round_trip_names_its_backend(tmp_path: Path, no_leaks) -> None:
    from ebpf_magic.backend import libbpf

    ok, why = libbpf.available()
    if not ok:
        pytest.skip(f"libbpf backend unavailable: {why}")
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        with ebpf_magic.Program(LIBBPF_SOURCE, name="libbpf_writes",
                                defines={"PID": os.getpid()}) as prog:
            for i in range(30):
                os.write(fd, b"x" * (1 + i % 3))
            path = prog.save(tmp_path / "libbpf_writes.bpfrec")
            live = prog.maps["sizes"].df
    finally:
        os.close(fd)
    manifest = manifest_of(path)
    assert manifest["program"]["backend"] == "libbpf"
    host = manifest["host"]
    assert host["libbpf"] == libbpf.version() and "clang" in host["clang"]
    assert "bcc" not in host, "a libbpf program's recording does not name BCC"
    back = ebpf_magic.load(path)
    assert back.backend == prog.backend == "libbpf"
    assert back.maps["sizes"].df["value"].tolist() == [0, 10, 10, 10]
    pd.testing.assert_frame_equal(back.maps["sizes"].df, live, check_exact=True)
    assert f"libbpf {libbpf.version()}" in back.recording.where()
    # saved again from the replay, it still says so
    assert ebpf_magic.load(back.save(tmp_path / "again.bpfrec")).backend == "libbpf"


# notebooks' recordings made before recordings named their backend or kept globals, kept
# here as they were (the notebooks' own are refreshed as the notebooks change)
OLD_RECORDINGS = sorted((Path(__file__).resolve().parent / "old_recordings").glob("*.bpfrec"))


@pytest.mark.parametrize("path", OLD_RECORDINGS, ids=lambda p: p.stem)
def test_old_recordings_load_as_bcc(path: Path) -> None:
    assert len(OLD_RECORDINGS) == 5
    assert "backend" not in manifest_of(path)["program"]
    back = sessions.load(path)
    assert back.backend == "bcc"
    assert "BCC " in back.recording.where()
    # recorded before recordings kept globals: none, listed as a live program lists none
    assert "globals" not in manifest_of(path) and dict(back.globals) == {}
    assert list(back.globals.df.columns) == ["name", "section", "c_type", "value"]
    assert back.globals.df.empty


def _with_manifest(path: Path, out: Path, change) -> Path:
    """A copy of the recording at ``path`` whose manifest ``change`` edited in place."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == sessions.MANIFEST:
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
            dst.writestr(info, data)
    return out


@pytest.mark.parametrize("value", ["gcc", 3, ["bcc"], ""])
def test_unknown_backend_is_a_replay_error(tmp_path: Path, value) -> None:
    counts = pd.DataFrame({"key": np.array([1], np.uint32), "value": np.array([5], np.uint64)})
    good = sessions.save(FakeProgram({}, {"counts": counts}), tmp_path / "good.bpfrec")
    assert sessions.load(good).backend == "bcc"
    bad = _with_manifest(good, tmp_path / "bad.bpfrec",
                         lambda m: m["program"].update(backend=value))
    with pytest.raises(ReplayError, match="program.backend"):
        sessions.load(bad)


def test_loading_garbage_is_a_replay_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bpfrec"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ReplayError, match="not a recording"):
        ebpf_magic.load(bad)
    with pytest.raises(ReplayError, match="no recording"):
        ebpf_magic.load(tmp_path / "missing.bpfrec")


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv(sessions.RECORDINGS_ENV, str(tmp_path / "recordings"))
    monkeypatch.delenv(sessions.RECORD_ENV, raising=False)
    monkeypatch.delenv(sessions.REPLAY_ENV, raising=False)
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "ebpf_magic")
    yield sh
    sh.run_line_magic("unload_ext", "ebpf_magic")
    InteractiveShell.clear_instance()


CELL = SOURCE.replace("PID", str(os.getpid()))


def test_cell_replays_its_recording_when_it_cannot_run_live(shell, tmp_path, monkeypatch,
                                                            capsys) -> None:
    counts = pd.DataFrame({"key": np.array([7], np.uint32), "value": np.array([3], np.uint64)})
    prog = FakeProgram({}, {"counts": counts})
    prog.notes = [Note("loaded on_write as tp_btf", "variant")]
    prog.warnings = ["warning: unused variable 'x'"]
    sessions.save(prog, tmp_path / "recordings" / "w.bpfrec")
    monkeypatch.setenv(sessions.REPLAY_ENV, "1")
    assert shell.run_cell("%%bpf w\n" + CELL).success
    out = capsys.readouterr().out
    assert "replayed from" in out and "w.bpfrec" in out and "captured on" in out
    # the notebook shows what the live run showed
    assert "note: loaded on_write as tp_btf" in out
    assert "warning: warning: unused variable 'x'" in out
    w = shell.user_ns["w"]
    assert w.running is False and w.maps["counts"].df.equals(counts)
    shell.run_line_magic("bpf", "save w")
    assert "nothing new to save" in capsys.readouterr().out
    shell.run_line_magic("bpf", f"load again {tmp_path / 'recordings' / 'w.bpfrec'}")
    assert shell.user_ns["again"].maps["counts"].df.equals(counts)
    table = shell.run_line_magic("bpf", "list")
    assert table is None or "again" in str(table)
    # no recording: the error says where it looked and how to make one
    result = shell.run_cell("%%bpf nothing_here\n" + CELL)
    assert not result.success and "nothing_here.bpfrec" in str(result.error_in_exec)


@pytest.mark.kernel
def test_live_cell_records_on_request(shell, tmp_path, capsys, no_leaks) -> None:
    assert shell.run_cell("%%bpf w\n" + CELL).success
    capsys.readouterr()
    shell.run_line_magic("bpf", "save w")
    assert capsys.readouterr().out == (
        "w: nothing saved: %bpf save w PATH writes a file, and recordings/w.bpfrec is "
        f"written when recording (%%bpf w --record, or {sessions.RECORD_ENV}=1)\n")
    assert not (tmp_path / "recordings" / "w.bpfrec").exists()

    assert shell.run_cell("%%bpf w --record 0.05\n" + CELL).success
    fd = os.open(os.devnull, os.O_WRONLY)
    for _ in range(12):
        os.write(fd, b"x")
        time.sleep(0.01)
    os.close(fd)
    time.sleep(0.2)
    shell.run_line_magic("bpf", "save w")
    assert "saved to" in capsys.readouterr().out
    shell.run_line_magic("bpf", "stop w")
    back = ebpf_magic.load(tmp_path / "recordings" / "w.bpfrec")
    assert back.maps["counts"].df["value"].tolist() == [12]
    assert len(back.maps["counts"].history()) >= 3


@pytest.mark.kernel
def test_save_says_how_to_record_once_per_session_and_names_a_kept_recording(
        shell, tmp_path, capsys, monkeypatch, no_leaks) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        assert shell.run_cell(f"%%bpf {name} -q\n" + CELL).success
    shell.run_cell("%bpf save a\n%bpf save b")
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("a: nothing saved: %bpf save a PATH writes a file")
    assert second == "b: nothing saved"
    sessions.save(FakeProgram({}, {}), tmp_path / "recordings" / "a.bpfrec")
    shell.run_line_magic("bpf", "save a")
    assert capsys.readouterr().out == "a: recordings/a.bpfrec is unchanged\n"
    shell.run_line_magic("bpf", "stop --all")


@pytest.mark.kernel
def test_save_with_a_missing_table_says_so_and_keeps_the_program(shell, tmp_path, capsys,
                                                                  no_leaks) -> None:
    assert shell.run_cell("%%bpf w -q\n" + CELL).success
    w = shell.user_ns["w"]
    # nothing is written without recording, so a table that is not there stops nothing
    assert shell.run_cell("%bpf save w --table t=missing\n%bpf stop w").success
    assert not w.running and "stopped: w" in capsys.readouterr().out

    assert shell.run_cell("%%bpf w -q\n" + CELL).success
    w, path = shell.user_ns["w"], tmp_path / "w.bpfrec"
    shell.user_ns["not_a_frame"] = [1, 2]
    for spec, problem in [("t=missing", "there is no variable 'missing' (run the cell that "
                                        "makes it first)"),
                          ("t=not_a_frame", "not_a_frame is a list, not a DataFrame")]:
        result = shell.run_cell(f"%bpf save w {path} --table {spec}\n%bpf stop w")
        assert isinstance(result.error_in_exec, UsageError)
        assert str(result.error_in_exec) == (
            f"%bpf save w --table {spec}: {problem}. Nothing was saved, and w keeps running: "
            "make the table, or leave --table out, and save again.")
        assert w.running and not path.exists()
    with pytest.raises(UsageError, match="--table needs NAME=VARIABLE"):
        shell.run_line_magic("bpf", "save w --table =x")
    shell.user_ns["t"] = pd.DataFrame({"x": [1]})
    shell.run_line_magic("bpf", f"save w {path} --table t")
    assert ebpf_magic.load(path).tables["t"].equals(shell.user_ns["t"])
    shell.run_line_magic("bpf", "stop w")


@pytest.mark.kernel
def test_save_after_stop_finds_the_program_the_notebook_holds(shell, tmp_path, capsys,
                                                             no_leaks) -> None:
    assert shell.run_cell("%%bpf w -q\n" + CELL).success
    w = shell.user_ns["w"]
    assert repr(w) == "<Program w (running): 1 probe, maps: counts, sizes>"
    snaps = sessions.record_snapshots(w, every=0.05)  # they outlive stop()
    fd = os.open(os.devnull, os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
    deadline = time.monotonic() + 5
    while not any(len(s.maps["counts"]) for s in snaps.snapshots) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    shell.run_line_magic("bpf", "stop --all")
    assert repr(w) == "<Program w (stopped): 1 probe detached, maps released>"
    shell.run_line_magic("bpf", f"save w {tmp_path / 'w.bpfrec'}")
    assert f"w: saved to {tmp_path / 'w.bpfrec'}" in capsys.readouterr().out
    saved = ebpf_magic.load(tmp_path / "w.bpfrec").maps["counts"].df
    assert saved["key"].tolist() == [os.getpid()] and saved["value"][0] >= 1
    # without snapshots, the same explanation as w.save() gives
    assert shell.run_cell("%%bpf w -q\n" + CELL).success
    shell.run_line_magic("bpf", "stop w")
    with pytest.raises(BPFError, match="w is stopped, so its maps can no longer be read"):
        shell.run_line_magic("bpf", f"save w {tmp_path / 'again.bpfrec'}")
    with pytest.raises(UsageError, match="no program named 'nope'"):
        shell.run_line_magic("bpf", "save nope")


EVENTS = """
struct event { u32 pid; u32 count; u64 ts; char comm[16]; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    if (args->fd != FD || (bpf_get_current_pid_tgid() >> 32) != PID)
        return 0;
    struct event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.count = args->count;
    e.ts = bpf_ktime_get_ns();
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""


@pytest.mark.kernel
def test_live_stream_round_trip(tmp_path: Path, no_leaks) -> None:
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        with ebpf_magic.Program(EVENTS, name="ev",
                                defines={"PID": os.getpid(), "FD": fd}) as prog:
            for i in range(25):
                os.write(fd, b"y" * (i + 1))
            deadline = time.time() + 5
            while len(prog.events["events"]) < 25 and time.time() < deadline:
                time.sleep(0.05)
            path = prog.save(tmp_path / "ev.bpfrec")
            live = prog.events["events"].df
            live_stats = prog.events["events"].stats
    finally:
        os.close(fd)
    back = ebpf_magic.load(path)
    replayed = back.events["events"].df
    pd.testing.assert_frame_equal(replayed, live, check_exact=True)
    assert replayed["count"].tolist() == list(range(1, 26))
    assert replayed["count"].dtype == np.uint32 and replayed["ts"].dtype == live["ts"].dtype
    assert back.events["events"].stats == live_stats and live_stats["received"] == 25
    assert back.events["events"].tail(3)["count"].tolist() == [23, 24, 25]


def test_browse_subcommand_shows_a_replayed_programs_maps(tmp_path, shell):
    from ebpf_magic.program import Program

    src = "BPF_HASH(m, u32, u64);"
    with Program(src, name="rec") as prog:
        prog.maps["m"][7] = 70
        prog.save(tmp_path / "rec.bpfrec")
    shell.run_line_magic("bpf", f"load again {tmp_path / 'rec.bpfrec'}")
    browser = shell.run_line_magic("bpf", "browse again")
    assert 'tabular-nums">70</td>' in browser.table.value  # a right-aligned number
    browser.close()


# -- global variables ------------------------------------------------------------------

GLOBALS_SOURCE = """
struct span { u32 low; u32 high; };

const volatile int target = 0;
u64 hits;
u64 step = 1;
struct span span = { 1, 2 };
char label[8] = "idle";
u16 weights[3] = { 4, 5, 6 };

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != target)
        return 0;
    __sync_fetch_and_add(&hits, step);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

GLOBALS_SCRIPT = """
import json, sys
sys.modules["bcc"] = None  # importing BCC would fail
import ebpf_magic
prog = ebpf_magic.load(sys.argv[1])
print(json.dumps(dict(prog.globals)))
print(prog.globals.df.to_json(orient="records"))
"""


@pytest.mark.kernel
def test_libbpf_globals_are_recorded_as_they_were_at_save(no_leaks) -> None:
    from ebpf_magic.backend import libbpf

    ok, why = libbpf.available()
    if not ok:
        pytest.skip(f"libbpf backend unavailable: {why}")
    pid = os.getpid()
    with tempfile.TemporaryDirectory(prefix="ebpf_magic_globals_") as tmp:
        tmp_path = Path(tmp)
        with ebpf_magic.Program(GLOBALS_SOURCE, name="g", globals={"target": pid}) as prog:
            for _ in range(25):
                os.getppid()
            prog.globals["step"] = 3  # .data, changed from Python
            prog.globals["span"] = {"low": 5, "high": 9}
            prog.globals["label"] = "busy"
            for _ in range(10):
                os.getppid()
            path = prog.save(tmp_path / "g.bpfrec")
            live, live_df = dict(prog.globals), prog.globals.df
        assert live == {"target": pid, "hits": 25 + 10 * 3, "step": 3,
                        "span": {"low": 5, "high": 9}, "label": "busy", "weights": [4, 5, 6]}
        assert [g["name"] for g in manifest_of(path)["globals"]] == list(live)

        back = sessions.load(path)
        assert dict(back.globals) == live and list(back.globals) == list(live)
        pd.testing.assert_frame_equal(back.globals.df, live_df, check_exact=True)
        assert back.globals.df.set_index("name")["section"].to_dict() == {
            "target": ".rodata", "hits": ".bss", "step": ".data", "span": ".data",
            "label": ".data", "weights": ".data"}
        with pytest.raises(BPFError, match="cannot be set"):
            back.globals["step"] = 1
        again = sessions.load(back.save(tmp_path / "again.bpfrec"))
        pd.testing.assert_frame_equal(again.globals.df, live_df, check_exact=True)

        tmp_path.chmod(0o755)
        path.chmod(0o644)
        script = tmp_path / "globals_of.py"
        script.write_text(GLOBALS_SCRIPT)
        script.chmod(0o644)
        done = run_unprivileged([sys.executable, str(script), str(path)], tmp_path)
        assert done.returncode == 0, done.stderr
        values, frame = done.stdout.splitlines()[-2:]
        assert json.loads(values) == live
        assert frame == live_df.to_json(orient="records")


@pytest.mark.kernel
def test_a_stopped_programs_globals_are_gone_and_not_recorded(tmp_path: Path, no_leaks) -> None:
    from ebpf_magic.backend import libbpf

    ok, why = libbpf.available()
    if not ok:
        pytest.skip(f"libbpf backend unavailable: {why}")
    with ebpf_magic.Program(GLOBALS_SOURCE, name="g") as prog:
        rec = sessions.record_snapshots(prog, every=60)
        assert rec.take() is not None and prog.globals["weights"] == [4, 5, 6]
    rec.stop()
    with pytest.raises(BPFError, match="program 'g' was stopped"):
        dict(prog.globals)
    back = sessions.load(prog.save(tmp_path / "late.bpfrec"))  # with the recorder's snapshot
    assert dict(back.globals) == {} and manifest_of(tmp_path / "late.bpfrec")["globals"] == []


def fake_with_globals() -> FakeProgram:
    prog = FakeProgram({}, {})
    prog.backend = "libbpf"
    prog.globals = SavedGlobals([
        {"name": "n", "section": ".rodata", "c_type": "const volatile int", "value": -5},
        {"name": "ratio", "section": ".data", "c_type": "double", "value": 1.5},
        {"name": "big", "section": ".bss", "c_type": "u64", "value": 2**64 - 1},
        {"name": "tag", "section": ".data.names", "c_type": "char[8]", "value": "é"},
        {"name": "lims", "section": ".data", "c_type": "struct lims",
         "value": {"low": 1, "pairs": [[1, 2], [3, 4]]}},
        {"name": "on", "section": ".bss", "c_type": "bool", "value": True}])
    return prog


def test_globals_of_every_kind_round_trip(tmp_path: Path) -> None:
    prog = fake_with_globals()
    back = sessions.load(sessions.save(prog, tmp_path / "g.bpfrec"))
    assert dict(back.globals) == dict(prog.globals)
    assert [type(v) for v in back.globals.values()] == [int, float, int, str, dict, bool]
    pd.testing.assert_frame_equal(back.globals.df, prog.globals.df, check_exact=True)
    # an int beside only floats stays an int, in the live frame and the replayed one
    prog.globals = SavedGlobals([{"name": "n", "section": ".data", "c_type": "int", "value": 2},
                                 {"name": "r", "section": ".data", "c_type": "double",
                                  "value": 0.5}])
    back = sessions.load(sessions.save(prog, tmp_path / "n.bpfrec"))
    assert [type(v) for v in back.globals.df["value"]] == [int, float]
    assert [type(v) for v in back.globals.values()] == [int, float]


_GOOD = {"name": "x", "section": ".data", "c_type": "int", "value": 1}


@pytest.mark.parametrize("globals_, message", [
    ({"x": 1}, r"manifest.globals has the wrong type \(dict\)"),
    (None, r"manifest.globals has the wrong type \(NoneType\)"),
    ([[1]], r"globals\[0\] is not an object of exactly name, section, c_type and value"),
    ([{"name": "x", "section": ".data", "value": 1}], r"globals\[0\] is not an object"),
    ([{**_GOOD, "extra": 1}], r"globals\[0\] is not an object"),
    ([{**_GOOD, "name": 7}], r"globals\[0\].name has the wrong type \(int\)"),
    ([{**_GOOD, "name": "a b"}], r"globals\[0\].name 'a b' is not a C name"),
    ([{**_GOOD, "name": "x" * 300}], r"globals\[0\].name 'x{40}' is not a C name"),
    ([_GOOD, _GOOD], r"globals\[1\].name 'x' is listed twice"),
    ([{**_GOOD, "section": ".text"}], r"globals\[0\].section '.text' is not a data section"),
    ([{**_GOOD, "c_type": True}], r"globals\[0\].c_type has the wrong type \(bool\)"),
    ([{**_GOOD, "c_type": "int" * 400}], r"globals\[0\].c_type is longer than 1024"),
    ([{**_GOOD, "value": None}], r"globals\[0\].value has the wrong type \(NoneType\)"),
    ([{**_GOOD, "value": {"a": [1, None]}}], r"globals\[0\].value.a\[1\] has the wrong type"),
    ([{**_GOOD, "value": 2**200}], r"globals\[0\].value is an integer wider than 128 bits"),
    ([{**_GOOD, "value": functools.reduce(lambda v, _: [v], range(40), 0)}],
     r"globals\[0\].value(\[0\])+ nests more than 32 deep"),
    ([{**_GOOD, "name": f"v{i}"} for i in range(5000)], r"globals lists 5,000 variables"),
])
def test_malformed_globals_are_a_replay_error(tmp_path: Path, globals_, message) -> None:
    good = sessions.save(fake_with_globals(), tmp_path / "good.bpfrec")
    assert len(sessions.load(good).globals) == 6
    bad = _with_manifest(good, tmp_path / "bad.bpfrec", lambda m: m.update(globals=globals_))
    with pytest.raises(ReplayError, match=f"malformed recording: {message}"):
        sessions.load(bad)


class Note:
    """A structured note as a backend gives it: a kind, a key, and its text as ``str()``."""

    def __init__(self, text: str, kind: str, key: str = "") -> None:
        self.text, self.kind, self.key = text, kind, key

    def __str__(self) -> str:
        return self.text


def test_warnings_and_notes_are_kept_with_their_kinds(tmp_path: Path) -> None:
    prog = FakeProgram({}, {})
    prog.warnings = ["warning: comparison of distinct pointer types", "é" * 20_000]
    prog.notes = [Note("headers of 6.1, not 6.18", "headers", "6.1"), "a plain note",
                  Note("odd", "Not A Kind")]
    back = sessions.load(sessions.save(prog, tmp_path / "n.bpfrec"))
    assert back.warnings == ["warning: comparison of distinct pointer types", "é" * 16384]
    assert back.notes == ["headers of 6.1, not 6.18", "a plain note", "odd"]
    assert [n.kind for n in back.notes] == ["headers", None, None]
    assert [w.kind for w in back.warnings] == [None, None]
    again = sessions.load(back.save(tmp_path / "again.bpfrec"))
    assert again.notes == back.notes and [n.kind for n in again.notes] == ["headers", None, None]
    assert manifest_of(tmp_path / "again.bpfrec")["notes"][0] == {
        "text": "headers of 6.1, not 6.18", "kind": "headers"}
    many = FakeProgram({}, {})
    many.warnings, many.notes = [f"w{i}" for i in range(3000)], []
    assert len(sessions.load(sessions.save(many, tmp_path / "m.bpfrec")).warnings) == 1024


def test_recordings_without_warnings_and_notes_replay_with_none(tmp_path: Path) -> None:
    prog = FakeProgram({}, {})
    prog.warnings, prog.notes = ["w"], ["n"]
    good = sessions.save(prog, tmp_path / "good.bpfrec")
    old = _with_manifest(good, tmp_path / "old.bpfrec",
                         lambda m: [m.pop("warnings"), m.pop("notes")])
    back = sessions.load(old)
    assert back.warnings == [] and back.notes == []


@pytest.mark.parametrize("field, value, message", [
    ("warnings", {"text": "w"}, r"manifest.warnings has the wrong type \(dict\)"),
    ("notes", None, r"manifest.notes has the wrong type \(NoneType\)"),
    ("notes", ["text"], r"notes\[0\] is not an object of text and, optionally, kind"),
    ("notes", [{"kind": "x"}], r"notes\[0\] is not an object of text"),
    ("notes", [{"text": "t", "key": "k"}], r"notes\[0\] is not an object of text"),
    ("warnings", [{"text": 7}], r"warnings\[0\].text has the wrong type \(int\)"),
    ("warnings", [{"text": "t" * 16385}], r"warnings\[0\].text is longer than 16,384"),
    ("notes", [{"text": "t", "kind": ["x"]}], r"notes\[0\].kind has the wrong type \(list\)"),
    ("notes", [{"text": "t", "kind": "Not A Kind"}],
     r"notes\[0\].kind 'Not A Kind' is not a kind's name"),
    ("notes", [{"text": "t"}] * 5000, r"notes lists 5,000 messages, more than a recording "
                                      r"holds \(1,024\)"),
])
def test_malformed_warnings_and_notes_are_a_replay_error(tmp_path: Path, field, value,
                                                         message) -> None:
    good = sessions.save(FakeProgram({}, {}), tmp_path / "good.bpfrec")
    assert sessions.load(good).notes == []
    bad = _with_manifest(good, tmp_path / "bad.bpfrec", lambda m: m.update({field: value}))
    with pytest.raises(ReplayError, match=f"malformed recording: {message}"):
        sessions.load(bad)


def cluster_host(**row) -> dict:
    """Host facts as a cluster program of two engines gives them, ``row`` changing the first."""
    hosts = [{"engine": 0, "host": "web1", "kernel": "6.18.0", "machine": "x86_64", "cpus": 2,
              "state": "ran", "reason": ""},
             {"engine": 1, "host": "web2", "kernel": None, "machine": None, "cpus": None,
              "state": "missing", "reason": "no answer within 30 s"}]
    hosts[0].update(row)
    return {"system": "Linux", "kernel": "6.18.0", "machine": "x86_64", "cpus": 2,
            "hostname": "web1", "hosts": hosts}


def test_cluster_host_facts_replay_and_resave_without_names(tmp_path: Path) -> None:
    good = sessions.save(FakeProgram({}, {}), tmp_path / "good.bpfrec")
    path = _with_manifest(good, tmp_path / "cluster.bpfrec",
                          lambda m: m.update(host=cluster_host()))
    back = sessions.load(path)
    assert back.recording.host == cluster_host()
    assert back.host_facts() == cluster_host()
    for again in (back.save(tmp_path / "a.bpfrec", hostname=False),
                  sessions.save(back, tmp_path / "b.bpfrec", hostname=False)):
        host = manifest_of(again)["host"]
        assert host["hostname"] is None
        assert [h["host"] for h in host["hosts"]] == [None, None]
        assert "web" not in json.dumps(manifest_of(again))
        assert sessions.load(again).recording.host["hosts"][1]["reason"] == \
            "no answer within 30 s"


@pytest.mark.parametrize("host, message", [
    ({**cluster_host(), "note": "x"}, r"host has unknown fields \['note'\]"),
    ({**cluster_host(), "bcc": {"a": [1]}}, r"host.bcc has the wrong type \(dict\)"),
    ({**cluster_host(), "hosts": {"0": {}}}, r"host.hosts has the wrong type \(dict\)"),
    (cluster_host(extra=[[{}]]), r"host.hosts\[0\] is not an object of exactly engine, host, "
                                 "kernel, machine, cpus, state, reason"),
    ({**cluster_host(), "hosts": ["web1"]}, r"host.hosts\[0\] is not an object of exactly"),
    (cluster_host(engine="0"), r"host.hosts\[0\].engine has the wrong type \(str\)"),
    (cluster_host(engine=None), r"host.hosts\[0\].engine has the wrong type \(NoneType\)"),
    (cluster_host(cpus=True), r"host.hosts\[0\].cpus has the wrong type \(bool\)"),
    (cluster_host(cpus=-1), r"host.hosts\[0\].cpus is negative"),
    (cluster_host(host=["web1"]), r"host.hosts\[0\].host has the wrong type \(list\)"),
    (cluster_host(kernel="6" * 300), r"host.hosts\[0\].kernel is longer than 256 characters"),
    (cluster_host(reason="r" * 5000), r"host.hosts\[0\].reason is longer than 4096"),
    (cluster_host(state="running"), r"host.hosts\[0\].state is 'running', not one of missing, "
                                    "ran"),
    (cluster_host(engine=1), r"host.hosts\[1\].engine 1 is listed twice"),
    ({**cluster_host(), "hosts": cluster_host()["hosts"][:1] * 5000},
     r"host.hosts lists 5,000 engines, more than a recording holds \(4,096\)"),
])
def test_malformed_host_facts_are_a_replay_error(tmp_path: Path, host, message) -> None:
    good = sessions.save(FakeProgram({}, {}), tmp_path / "good.bpfrec")
    bad = _with_manifest(good, tmp_path / "bad.bpfrec", lambda m: m.update(host=host))
    with pytest.raises(ReplayError, match=f"malformed recording: {message}"):
        sessions.load(bad)
