"""Exports read back: Perfetto traces, pprof and speedscope profiles, folded text, flame diffs.

Each file is parsed with its format's own schema (Perfetto's message classes, pprof's
profile.proto, speedscope's JSON schema) and checked against the frame it came from:
times, names and tracks of every event; the exact count of every stack. A trace is also
replayed the way Perfetto's trace processor imports track events (descriptors first,
slices nesting on each track) so that a trace it would refuse fails here.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

import ebpf_magic
from ebpf_magic import export
from ebpf_magic.data import stacks
from ebpf_magic.errors import ExportError
from ebpf_magic.export import pprof, speedscope
from ebpf_magic.present import plots

SCHEMA = json.loads((Path(__file__).parent / "speedscope_schema.json").read_text())


# -- reading a trace back as Perfetto's trace processor would -------------------------

def track_name(desc) -> tuple:
    """A track as a test names it: ("thread", pid, tid, name), ("process", pid, name),
    ("counter", column, parent track) or ("track", name)."""
    if desc.HasField("thread"):
        return ("thread", desc.thread.pid, desc.thread.tid, desc.thread.thread_name)
    if desc.HasField("process"):
        return ("process", desc.process.pid, desc.process.process_name)
    return ("counter" if desc.HasField("counter") else "track", desc.name)


def replay(path: Path) -> dict:
    """The tracks, slices, instants and counters of a trace file, checked as it is read.

    The rules are the trace processor's for track events: a track is described before an
    event names it, and its parent before it; an end closes the latest open slice of its
    track; counters go on counter tracks only, slices and instants never; every slice ends.
    The events must come in time order. Lanes (unnamed children of a track, for slices
    that overlap) count as their parent track.
    """
    trace = Trace.FromString(path.read_bytes())
    tracks: dict[int, object] = {}
    open_: dict[int, list] = {}
    out = {"tracks": {}, "slices": [], "instants": [], "counters": []}
    last = -1
    for packet in trace.packet:
        assert packet.trusted_packet_sequence_id == export.timeline.SEQUENCE
        if packet.HasField("track_descriptor"):
            desc = packet.track_descriptor
            assert desc.uuid not in tracks, f"track {desc.uuid} described twice"
            assert not desc.parent_uuid or desc.parent_uuid in tracks, "parent described later"
            tracks[desc.uuid] = desc
            continue
        event = packet.track_event
        assert packet.timestamp >= last, "events out of time order"
        last = packet.timestamp
        assert event.track_uuid in tracks, f"event on undescribed track {event.track_uuid}"
        desc = tracks[event.track_uuid]
        lane_of = desc
        while not (lane_of.HasField("thread") or lane_of.HasField("process")
                   or lane_of.HasField("counter")) and lane_of.parent_uuid \
                and track_name(tracks[lane_of.parent_uuid])[-1] == lane_of.name:
            lane_of = tracks[lane_of.parent_uuid]  # a lane: its parent's events
        where = track_name(lane_of)
        if desc.HasField("counter"):
            assert event.type == TrackEvent.TYPE_COUNTER, "a slice on a counter track"
            value = event.double_counter_value if event.HasField("double_counter_value") \
                else event.counter_value
            out["counters"].append((where, track_name(tracks[desc.parent_uuid]),
                                    packet.timestamp, value))
            continue
        assert event.type != TrackEvent.TYPE_COUNTER, "a counter on a slice track"
        args = {a.name: getattr(a, a.WhichOneof("value")) for a in event.debug_annotations}
        if event.type == TrackEvent.TYPE_SLICE_BEGIN:
            open_.setdefault(event.track_uuid, []).append((event.name, packet.timestamp, args,
                                                           list(event.categories)))
        elif event.type == TrackEvent.TYPE_SLICE_END:
            assert open_.get(event.track_uuid), f"an end without a begin on {where}"
            name, begin, args, cats = open_[event.track_uuid].pop()
            out["slices"].append((where, name, begin, packet.timestamp, args, cats))
        else:
            assert event.type == TrackEvent.TYPE_INSTANT
            out["instants"].append((where, event.name, packet.timestamp, args,
                                    list(event.categories)))
    assert not any(open_.values()), "slices left open at the end of the trace"
    out["tracks"] = {uuid: track_name(d) for uuid, d in tracks.items()}
    return out


# -- timelines from frames the test writes ------------------------------------------

def test_instants_land_on_thread_tracks_with_their_times_names_and_fields(tmp_path):
    df = pd.DataFrame({"ts": [300, 100, 200, 150], "pid": [7, 7, 7, 9], "tid": [7, 3, 3, 9],
                       "comm": ["main", "worker", "worker", "other"],
                       "bytes": [1, 2, 3, 4], "path": ["/a", "/b", "/c", "/d"]})
    out = replay(export.to_perfetto(df, tmp_path / "t.pftrace", stream="opens"))
    # the fields the track shows (pid, tid, comm) are not repeated as arguments
    assert sorted(out["instants"]) == sorted([
        (("thread", 7, 7, "main"), "opens", 300, {"bytes": 1, "path": "/a"}, ["opens"]),
        (("thread", 7, 3, "worker"), "opens", 100, {"bytes": 2, "path": "/b"}, ["opens"]),
        (("thread", 7, 3, "worker"), "opens", 200, {"bytes": 3, "path": "/c"}, ["opens"]),
        (("thread", 9, 9, "other"), "opens", 150, {"bytes": 4, "path": "/d"}, ["opens"])])
    out = replay(export.to_perfetto(df, tmp_path / "a.pftrace", args=["comm", "bytes"]))
    assert sorted(args["comm"] + str(args["bytes"]) for *_, args, _ in out["instants"]) == \
        ["main1", "other4", "worker2", "worker3"]
    # a process per pid, named after its main thread (tid = pid); no slice, no counter
    assert sorted(t for t in out["tracks"].values() if t[0] == "process") == \
        [("process", 7, "main"), ("process", 9, "other")]
    assert out["slices"] == [] and out["counters"] == []


def test_arguments_keep_their_types(tmp_path):
    df = pd.DataFrame({"ts": [1, 2], "addr": np.array([2**64 - 1, 5], np.uint64),
                       "ret": [-2, 0], "ok": [True, False], "load": [0.5, float("nan")],
                       "file": ["/etc/passwd", "x"], "maybe": pd.array([1, None], "Int64")})
    out = replay(export.to_perfetto(df, tmp_path / "args.pftrace"))
    first, second = (args for *_, args, _ in out["instants"])
    assert first == {"addr": 2**64 - 1, "ret": -2, "ok": True, "load": 0.5,
                     "file": "/etc/passwd", "maybe": "1"}
    assert second["addr"] == 5 and second["ok"] is False and np.isnan(second["load"])
    assert second["maybe"] == "<NA>"
    trace = Trace.FromString((tmp_path / "args.pftrace").read_bytes())
    kinds = {a.name: a.WhichOneof("value") for p in trace.packet
             for a in p.track_event.debug_annotations}
    assert kinds == {"addr": "uint_value", "ret": "int_value", "ok": "bool_value",
                     "load": "double_value", "file": "string_value", "maybe": "string_value"}


def test_tracks_per_process_cpu_column_or_one_and_names_from_a_column(tmp_path):
    df = pd.DataFrame({"ts": [10, 20, 30], "pid": [1, 2, 1], "cpu": [0, 1, 1],
                       "comm": ["a", "b", "a"], "call": ["open", "read", "close"]})
    by = {}
    for track in ("process", "cpu", "call", None):
        out = replay(export.to_perfetto(df.drop(columns=["pid"]) if track is None else df,
                                        tmp_path / f"{track}.pftrace", track=track,
                                        name="call"))
        by[track] = sorted((where, name, ts) for where, name, ts, *_ in out["instants"])
    assert by["process"] == [(("process", 1, "a"), "close", 30), (("process", 1, "a"), "open", 10),
                             (("process", 2, "b"), "read", 20)]
    assert by["cpu"] == [(("track", "CPU 0"), "open", 10), (("track", "CPU 1"), "close", 30),
                         (("track", "CPU 1"), "read", 20)]
    assert by["call"] == [(("track", "call close"), "close", 30),
                          (("track", "call open"), "open", 10),
                          (("track", "call read"), "read", 20)]
    assert by[None] == [(("track", "CPU 0"), "open", 10), (("track", "CPU 1"), "close", 30),
                        (("track", "CPU 1"), "read", 20)]  # no pid or tid: CPUs
    single = replay(export.to_perfetto(df[["ts", "call"]], tmp_path / "one.pftrace"))
    assert {where for where, *_ in single["instants"]} == {("track", "event")}


def test_the_same_pid_on_two_hosts_is_two_tracks(tmp_path):
    df = pd.DataFrame({"host": ["web1", "web2", "web1"], "engine": [0, 1, 0], "ts": [1, 2, 3],
                       "pid": [40, 40, 40], "tid": [40, 40, 41], "comm": ["nginx"] * 3})
    out = replay(export.to_perfetto(df, tmp_path / "hosts.pftrace"))
    assert sorted((where, ts, args) for where, _, ts, args, _ in out["instants"]) == [
        (("track", "nginx 40/40"), 1, {"engine": 0}), (("track", "nginx 40/40"), 2, {"engine": 1}),
        (("track", "nginx 40/41"), 3, {"engine": 0})]
    tracks = replay_tracks(tmp_path / "hosts.pftrace")
    assert sorted(tracks) == [("web1", "nginx 40/40"), ("web1", "nginx 40/41"),
                              ("web2", "nginx 40/40")]
    cpus = replay_tracks(export.to_perfetto(df.assign(cpu=[1, 1, 0]), tmp_path / "c.pftrace",
                                            track="cpu"))
    assert sorted(cpus) == [("web1", "CPU 0"), ("web1", "CPU 1"), ("web2", "CPU 1")]


def replay_tracks(path: Path) -> list[tuple[str, str]]:
    """``(parent's name, name)`` of every track that has a parent."""
    trace = Trace.FromString(path.read_bytes())
    names = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet
             if p.HasField("track_descriptor")}
    return [(names[p.track_descriptor.parent_uuid], p.track_descriptor.name)
            for p in trace.packet
            if p.HasField("track_descriptor") and p.track_descriptor.parent_uuid]


