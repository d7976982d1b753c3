"""One read API: a live program and its recording, replayed, read alike through the Protocols."""

from __future__ import annotations

import inspect
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import ebpf_magic
from ebpf_magic import tools
from ebpf_magic.api import (
    EditableMap,
    GlobalsView,
    MapView,
    Named,
    ProgramView,
    StreamView,
)
from ebpf_magic.errors import BPFError
from ebpf_magic.sessions import ReplayedMap, ReplayedProgram

# ``__len__`` and the like are part of a Protocol too; typing's own members are not
_DUNDERS = {"__len__", "__getitem__", "__iter__", "__delitem__"}


def protocol_members(proto: type) -> dict[str, Any]:
    """``{name: declaration}`` of every member ``proto`` and the Protocols it extends declare
    (None for a plain attribute)."""
    out: dict[str, Any] = {}
    for klass in reversed(proto.__mro__):
        if not getattr(klass, "_is_protocol", False) or klass.__module__ == "typing":
            continue
        out.update(dict.fromkeys(klass.__dict__.get("__annotations__", {})))
        out.update({n: v for n, v in vars(klass).items()
                    if (not n.startswith("_") or n in _DUNDERS) and callable(v)
                    or isinstance(v, property)})
    return out


def conforms(obj: object, proto: type) -> None:
    """Assert that ``obj`` has every member of ``proto``, and that each method takes the
    Protocol's parameters (names, kinds and defaults, in order; more only with defaults).

    ``isinstance`` on a runtime-checkable Protocol checks only that the names exist.
    """
    kind = type(obj)
    for name, declared in protocol_members(proto).items():
        found = inspect.getattr_static(obj, name, inspect.getattr_static(kind, name, None))
        assert found is not None or name in getattr(obj, "__dict__", {}), \
            f"{kind.__name__} has no {name} of {proto.__name__}"
        if not inspect.isfunction(declared):
            assert not inspect.isfunction(found), \
                f"{kind.__name__}.{name} is a method; {proto.__name__} reads it as a value"
            continue
        assert inspect.isfunction(found), f"{kind.__name__}.{name} is not a method"
        want = list(inspect.signature(declared).parameters.values())[1:]
        have = list(inspect.signature(found).parameters.values())[1:]
        shown = f"{kind.__name__}.{name}{inspect.signature(found)} against " \
                f"{proto.__name__}.{name}{inspect.signature(declared)}"
        assert [(p.name, p.kind, p.default) for p in have[:len(want)]] == \
            [(p.name, p.kind, p.default) for p in want], shown
        assert all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in have[len(want):]), shown


def conforms_all(prog: ProgramView) -> None:
    """``prog``, its maps, streams and globals each implement their part of the read API."""
    conforms(prog, ProgramView)
    for m in prog.maps.values():
        conforms(m, MapView)
    for s in prog.events.values():
        conforms(s, StreamView)
    conforms(prog.globals, GlobalsView)

