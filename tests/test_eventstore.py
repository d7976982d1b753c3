"""The bounded event store: newest rows kept, drops counted, copies safe against the writer."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd

from ebpf_magic.data.eventstore import EventStore

DT = np.dtype([("seq", "<u8"), ("tag", "<u4")])


def rows(lo: int, hi: int) -> np.ndarray:
    out = np.zeros(hi - lo, DT)
    out["seq"] = np.arange(lo, hi)
    out["tag"] = out["seq"] * 3
    return out


def test_keeps_the_newest_rows_across_wrap_arounds() -> None:
    store = EventStore(DT, 10)
    for lo in range(0, 37, 3):
        store.append(rows(lo, lo + 3))
    assert store.snapshot()["seq"].tolist() == list(range(29, 39))
    assert store.snapshot(4)["seq"].tolist() == [35, 36, 37, 38]
    assert store.dropped == 29 and len(store) == 10
    store.append(rows(39, 64))  # more than the store holds at once
    assert store.snapshot()["seq"].tolist() == list(range(54, 64))
    assert store.dropped == 54


def test_copy_cuts_rows_the_writer_overwrote_meanwhile() -> None:
    store = EventStore(DT, 10)
    store.append(rows(0, 10))
    lo, hi = store.held()
    store.append(rows(10, 14))  # overwrites the slots of rows 0 to 3
    copied = store.copy(lo, hi)
    cut = store.intact_from() - lo
    assert cut == 4
    assert copied[cut:]["seq"].tolist() == list(range(4, 10))
    assert (copied[cut:]["tag"] == copied[cut:]["seq"] * 3).all()


def test_copies_under_a_busy_writer_are_never_torn() -> None:
    store = EventStore(DT, 1000)
    lock, stop = threading.Lock(), threading.Event()

    def writer() -> None:
        seq = 0
        while not stop.is_set():
            with lock:
                store.append(rows(seq, seq + 97))
            seq += 97

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            with lock:
                lo, hi = store.held()
            copied = store.copy(lo, hi)
            with lock:
                good = copied[max(store.intact_from() - lo, 0):]
            seq = good["seq"].astype(np.int64)
            assert (np.diff(seq) == 1).all()
            assert (good["tag"] == good["seq"] * 3).all()
    finally:
        stop.set()
        thread.join()


def test_spill_writes_what_the_cap_would_drop(tmp_path: Path) -> None:
    store = EventStore(DT, 8)
    store.spill_to(tmp_path / "s.parquet", lambda r: pd.DataFrame({"seq": r["seq"]}))
    for lo in range(0, 40, 5):
        store.append(rows(lo, lo + 5))
    store.close()
    spilled = pd.read_parquet(tmp_path / "s.parquet")["seq"].tolist()
    assert spilled + store.snapshot()["seq"].tolist() == list(range(40))
    assert store.dropped == 0 and store.spilled == len(spilled)


def test_counters_survive_clear_and_resizing() -> None:
    store = EventStore(DT, 10)
    store.append(rows(0, 25))
    store.clear()
    assert (len(store), store.dropped, store.cleared) == (0, 15, 10)
    store.append(rows(25, 33))
    smaller = store.resized(5)
    assert smaller.snapshot()["seq"].tolist() == list(range(28, 33))
    assert (smaller.dropped, smaller.cleared) == (18, 10)


def test_a_store_filled_exactly_writes_no_empty_spill(tmp_path: Path) -> None:
    store = EventStore(DT, 8)
    store.spill_to(tmp_path / "missing" / "s.parquet", lambda r: pd.DataFrame({"seq": r["seq"]}))
    store.append(rows(0, 8))
    store.close()
    assert not (tmp_path / "missing").exists() and store.spilled == 0


def test_a_resized_store_keeps_spilling_into_the_same_file(tmp_path: Path) -> None:
    store = EventStore(DT, 8)
    store.spill_to(tmp_path / "s.parquet", lambda r: pd.DataFrame({"seq": r["seq"]}))
    store.append(rows(0, 20))
    smaller = store.resized(4)
    smaller.append(rows(20, 30))
    store.close()  # no longer holds the file: completing it is the new store's
    smaller.close()
    spilled = pd.read_parquet(tmp_path / "s.parquet")["seq"].tolist()
    assert spilled + smaller.snapshot()["seq"].tolist() == list(range(30))
    assert smaller.spilled == len(spilled) == 26 and smaller.dropped == 0

