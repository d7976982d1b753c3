"""Map snapshot speed: BCC's items() and items_lookup_batch() loops vs Map.df.

A hash map with an 8-byte struct key and a 16-byte struct value is filled
from Python with BPF_MAP_UPDATE_BATCH to 100 k and 1 M entries; each method
turns it into a DataFrame, in the same run. Also times a browser refresh of
a 10 k-entry map (snapshot, filter/sort/top-N, widget update).

Run as root: ``.venv/bin/python bench/maps.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.kernel import sysbpf
from ebpf_magic.present.widgets import MapBrowser
from ebpf_magic.program import Program

SIZES = (100_000, 1_000_000)
SRC = r"""
struct key_t { u32 pid; u32 cpu; };
struct val_t { u64 count; u64 total_ns; };
BPF_HASH(big, struct key_t, struct val_t, 1048576);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }
"""
# per-process counts keyed by command name, as BCC's tools keep them: 200 distinct names
COMM_SRC = r"""
struct key_t { u32 pid; char comm[16]; };
BPF_HASH(bycomm, struct key_t, u64, 1048576);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }
"""
COMMS = 200


def fill(fd: int, n: int) -> None:
    keys = np.zeros(n, dtype=[("pid", "<u4"), ("cpu", "<u4")])
    keys["pid"] = np.arange(n)
    keys["cpu"] = np.arange(n) % 64
    values = np.zeros(n, dtype=[("count", "<u8"), ("total_ns", "<u8")])
    values["count"] = np.arange(n)
    values["total_ns"] = np.arange(n) * 1000
    done = sysbpf.map_update_batch(fd, keys, values, n)
    assert done == n, done


def fill_comm(fd: int, n: int) -> None:
    keys = np.zeros(n, dtype=[("pid", "<u4"), ("comm", "S16")])
    keys["pid"] = np.arange(n)
    keys["comm"] = np.array([f"worker-{i}".encode() for i in range(COMMS)])[np.arange(n) % COMMS]
    done = sysbpf.map_update_batch(fd, keys, np.arange(n, dtype=np.uint64), n)
    assert done == n, done


def comm_rows(bcc, n: int) -> None:
    """A char[16] key field: BCC's batch loop against Map.df, which decodes names once each."""
    baseline = bcc.BPF(text=COMM_SRC.encode())
    table = baseline[b"bycomm"]
    with Program(COMM_SRC, name="bench_comm") as prog:
        m = prog.maps["bycomm"]
        for fd in (table.map_fd, m.handle.fd):
            fill_comm(fd, n)
        t_batch, df1 = timed(lambda: pd.DataFrame(
            [(k.pid, k.comm.decode(), v) for k, v in table.items_lookup_batch()],
            columns=["pid", "comm", "value"]))
        t_df, df2 = min((timed(lambda: m.df) for _ in range(3)), key=lambda r: r[0])
        assert len(df1) == len(df2) == n and set(df2["comm"]) == set(df1["comm"])
        print(f"{n:>9} entries with char comm[16] ({COMMS} names): BCC batch {t_batch:.3f}s, "
              f"Map.df {t_df:.3f}s, {t_batch / t_df:.1f}x")
    baseline.cleanup()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bcc_items(table) -> pd.DataFrame:
    return pd.DataFrame([(k.pid, k.cpu, v.count, v.total_ns) for k, v in table.items()],
                        columns=["pid", "cpu", "count", "total_ns"])


def bcc_batch(table) -> pd.DataFrame:
    return pd.DataFrame([(k.pid, k.cpu, v.count, v.total_ns)
                         for k, v in table.items_lookup_batch()],
                        columns=["pid", "cpu", "count", "total_ns"])


def main() -> None:
    bcc = import_bcc()
    headers.ensure()  # BCC_KERNEL_SOURCE for BCC's own compile
    baseline = bcc.BPF(text=SRC.encode())
    table = baseline[b"big"]
    with Program(SRC, name="bench") as prog:
        m = prog.maps["big"]
        print(f"{'entries':>9} {'BCC items()':>12} {'BCC batch':>10} {'Map.df':>8} "
              f"{'vs items':>9} {'vs batch':>9}")
        for n in SIZES:
            for fd in (table.map_fd, m.handle.fd):
                fill(fd, n)
            t_items, df1 = timed(lambda: bcc_items(table))
            t_batch, df2 = timed(lambda: bcc_batch(table))
            t_df, df3 = min((timed(lambda: m.df) for _ in range(3)), key=lambda r: r[0])
            assert len(df1) == len(df2) == len(df3) == n, (len(df1), len(df2), len(df3))
            assert int(df3["count"].sum()) == int(df2["count"].sum())
            print(f"{n:>9} {t_items:>11.3f}s {t_batch:>9.3f}s {t_df:>7.3f}s "
                  f"{t_items / t_df:>8.1f}x {t_batch / t_df:>8.1f}x")
            m.clear()
            table.items_delete_batch()  # BCC's clear() deletes key by key
        fill(m.handle.fd, 10_000)
        browser = MapBrowser(prog, interval=3600, top_n=100, start=False)
        browser.model.sort("count")
        times = []
        for _ in range(20):
            start = time.perf_counter()
            browser.model.refresh()  # snapshot + view, then the widgets via on_update
            times.append(time.perf_counter() - start)
        browser.close()
        print(f"browser refresh, 10k entries (snapshot + sort + top-100 table update): "
              f"median {np.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    baseline.cleanup()
    comm_rows(bcc, SIZES[0])


if __name__ == "__main__":
    main()
