"""One read API: a live program and its recording, replayed, read alike through the Protocols."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import ebpf_magic
from ebpf_magic.api import (
    EditableMap,
    GlobalsView,
    MapView,
    Named,
    ProgramView,
    StreamView,
)
from ebpf_magic.errors import BPFError
from ebpf_magic.sessions import ReplayedProgram

CALLS = 37
SOURCE = """
struct val { u64 count; u32 last; };
struct event { u32 tid; u32 seq; };
BPF_HASH(m, u32, struct val);
BPF_HASH(calls, u32, u64);
BPF_PERF_OUTPUT(e);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 tid = bpf_get_current_pid_tgid();
    if (tid != TID)
        return 0;
    u64 *n = calls.lookup(&tid);
    u32 seq = n ? *n + 1 : 1;
    calls.increment(tid);
    struct val zero = {};
    struct val *v = m.lookup_or_try_init(&tid, &zero);
    if (v) {
        v->count++;
        v->last = seq;
    }
    struct event ev = {tid, seq};
    e.perf_submit(args, &ev, sizeof(ev));
    return 0;
}
"""


def read_alike(live: ProgramView, replayed: ProgramView) -> None:
    """What a reader of either sees: the same frames, listings and descriptions."""
    assert list(live.maps) == list(replayed.maps) and list(live.events) == list(replayed.events)
    for name in live.maps:
        a, b = live.maps[name], replayed.maps[name]
        pd.testing.assert_frame_equal(b.df, a.df, check_exact=True)
        assert b.value_columns == a.value_columns
        assert b.info() == a.info()
        assert (b.kind, b.declared, b.key_type, b.value_type, b.max_entries, b.percpu) == \
            (a.kind, a.declared, a.key_type, a.value_type, a.max_entries, a.percpu)
        assert b.key_dtype == a.key_dtype and b.value_dtype == a.value_dtype
        assert len(b) == len(a)
    for name in live.events:
        a, b = live.events[name], replayed.events[name]
        pd.testing.assert_frame_equal(b.df, a.df, check_exact=True)
        assert b.stats == a.stats and b.kind == a.kind and len(b) == len(a)
    assert isinstance(live.globals, GlobalsView) and isinstance(replayed.globals, GlobalsView)
    assert dict(replayed.globals) == dict(live.globals)
    pd.testing.assert_frame_equal(replayed.globals.df, live.globals.df, check_exact=True)
    assert replayed.summary().keys() == live.summary().keys()
    assert replayed.events_seen == live.events_seen


@pytest.mark.kernel
def test_live_and_replayed_programs_are_one_read_api(tmp_path: Path, no_leaks) -> None:
    tid = threading.get_native_id()
    with ebpf_magic.Program(SOURCE, name="api", defines={"TID": tid}) as prog:
        for _ in range(CALLS):
            os.getppid()
        deadline = time.time() + 5
        while len(prog.events["e"]) < CALLS and time.time() < deadline:
            time.sleep(0.02)
        assert isinstance(prog, ProgramView)
        assert all(isinstance(m, MapView) and isinstance(m, EditableMap)
                   for m in prog.maps.values())
        assert all(isinstance(s, StreamView) for s in prog.events.values())
        assert prog.readable and prog.tables == {}
        back = ebpf_magic.load(prog.save(tmp_path / "api.bpfrec"))
        read_alike(prog, back)
        frames = prog.read_maps(["m"])
        assert list(frames) == ["m"] and frames["m"]["count"].tolist() == [CALLS]
    with pytest.raises(BPFError, match="program 'api' was stopped"):
        prog.read_maps()  # never a read of descriptors stop() closed

    assert isinstance(back, ReplayedProgram) and isinstance(back, ProgramView)
    assert all(isinstance(m, MapView) and not isinstance(m, EditableMap)
               for m in back.maps.values())
    assert all(isinstance(s, StreamView) for s in back.events.values())
    assert back.readable and not back.running and back.tables == {}
    assert back.maps["m"].value_columns == ["count", "last"]
    assert back.maps["m"].df.to_dict("list") == {"key": [tid], "count": [CALLS],
                                                 "last": [CALLS]}
    assert back.events["e"].df["seq"].tolist() == list(range(1, CALLS + 1))
    assert back.events["e"].stats["received"] == CALLS
    assert dict(back.globals) == {}, "a BCC program has no globals"
    assert back.summary()["events"] == CALLS
    assert back.read_maps()["m"].equals(back.maps["m"].df)
    # saved again from the replay, it reads the same
    read_alike(back, ebpf_magic.load(back.save(tmp_path / "again.bpfrec")))


def test_named_unknown_name_says_the_nearest(tmp_path: Path) -> None:
    named = Named({"counts": 1, "sizes": 2}, "map")
    with pytest.raises(KeyError, match=r"no map named 'count' \(did you mean 'counts'\?\); "
                                       r"maps: counts, sizes"):
        named["count"]


REPO = Path(__file__).resolve().parent.parent
RECORDINGS = sorted((REPO / "notebooks" / "recordings").glob("*.bpfrec"))


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_recordings_made_before_replay_on_the_read_api(path: Path) -> None:
    back = ebpf_magic.load(path)
    assert isinstance(back, ProgramView)
    if path.stem.startswith("box_"):  # a tool's run keeps the settings its options made
        assert dict(back.globals) and all(
            k.startswith("targ_") or k == "max_args" for k in back.globals), dict(back.globals)
    else:
        assert dict(back.globals) == {}
    for name, m in back.maps.items():
        assert isinstance(m, MapView), name
        assert isinstance(m.value_columns, list) and m.info()["map"] == name
    for s in back.events.values():
        assert isinstance(s, StreamView) and len(s.df) == s.stats.get("received", len(s))
    near = next(iter(back.maps), None)
    if near is not None:
        with pytest.raises(KeyError, match=rf"did you mean '{near}'"):
            back.maps[near + "x"]