def test_entry_and_exit_rows_pair_into_nested_slices_and_strays_are_counted(tmp_path):
    rows = [  # (ts, tid, phase, call)
        (10, 5, "enter", "read"), (20, 5, "enter", "inner"), (30, 5, "exit", "inner"),
        (40, 5, "exit", "read"), (15, 6, "enter", "write"), (35, 6, "exit", "write"),
        (50, 5, "exit", "?"),  # its entry came before the trace: no begin
        (60, 6, "enter", "never"),  # still running when the trace ends: no end
        (70, 6, "mark", "x")]  # neither
    df = pd.DataFrame(rows, columns=["ts", "tid", "phase", "call"]).assign(pid=5)
    with pytest.warns(export.ExportWarning) as caught:
        path = export.to_perfetto(df, tmp_path / "spans.pftrace", phase="phase", begin="enter",
                                  end="exit", name="call")
    assert "1 end without begin" in str(caught[0].message)
    assert "1 begin without end" in str(caught[0].message)
    assert "1 neither begin nor end" in str(caught[0].message)
    out = replay(path)
    spans = sorted((where[2], name, b, e) for where, name, b, e, *_ in out["slices"])
    assert spans == [(5, "inner", 20, 30), (5, "read", 10, 40), (6, "write", 15, 35)]
    assert out["instants"] == []
    timeline = export.Timeline().add(df, phase="phase", begin="enter", end="exit")
    assert timeline.left_out == {"neither begin nor end": 1, "end without begin": 1,
                                 "begin without end": 1}