CALLS = 37
SOURCE = """
struct val { u64 count; u32 last; };
struct event { u32 tid; u32 seq; };
struct pair { u32 tid; u32 odd; };
BPF_HASH(m, u32, struct val);
BPF_HASH(calls, u32, u64);
BPF_HASH(by_pair, struct pair, u64);
BPF_PERCPU_ARRAY(per_cpu, u64, 2);
BPF_HISTOGRAM(seqs, int, 16);
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
    struct pair p = {tid, seq & 1};
    by_pair.increment(p);
    int zero_index = 0;
    per_cpu.increment(zero_index);
    seqs.increment(bpf_log2l(seq));
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
    assert dict(replayed.globals) == dict(live.globals)
    pd.testing.assert_frame_equal(replayed.globals.df, live.globals.df, check_exact=True)
    a, b = live.summary(), replayed.summary()
    assert {k: v for k, v in b.items() if k not in ("state", "uptime_s")} == \
        {k: v for k, v in a.items() if k not in ("state", "uptime_s")}
    assert b["state"] == replayed.state and a["state"] == live.state
    assert replayed.events_seen == live.events_seen
    assert list(map(str, replayed.warnings)) == list(map(str, live.warnings))
    assert list(map(str, replayed.notes)) == list(map(str, live.notes))


@pytest.mark.kernel
def test_live_and_replayed_programs_are_one_read_api(tmp_path: Path, no_leaks) -> None:
    tid = threading.get_native_id()
    with ebpf_magic.Program(SOURCE, name="api", defines={"TID": tid}) as prog:
        for _ in range(CALLS):
            os.getppid()
        deadline = time.time() + 5
        while len(prog.events["e"]) < CALLS and time.time() < deadline:
            time.sleep(0.02)
        conforms_all(prog)
        for m in prog.maps.values():
            conforms(m, EditableMap)
        assert prog.readable and prog.tables == {}
        back = ebpf_magic.load(prog.save(tmp_path / "api.bpfrec"))
        read_alike(prog, back)
        # item access and histograms read as the live map reads them
        odd = CALLS // 2 + CALLS % 2
        keys = {"m": [tid], "calls": [tid], "per_cpu": [0, 1],
                "by_pair": [(tid, 1), {"tid": tid, "odd": 0}]}
        for name, ks in keys.items():
            for key in ks:
                assert back.maps[name][key] == prog.maps[name][key], (name, key)
        assert back.maps["m"][tid] == {"count": CALLS, "last": CALLS}
        assert back.maps["by_pair"][(tid, 1)] == odd
        assert sum(back.maps["per_cpu"][0]) == CALLS
        with pytest.raises(KeyError, match=rf"{tid + 1} is not a key of calls"):
            back.maps["calls"][tid + 1]
        with pytest.raises(KeyError):
            prog.maps["calls"][tid + 1]
        for kind, step in [(None, 1), ("linear", 4), ("log2", 1)]:
            pd.testing.assert_frame_equal(back.maps["seqs"].hist(kind, step).df,
                                          prog.maps["seqs"].hist(kind, step).df,
                                          check_exact=True)
        linear = back.maps["seqs"].hist("linear", 4).df
        assert (linear["low"] == linear["slot"] * 4).all() and (linear["high"] - linear["low"]
                                                                 == 4).all()
        for reader in (prog, back):  # one word for a stream in every message
            with pytest.raises(KeyError, match=r"no event stream named 'ee' \(did you mean "
                                               r"'e'\?\); event streams: e"):
                reader.events["ee"]
        frames = prog.read_maps(["m"])
        assert list(frames) == ["m"] and frames["m"]["count"].tolist() == [CALLS]
    with pytest.raises(BPFError, match="program 'api' was stopped"):
        prog.read_maps()  # never a read of descriptors stop() closed

    assert isinstance(back, ReplayedProgram)
    conforms_all(back)
    assert not any(m.writable for m in back.maps.values())
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


# every event a stream received is in its frame or counted as not held
NOT_HELD = ("dropped_cap", "spilled", "discarded_paused", "cleared", "lost_reader")


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_recordings_made_before_replay_on_the_read_api(path: Path) -> None:
    back = ebpf_magic.load(path)
    conforms_all(back)
    assert back.warnings == [] and back.notes == [], "written before they were kept"
    if path.stem.startswith("box_"):  # a tool's run keeps the settings its options made
        assert dict(back.globals) and all(
            k.startswith("targ_") or k == "max_args" for k in back.globals), dict(back.globals)
    else:
        assert dict(back.globals) == {}
    for name, m in back.maps.items():
        assert isinstance(m.value_columns, list) and m.info()["map"] == name
    for s in back.events.values():
        stats = s.stats
        assert stats["held"] == len(s.df) == len(s)
        assert stats["received"] == stats["held"] + sum(stats.get(k, 0) for k in NOT_HELD)
    assert back.events_seen == sum(s.stats["received"] for s in back.events.values())
    near = next(iter(back.maps), None)
    if near is not None:
        with pytest.raises(KeyError, match=rf"no map named '{near}x' \(did you mean '{near}'"):
            back.maps[near + "x"]
    if back.events:
        with pytest.raises(KeyError, match=r"no event stream named 'nox'; event streams: "):
            back.events["nox"]


def implementations(path: Path, tmp_path: Path) -> list[ProgramView]:
    """The ProgramViews that read one recording without a kernel: the replay, the replay of
    it saved again, and for a tool's recording the tool run over each."""
    back = ebpf_magic.load(path)
    again = ebpf_magic.load(back.save(tmp_path / "again.bpfrec"))
    out: list[ProgramView] = [back, again]
    out += [run for run in (tools.replayed(back), tools.replayed(again)) if run is not back
            and run is not again]
    return out


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_every_reader_of_a_recording_gives_the_same_rows(path: Path, tmp_path: Path) -> None:
    first, *others = implementations(path, tmp_path)
    assert others, "at least the saved-again replay"
    for other in others:
        conforms_all(other)
        read_alike(first, other)
        assert other.summary() == first.summary()
        pd.testing.assert_frame_equal(other.overhead, first.overhead, check_exact=True)
        for name, m in first.maps.items():
            try:
                want = m.hist()
            except (TypeError, ValueError):
                continue
            pd.testing.assert_frame_equal(other.maps[name].hist().df, want.df)


