"""char[] columns decoded through codes: same strings as decoding every row, pandas' str dtype."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebpf_magic.data import eventframe
from ebpf_magic.internal import dtypes


def records(comms: list[bytes]) -> np.ndarray:
    dt = np.dtype([("ts", "<u8"), ("pid", "<u4"), ("tid", "<u4"), ("comm", "S16")])
    out = np.zeros(len(comms), dt)
    out["ts"] = np.arange(len(comms))
    out["comm"] = comms
    return out


def expected(comms: list[bytes]) -> list[str]:
    return [c.split(b"\0", 1)[0].decode("utf-8", "replace") for c in comms]


CASES = {
    "long runs": [b"loadgen"] * 3000 + [b"bash"] * 2000 + [b"loadgen"] * 1000,
    "interleaved": [b"p%d" % (i % 7) for i in range(5000)],
    "all distinct": [b"proc-%d" % i for i in range(5000)],
    # C strings end at the first NUL; bytes after it are not part of the name
    "embedded nul": [b"ab\0x", b"ab\0y", b"ab", b"abc"] * 1000,
    "bad utf-8": [b"caf\xc3\xa9", b"\xff\xfe", b"ok"] * 1000,
    "full width": [b"x" * 16, b"y" * 16] * 1000,
}


@pytest.mark.parametrize("case", CASES)
def test_frame_decodes_every_row_like_c(case: str) -> None:
    comms = CASES[case]
    df = eventframe.frame(records(comms))
    assert df["comm"].tolist() == expected(comms)
    assert df["comm"].dtype == pd.Series(["x"]).dtype
    assert df["ts"].tolist() == list(range(len(comms)))


@pytest.mark.parametrize("case", CASES)
def test_many_runs_take_the_hashed_path(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventframe, "_FEW_RUNS", 2)
    comms = CASES[case]
    assert eventframe.frame(records(comms))["comm"].tolist() == expected(comms)


def test_hash_collisions_fall_back_to_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # with a zero multiplier only the last 8 bytes are hashed: these names collide
    monkeypatch.setattr(eventframe, "_MIX", np.uint64(0))
    monkeypatch.setattr(eventframe, "_FEW_RUNS", 2)
    comms = [b"aaaaaaaa", b"bbbbbbbb", b"cccccccc"] * 1000
    codes, names = eventframe.factorize(records(comms)["comm"])
    assert names[codes].tolist() == expected(comms)
    assert len(set(names)) == 3


def test_factorize_codes_and_names() -> None:
    codes, names = eventframe.factorize(records([b"a", b"a", b"b", b"a"])["comm"])
    assert names[codes].tolist() == ["a", "a", "b", "a"]
    assert sorted(names) == ["a", "b"]
    empty_codes, empty_names = eventframe.factorize(records([])["comm"])
    assert len(empty_codes) == len(empty_names) == 0


def test_empty_frame_keeps_columns() -> None:
    df = eventframe.frame(records([]))
    assert list(df.columns) == ["ts", "pid", "tid", "comm"] and len(df) == 0


def test_small_frames_match_the_plain_decoder() -> None:
    comms = [b"x", b"y\0z"]
    assert eventframe.frame(records(comms))["comm"].tolist() == \
        dtypes.decode_strings(records(comms)["comm"]).tolist()


def test_event_bitfields_are_columns_of_their_own() -> None:
    """A record with bitfields (as the BTF reader describes one) shows each bitfield's value."""
    bits = {"lo": dtypes.Bitfield("__bits0", 0, 3, np.dtype("<u4")),
            "hi": dtypes.Bitfield("__bits0", 3, 5, np.dtype("<u4"))}
    inner = np.dtype({"names": ["__bits0"], "formats": [("u1", (4,))], "offsets": [0],
                      "itemsize": 4}, metadata={"bitfields": bits})
    dt = np.dtype([("pid", "<u4"), ("flags", inner), ("comm", "S8")])
    rec = np.zeros(3, dt)
    rec["pid"] = [1, 2, 3]
    word = np.array([5 | 17 << 3, 0, 7 | 31 << 3], "<u4")
    rec["flags"]["__bits0"] = word.view(np.uint8).reshape(3, 4)
    rec["comm"] = [b"a", b"b", b"c"]
    df = eventframe.frame(rec)
    assert list(df.columns) == ["pid", "flags.lo", "flags.hi", "comm"]
    assert df["flags.lo"].tolist() == [5, 0, 7]
    assert df["flags.hi"].tolist() == [17, 0, 31]