def test_spans_with_durations_overlapping_on_a_cpu_get_lanes_and_keep_their_times(tmp_path):
    # events written at a span's end with its length, as a latency tool emits them
    df = pd.DataFrame({"ts": [100, 150, 160, 300, 300, 700], "delta": [100, 100, 20, 50, 0, 400],
                       "cpu": [0, 0, 0, 0, 1, 0], "op": ["a", "b", "c", "d", "e", "f"]})
    out = replay(export.to_perfetto(df, tmp_path / "d.pftrace", duration="delta",
                                    anchor="end", name="op"))
    got = sorted((where, name, b, e) for where, name, b, e, *_ in out["slices"])
    assert got == [(("track", "CPU 0"), "a", 0, 100), (("track", "CPU 0"), "b", 50, 150),
                   (("track", "CPU 0"), "c", 140, 160), (("track", "CPU 0"), "d", 250, 300),
                   (("track", "CPU 0"), "f", 300, 700), (("track", "CPU 1"), "e", 300, 300)]
    lanes = [t for t in out["tracks"].values() if t == ("track", "CPU 0")]
    assert len(lanes) == 2  # b overlaps a without nesting in it: a second lane
    start = export.to_perfetto(df, tmp_path / "s.pftrace", duration="delta", name="op")
    got = sorted((name, b, e) for _, name, b, e, *_ in replay(start)["slices"])
    assert got == [("a", 100, 200), ("b", 150, 250), ("c", 160, 180), ("d", 300, 350),
                   ("e", 300, 300), ("f", 700, 1100)]


def test_counters_per_track_and_column_keep_int_and_float_values(tmp_path):
    df = pd.DataFrame({"ts": [1, 2, 3], "tid": [4, 4, 5], "pid": [4, 4, 4],
                       "queued": np.array([3, 9, 2**62 + 1], np.uint64), "load": [0.5, 0.25, 2.0]})
    out = replay(export.to_perfetto(df, tmp_path / "c.pftrace", counters=["queued", "load"],
                                    instants=False))
    assert out["instants"] == [] and out["slices"] == []
    assert sorted((w[1], parent[2], ts, v) for w, parent, ts, v in out["counters"]) == [
        ("load", 4, 1, 0.5), ("load", 4, 2, 0.25), ("load", 5, 3, 2.0),
        ("queued", 4, 1, 3), ("queued", 4, 2, 9), ("queued", 5, 3, 2**62 + 1)]
    assert all(isinstance(v, int) for w, _, _, v in out["counters"] if w[1] == "queued")