def test_the_conformance_check_sees_what_isinstance_does_not() -> None:
    """A map whose hist() lost ``step`` still passes ``isinstance``; :func:`conforms` fails."""

    class NoStep(ReplayedMap):
        def hist(self, kind: str | None = None) -> Any:  # type: ignore[override]
            return super().hist(kind)

    class Frozen(ReplayedMap):
        info = {"map": "m"}  # type: ignore[assignment]

    back = ebpf_magic.load(RECORDINGS[0])
    recorded = next(iter(back.maps.values()))
    for broken in (NoStep, Frozen):
        m = object.__new__(broken)
        m.__dict__.update(recorded.__dict__)
        assert isinstance(m, MapView)
        with pytest.raises(AssertionError, match=r"\.(hist|info)"):
            conforms(m, MapView)
    conforms(recorded, MapView)


KINDS = REPO / "notebooks" / "recordings" / "kinds.bpfrec"
CALLS_REC = REPO / "notebooks" / "recordings" / "box_calls.bpfrec"


def test_replayed_map_items_by_every_key_form() -> None:
    kinds = ebpf_magic.load(KINDS)
    assert kinds.maps["by_size"][2] == 50 and kinds.maps["by_size"].get(9) is None
    assert 2 in kinds.maps["by_size"] and 9 not in kinds.maps["by_size"]
    assert kinds.maps["per_cpu"][0] == [200, 0]  # one value per CPU, as live gives them
    calls = ebpf_magic.load(CALLS_REC).maps["counts"]
    row = calls.df.iloc[0]
    key = (int(row["pid"]), int(row["nr"]))
    want = [{"calls": int(row[f"calls[cpu{c}]"]), "returned": int(row[f"returned[cpu{c}]"]),
             "total_ns": int(row[f"total_ns[cpu{c}]"])} for c in (0, 1)]
    assert calls[key] == calls[{"pid": key[0], "nr": key[1]}] == want
    with pytest.raises(KeyError, match=r"\(1, 2\) is not a key of counts in its final "):
        calls[(1, 2)]
    with pytest.raises(KeyError, match=r"'x' is not a valid key of counts \(struct"):
        calls["x"]
    with pytest.raises(TypeError, match=r"sizes was recorded as a table of slot, low, high"):
        kinds.maps["sizes"][4]


def test_replayed_hist_honours_kind_and_step() -> None:
    sizes = ebpf_magic.load(KINDS).maps["sizes"]
    recorded = sizes.df
    log2 = sizes.hist()
    assert log2.kind == "log2"
    pd.testing.assert_frame_equal(log2.df, recorded)
    linear = sizes.hist("linear", 4).df
    assert linear["slot"].tolist() == recorded["slot"].tolist()
    assert linear["count"].tolist() == recorded["count"].tolist()
    assert (linear["low"] == linear["slot"] * 4).all()
    assert (linear["high"] - linear["low"] == 4).all()
    by_size = ebpf_magic.load(KINDS).maps["by_size"]  # an array keyed by slot
    h = by_size.hist("linear", 10).df
    assert h[["slot", "low", "high", "count"]].values.tolist() == \
        [[1, 10, 20, 50], [2, 20, 30, 50], [3, 30, 40, 50]]
    assert np.array_equal(by_size.hist().df["low"], [1, 2, 4])  # log2: slot s is [2**(s-1), 2**s)


def test_browse_finds_the_browser_presentation_registers() -> None:
    """In a fresh interpreter no program module imports the widgets, yet ``browse()`` gives
    the map browser, over the program's maps."""
    import subprocess
    import sys

    code = ("import sys, ebpf_magic\n"
            f"p = ebpf_magic.load({str(KINDS)!r})\n"
            "assert 'ebpf_magic.present.widgets' not in sys.modules\n"
            "b = p.browse(interval=3600)\n"
            "print(type(b).__name__, sorted(b.model.maps()))\n"
            "b.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.split() == ["MapBrowser", "['by_fd',", "'by_size',", "'per_cpu',", "'sizes']"]