def test_datetimes_timedeltas_and_seconds_are_nanoseconds_and_missing_times_counted(tmp_path):
    stamps = pd.to_datetime(["2026-01-02 03:04:05.000000001", None, "2026-01-02 03:04:06"],
                            format="ISO8601")
    df = pd.DataFrame({"when": stamps, "tid": [1, 1, 1]})
    with pytest.warns(export.ExportWarning, match="1 no time"):
        out = replay(export.to_perfetto(df, tmp_path / "w.pftrace"))
    epoch = pd.Timestamp("2026-01-02 03:04:05").value
    assert [ts for _, _, ts, *_ in out["instants"]] == [epoch + 1, epoch + 10**9]
    aware = df.assign(when=df["when"].dt.tz_localize("Europe/Paris")).dropna()
    out = replay(export.to_perfetto(aware, tmp_path / "tz.pftrace"))
    assert [ts for _, _, ts, *_ in out["instants"]] == [epoch + 1 - 3600 * 10**9,
                                                       epoch - 3600 * 10**9 + 10**9]
    secs = pd.DataFrame({"time": [0.5, 1.25], "tid": [1, 1]})
    out = replay(export.to_perfetto(secs, tmp_path / "s.pftrace"))
    assert [ts for _, _, ts, *_ in out["instants"]] == [500_000_000, 1_250_000_000]
    spans = pd.DataFrame({"ts": [100], "took": pd.to_timedelta([3], unit="us"), "tid": [1]})
    out = replay(export.to_perfetto(spans, tmp_path / "td.pftrace", duration="took"))
    assert [(b, e) for _, _, b, e, *_ in out["slices"]] == [(100, 3100)]


def test_frames_of_two_streams_share_the_threads_tracks(tmp_path):
    a = pd.DataFrame({"ts": [1, 5], "pid": [3, 3], "tid": [3, 4]})
    b = pd.DataFrame({"ts": [2, 3], "pid": [3, 3], "tid": [4, 4], "dur": [1, 1]})
    path = export.Timeline().add(a, stream="enter").add(b, stream="io", duration="dur") \
        .write(tmp_path / "two.pftrace")
    out = replay(path)
    assert sorted((w, n, t) for w, n, t, *_ in out["instants"]) == [
        (("thread", 3, 3, ""), "enter", 1), (("thread", 3, 4, ""), "enter", 5)]
    assert sorted((w, n, b, e) for w, n, b, e, *_ in out["slices"]) == [
        (("thread", 3, 4, ""), "io", 2, 3), (("thread", 3, 4, ""), "io", 3, 4)]
    assert sum(1 for t in out["tracks"].values() if t[:3] == ("thread", 3, 4)) == 1


@pytest.mark.parametrize("options, message", [
    ({}, "no time column in 'event'"),
    ({"time": "nope"}, "no column 'nope'"),
    ({"track": "thread"}, "track='thread' needs a column named tid"),
    ({"track": "host"}, "no column 'host' to make tracks of"),
    ({"duration": "x", "phase": "x"}, "give duration= or phase=, not both"),
    ({"anchor": "middle"}, "anchor must be 'start' or 'end'"),
    ({"counters": "label"}, "counter column 'label' is not numeric"),
    ({"args": ["x", "nope"]}, "no column 'nope'"),
])
def test_bad_timeline_requests_say_what_to_do(tmp_path, options, message):
    df = pd.DataFrame({"x": [1], "label": ["a"]})
    if options:
        df = df.assign(ts=[1])
    with pytest.raises(ExportError, match=message) as e:
        export.to_perfetto(df, tmp_path / "bad.pftrace", **options)
    assert e.value.hint or not message.startswith(("no time", "track=", "no column 'host'"))
    assert not (tmp_path / "bad.pftrace").exists()  # nothing half-written
    if options:  # a refused frame changes nothing in the timeline: no count, no track
        timeline = export.Timeline()
        with pytest.raises(ExportError):
            timeline.add(df.assign(ts=[np.nan]), **options)
        assert timeline.left_out == {}
        assert replay(timeline.write(tmp_path / "empty.pftrace"))["tracks"] == {}


def test_a_stream_that_is_not_a_frame_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ExportError, match="not an event frame") as e:
        export.to_perfetto([1, 2], tmp_path / "x.pftrace")
    assert "prog.events[NAME]" in e.value.hint


# -- profiles from frames the test writes ----------------------------------------------

SYNTHETIC = pd.DataFrame({
    "frames": [("app", "main", "work", "sys_read", "vfs_read"), ("app", "main", "work"),
               ("app", "main", "idle"), ("db", "[missing]"), ("app", "main", "gone"),
               ("db", "[missing]", "[missing]")],
    "kinds": [("comm", "user", "user", "kernel", "kernel"), ("comm", "user", "user"),
              ("comm", "user", "user"), ("comm", "kernel"), ("comm", "user", "user"),
              ("comm", "user", "kernel")],
    "count": [7, 5, 2, 3, 0, 1],
    "pid": [10, 10, 11, 12, 10, 12],
})


def read_pprof(path: Path):
    """The profile message of a pprof file, checked against pprof's rules for ids."""
    profile = pprof.message()()
    profile.ParseFromString(gzip.decompress(path.read_bytes()))
    strings = profile.string_table
    assert strings[0] == ""
    for table in ("mapping", "location", "function"):
        ids = [item.id for item in getattr(profile, table)]
        assert 0 not in ids and len(set(ids)) == len(ids), table
    return profile


def pprof_stacks(profile) -> Counter:
    """``{(frames root first, mapping of each): value}`` resolved through the tables."""
    strings = profile.string_table
    functions = {f.id: strings[f.name] for f in profile.function}
    mappings = {m.id: strings[m.filename] for m in profile.mapping}
    locations = {loc.id: (functions[loc.line[0].function_id], mappings.get(loc.mapping_id, ""))
                 for loc in profile.location}
    out: Counter = Counter()
    for sample in profile.sample:
        frames = [locations[i] for i in reversed(sample.location_id)]  # stored leaf first
        out[(tuple(f for f, _ in frames), tuple(m for _, m in frames))] += sample.value[0]
    return out


MAPPING = {"kernel": "[kernel.kallsyms]", "user": "[user]"}


def expected(counted: pd.DataFrame) -> Counter:
    out: Counter = Counter()
    for frames, kinds, n in zip(counted["frames"], counted["kinds"], counted["count"],
                                strict=True):
        if n:
            out[(tuple(frames), tuple(MAPPING.get(k, "") for k in kinds))] += int(n)
    return out


def test_pprof_has_each_stacks_exact_count_and_names_kernel_and_user_frames(tmp_path):
    path = export.to_pprof(SYNTHETIC, tmp_path / "p.pb.gz", period_ns=1e9 / 99,
                           time_ns=1_700_000_000_000_000_000, duration_ns=5 * 10**9,
                           comments=["from a test"])
    profile = read_pprof(path)
    assert pprof_stacks(profile) == expected(SYNTHETIC)
    strings = profile.string_table
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == \
        [("samples", "count"), ("cpu", "nanoseconds")]
    assert [list(s.value) for s in profile.sample] == [[7, 70707071], [5, 50505051],
                                                       [2, 20202020], [3, 30303030],
                                                       [1, 10101010]]
    assert profile.period == 10101010 and strings[profile.period_type.unit] == "nanoseconds"
    assert profile.time_nanos == 1_700_000_000_000_000_000
    assert profile.duration_nanos == 5 * 10**9
    assert [strings[c] for c in profile.comment] == ["from a test"]
    assert [(strings[lb.key], lb.num) for lb in profile.sample[2].label] == [("pid", 11)]
    assert all(m.has_functions for m in profile.mapping)
    # one function and location per distinct frame sampled: main and app are shared,
    # [missing] is one frame on each side, and "gone", counted 0 times, is no sample
    assert len(profile.function) == len(profile.location) == 9


def test_pprof_of_off_cpu_time_names_its_unit_and_labels_text(tmp_path):
    df = pd.DataFrame({"stack": ["a;b", "a;c"], "us": [1500, 20], "host": ["web1", "web2"]})
    profile = read_pprof(export.to_pprof(df, tmp_path / "off.pb.gz", value="us",
                                         sample_type=("off_cpu", "microseconds")))
    strings = profile.string_table
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == \
        [("off_cpu", "microseconds")]
    assert pprof_stacks(profile) == Counter({(("a", "b"), ("", "")): 1500,
                                             (("a", "c"), ("", "")): 20})
    assert [(strings[lb.key], strings[lb.str]) for s in profile.sample for lb in s.label] == \
        [("host", "web1"), ("host", "web2")]
    assert len(profile.mapping) == 0  # frames of no known side belong to no mapping


def test_speedscope_file_validates_against_the_format_schema_with_the_same_totals(tmp_path):
    import jsonschema

    path = export.to_speedscope(SYNTHETIC, tmp_path / "p.speedscope.json", name="cpu")
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SCHEMA)
    [prof] = doc["profiles"]
    frames = doc["shared"]["frames"]
    assert len(prof["samples"]) == len(prof["weights"])  # speedscope refuses otherwise
    assert all(w > 0 for w in prof["weights"])
    assert sum(prof["weights"]) == prof["endValue"] == SYNTHETIC["count"].sum() == 18
    got = Counter()
    for sample, weight in zip(prof["samples"], prof["weights"], strict=True):
        got[tuple(frames[i]["name"] for i in sample)] += weight  # root first
    assert got == Counter({tuple(f): n for f, n in zip(SYNTHETIC["frames"], SYNTHETIC["count"],
                                                       strict=True) if n})
    # a name on both sides stays two frames, each saying its side
    assert sorted(f["file"] for f in frames if f["name"] == "[missing]") == \
        ["[kernel]", "[user]"]
    with pytest.raises(ExportError, match="no unit 'ticks'"):
        export.to_speedscope(SYNTHETIC, tmp_path / "x.json", unit="ticks")


def test_the_schema_refuses_what_speedscope_refuses():
    import jsonschema

    good = speedscope.speedscope_document([("a;b", 2)])
    jsonschema.validate(good, SCHEMA)
    for broken in ({**good, "$schema": "https://example.com"},
                   {**good, "profiles": [{**good["profiles"][0], "unit": "ticks"}]},
                   {**good, "profiles": [{**good["profiles"][0], "type": "sampled!"}]},
                   {**good, "shared": {"frames": [{"file": "x"}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_folded_text_is_stacks_folded_line_by_line():
    counts = pd.DataFrame({"pid": [1, 1, 2, 2], "kernel_stack_id": [4, -14, 4, 9],
                           "user_stack_id": [7, 7, -14, 7], "comm": ["app", "app", "db", "app"],
                           "value": [3, 2, 6, 1]})
    recorded = pd.DataFrame({"stack_id": [4, 7, 9], "depth": [2, 2, 1],
                             "stack": ["do_syscall_64;ksys_read", "main;work", "schedule"]})
    folded = stacks.folded(counts, recorded)
    lines = [f"{s} {n}" for s, n in zip(folded["stack"], folded["count"], strict=True)]
    counted = stacks.stack_counts(counts, recorded)
    assert export.to_folded(counted).splitlines() == lines
    assert export.to_folded(folded).splitlines() == lines
    assert lines == ["db;[missing];do_syscall_64;ksys_read 6",
                     "app;main;work;do_syscall_64;ksys_read 3",
                     "app;main;work;[missing] 2", "app;main;work;schedule 1"]
    assert counted["kinds"][0] == ("comm", "user", "kernel", "kernel")
    back = export.read_folded(export.to_folded(counted))
    assert back.equals(folded)
    assert export.to_folded([("a;b", 1), ("a;c", 5), ("a;b", 2)]) == "a;c 5\na;b 3\n"


def test_stack_counts_refuse_what_no_tool_could_read(tmp_path):
    with pytest.raises(ExportError, match="not whole numbers >= 0"):
        export.to_pprof([("a", -1)], tmp_path / "x.pb.gz")
    with pytest.raises(ExportError, match="no value column 'count'") as e:
        export.to_speedscope(pd.DataFrame({"stack": ["a"], "n": [1]}), tmp_path / "x.json")
    assert "value=" in e.value.hint
    with pytest.raises(ExportError, match="row 0: 1 kinds for 2 frames"):
        export.as_stack_counts(pd.DataFrame({"frames": [["a", "b"]], "kinds": [["user"]],
                                             "count": [1]}))
    with pytest.raises(ExportError, match="no frames or stack column"):
        export.to_folded(pd.DataFrame({"count": [1]}))
    with pytest.raises(ExportError, match="does not end in a count"):
        export.read_folded("a;b 3\na;c\n")


# -- differential flame graphs --------------------------------------------------------

def colours(ax) -> list[tuple]:
    return [tuple(round(c, 6) for c in p.get_facecolor()[:3]) for p in ax.patches]


def test_a_profile_against_itself_is_neutral():
    ax = plots.flamegraph(SYNTHETIC, SYNTHETIC)
    rects = plots.flame_rects(SYNTHETIC)
    assert len(ax.patches) == (rects["width"] > 0).sum() == 9
    assert set(colours(ax)) == {plots.NEUTRAL}


def test_one_stack_doubled_colours_exactly_that_stack():
    after = SYNTHETIC.copy()
    after.loc[1, "count"] *= 2  # app;main;work: 5 -> 10
    diff = plots.flame_diff(SYNTHETIC, after)
    changed = diff[diff["delta"] != 0]
    assert changed[["frame", "depth", "self_before", "self_after"]].values.tolist() == \
        [["work", 2, 5, 10]]
    assert diff.loc[diff["frame"] == "app", ["before", "after"]].values.tolist() == [[14, 19]]
    assert diff.loc[diff["frame"] == "db", ["before", "after"]].values.tolist() == [[4, 4]]
    ax = plots.flamegraph(SYNTHETIC, after)
    drawn = dict(zip(((r.frame, r.depth) for r in diff[diff["width"] > 0].itertuples()),
                     colours(ax), strict=True))
    assert {k for k, c in drawn.items() if c != plots.NEUTRAL} == {("work", 2)}
    assert drawn[("work", 2)] == plots.GROWTH
    # halved instead: the same frame, in the colour of shrinkage
    after.loc[1, "count"] = 1
    ax = plots.flamegraph(SYNTHETIC, after)
    assert [c for c in colours(ax) if c != plots.NEUTRAL] == [plots.SHRINKAGE]


def test_growth_is_paler_the_smaller_it_is_and_gone_frames_have_no_width():
    before = pd.DataFrame({"stack": ["m;a", "m;b", "m;c"], "count": [10, 10, 4]})
    after = pd.DataFrame({"stack": ["m;a", "m;b"], "count": [20, 12]})
    diff = plots.flame_diff(before, after).set_index("frame")
    assert diff.loc["c", ["width", "before", "after", "delta"]].tolist() == [0, 4, 0, -4]
    ax = plots.flamegraph(before, after)
    a, b = colours(ax)[1:3]
    assert a == plots.GROWTH and plots.NEUTRAL[0] > b[0] > plots.GROWTH[0]


# -- from the kernel: a real profile and a real timeline --------------------------------

PROFILER = r"""
#include <uapi/linux/bpf_perf_event.h>
BPF_STACK_TRACE(traces, 4096);
struct key_t { u32 pid; int kernel_stack_id; int user_stack_id; char comm[16]; };
BPF_HASH(counts, struct key_t, u64, 4096);

int on_sample(struct bpf_perf_event_data *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != TID) return 0;
    struct key_t k = {};
    k.pid = id >> 32;
    k.kernel_stack_id = traces.get_stackid(&ctx->regs, 0);
    k.user_stack_id = traces.get_stackid(&ctx->regs, BPF_F_USER_STACK);
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    counts.increment(k);
    return 0;
}
"""

PROFILE_AS_NOBODY = """
import sys
import ebpf_magic
from ebpf_magic import export
from ebpf_magic.data import stacks
prog = ebpf_magic.load(sys.argv[1])
export.to_pprof(stacks.stack_counts(prog.maps["counts"], prog.maps["traces"]), sys.argv[2])
print("exported")
"""
TRACE_AS_NOBODY = """
import sys
import ebpf_magic
prog = ebpf_magic.load(sys.argv[1])
prog.events["edges"].to_perfetto(sys.argv[2], phase="phase", name="comm")
print("exported")
"""


def export_as_nobody(script: str, recording: Path, out: Path) -> Path:
    """Run ``script RECORDING OUTPUT`` as a user with no rights (when we are root); the
    output is copied to ``out``."""
    from test_recording import run_unprivileged

    with tempfile.TemporaryDirectory(prefix="ebpf_export_") as tmp:
        home = Path(tmp)
        home.chmod(0o777)
        (home / recording.name).write_bytes(recording.read_bytes())
        (home / "export_it.py").write_text(script)
        for path in home.iterdir():
            path.chmod(0o644)
        done = run_unprivileged([sys.executable, str(home / "export_it.py"),
                                 str(home / recording.name), str(home / out.name)], home)
        assert done.returncode == 0 and done.stdout.strip() == "exported", done.stderr
        out.write_bytes((home / out.name).read_bytes())
    return out


def _named(name: bytes) -> None:
    ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME: this thread's comm


@pytest.mark.kernel
def test_a_sampled_profile_exports_its_exact_counts_live_and_replayed(spinner, tmp_path,
                                                                      no_leaks):
    ready, go, tid = threading.Event(), threading.Event(), []

    def work() -> None:  # user time in the spinner, kernel time reading /dev/zero
        _named(b"em_profiled")
        tid.append(threading.get_native_id())
        ready.set()
        go.wait()
        deadline = time.monotonic() + 0.8
        with open("/dev/zero", "rb", buffering=0) as zero:
            while time.monotonic() < deadline:
                spinner(300_000)
                zero.read(1 << 20)

    worker = threading.Thread(target=work)
    worker.start()
    ready.wait()
    with ebpf_magic.Program(PROFILER, defines={"TID": tid[0]},
                            attach=["software:cpu-clock:1000000=on_sample"]) as prog:
        go.set()
        worker.join()  # the only thread sampled is gone: the maps hold still now
        total = int(prog.maps["counts"].df["value"].sum())
        counted = stacks.stack_counts(prog.maps["counts"], prog.maps["traces"])
        folded = stacks.folded(prog.maps["counts"], prog.maps["traces"])
        recorded_counted = stacks.stack_counts(prog.maps["counts"], prog.maps["traces"].df)
        recording = prog.save(tmp_path / "prof.bpfrec")
    assert total > 100, f"only {total} samples in 0.8 s at 1 kHz"
    assert counted["count"].sum() == total
    user = {f for fs, ks in zip(counted["frames"], counted["kinds"], strict=True)
            for f, k in zip(fs, ks, strict=True) if k == "user"}
    kernel = {f for fs, ks in zip(counted["frames"], counted["kinds"], strict=True)
              for f, k in zip(fs, ks, strict=True) if k == "kernel"}
    assert {"em_spin_leaf", "em_spin_outer"} <= user, sorted(user)[:30]
    assert kernel & {"read_zero", "iov_iter_zero", "ksys_read", "vfs_read"}, sorted(kernel)[:30]
    assert set(c for fs in counted["frames"] for c in fs[:1]) == {"em_profiled"}

    profile = read_pprof(export.to_pprof(counted, tmp_path / "live.pb.gz", period_ns=1e6))
    assert pprof_stacks(profile) == expected(counted)
    spin = [fs for fs, _ in pprof_stacks(profile) if "em_spin_leaf" in fs]
    # a sample in the leaf's first instructions (its frame not yet set up) unwinds past
    # em_spin_outer: the order is checked where both are present
    both = [fs for fs in spin if "em_spin_outer" in fs]
    assert both and all(fs.index("em_spin_outer") < fs.index("em_spin_leaf") for fs in both)

    import jsonschema
    doc = json.loads(export.to_speedscope(counted, tmp_path / "live.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert sum(doc["profiles"][0]["weights"]) == total

    assert export.to_folded(counted).splitlines() == \
        [f"{s} {n}" for s, n in zip(folded["stack"], folded["count"], strict=True)]

    ax = plots.flamegraph(folded, counted)
    assert set(colours(ax)) == {plots.NEUTRAL}
    grown = counted.copy()
    grown.loc[0, "count"] *= 2
    diff = plots.flame_diff(counted, grown)
    assert diff.loc[diff["delta"] != 0, "frame"].tolist() == [counted["frames"][0][-1]]

    # replayed, and exported by a user with no rights at all: the same counts
    replayed = ebpf_magic.load(recording)
    again = stacks.stack_counts(replayed.maps["counts"], replayed.maps["traces"])
    assert expected(again) == expected(recorded_counted)
    assert sum(expected(again).values()) == total
    nobody = export_as_nobody(PROFILE_AS_NOBODY, recording, tmp_path / "nobody.pb.gz")
    assert pprof_stacks(read_pprof(nobody)) == expected(recorded_counted)


EDGES = r"""
struct edge { u64 ts; u32 pid; u32 tid; u32 phase; char comm[16]; };
BPF_RINGBUF_OUTPUT(edges, 64);

static int emit(u32 phase) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != PID) return 0;
    struct edge e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    e.phase = phase;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    edges.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return emit(0); }
TRACEPOINT_PROBE(syscalls, sys_exit_getppid) { return emit(1); }
"""


@pytest.mark.kernel
def test_a_traced_programs_calls_are_slices_on_their_threads_live_and_replayed(tmp_path, capsys,
                                                                            no_leaks):
    from ebpf_magic.magics import save

    calls = {b"em_getppid_a": 40, b"em_getppid_b": 25}
    tids: dict[int, str] = {}

    def caller(name: bytes, n: int) -> None:
        _named(name)
        tids[threading.get_native_id()] = name.decode()
        for _ in range(n):
            os.getppid()

    me = os.getpid()
    with ebpf_magic.Program(EDGES, defines={"PID": me}) as prog:
        threads = [threading.Thread(target=caller, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stream = prog.events["edges"]
        deadline = time.monotonic() + 10
        while len(stream) < 2 * sum(calls.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        df = stream.df
        assert sorted(set(df["tid"])) == sorted(tids), "getppid() from another thread"
        assert len(df) == 2 * sum(calls.values()) and stream.stats["lost_kernel"] == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", export.ExportWarning)  # every row is placed
            path = stream.to_perfetto(tmp_path / "live.pftrace", phase="phase", name="comm")
        recording = prog.save(tmp_path / "edges.bpfrec")

    out = replay(path)
    by_thread = Counter(where for where, *_ in out["slices"])
    assert by_thread == Counter({("thread", me, t, name): calls[name.encode()]
                                 for t, name in tids.items()})
    begins = df[df["phase"] == 0].sort_values("ts")
    ends = df[df["phase"] == 1].sort_values("ts")
    got = sorted((where[2], b, e) for where, _, b, e, *_ in out["slices"])
    assert [b for _, b, _ in sorted(got, key=lambda s: s[1])] == begins["ts"].tolist()
    assert sorted(e for *_, e in got) == ends["ts"].tolist()
    assert all(0 < e - b < 10**8 for _, b, e in got)
    assert all(name == where[3] and args == {} and cats == ["edges"]
               for where, name, _, _, args, cats in out["slices"])

    # replayed without rights: the same slices; %bpf save --perfetto: every event an instant
    nobody = replay(export_as_nobody(TRACE_AS_NOBODY, recording, tmp_path / "nobody.pftrace"))
    assert Counter(w for w, *_ in nobody["slices"]) == Counter(
        {("thread", me, t, name): calls[name.encode()] for t, name in tids.items()})

    replayed = ebpf_magic.load(recording)

    class Magics:
        session = type("Session", (), {"get": staticmethod(lambda name: replayed)})()
        shell = type("Shell", (), {"user_ns": {}})()

    save.run(Magics(), f"edges --perfetto {tmp_path / 'magic.pftrace'}")
    assert capsys.readouterr().out.endswith(
        f": edges ({len(df)} events) written to {tmp_path / 'magic.pftrace'} "
        "(open it in ui.perfetto.dev)\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".bpfrec") == \
        ["edges.bpfrec"]  # the trace only: no recording without a PATH
    save.run(Magics(), f"edges {tmp_path / 'again.bpfrec'} --perfetto {tmp_path / 'b.pftrace'}")
    assert len(ebpf_magic.load(tmp_path / "again.bpfrec").events["edges"].df) == len(df)
    assert replay(tmp_path / "b.pftrace") == replay(tmp_path / "magic.pftrace")
    instants = replay(tmp_path / "magic.pftrace")["instants"]
    assert Counter(w for w, *_ in instants) == Counter(
        {("thread", me, t, name): 2 * calls[name.encode()] for t, name in tids.items()})
    assert {name for _, name, *_ in instants} == {"edges"}


def test_save_perfetto_of_a_program_without_times_says_what_to_add(tmp_path):
    from ebpf_magic.magics import save

    recording = Path(__file__).resolve().parent.parent / "notebooks" / "recordings" / \
        "writes.bpfrec"
    replayed = ebpf_magic.load(recording)

    class Magics:
        session = type("Session", (), {"get": staticmethod(lambda name: replayed)})()
        shell = type("Shell", (), {"user_ns": {}})()

    with pytest.raises(ExportError, match="no event stream of writes has a time column") as e:
        save.run(Magics(), f"writes --perfetto {tmp_path / 'x.pftrace'}")
    assert "bpf_ktime_get_ns()" in e.value.hint
    assert not (tmp_path / "x.pftrace").exists()
