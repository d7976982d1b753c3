"""One map gathered from every engine of a cluster into one frame, and attach time on N engines.

Starts a local ipyparallel cluster of 2 engines (this machine's kernel for both), loads a
hash map of 100,000 entries (8-byte key, 16-byte value) on each, and times, best of 5:

* ``prog.maps["m"].df`` (Arrow IPC from every engine at once, joined with host and
  engine columns) against the obvious user code: each engine's ``.df`` returned by
  ``view.apply`` (pickled DataFrames), then ``pd.concat``;
* starting the same cell on both engines against starting it on one.

Run as root: ``.venv/bin/python bench/cluster.py``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
from timing import best

ENTRIES = 100_000
SOURCE = f"""
struct key_t {{ u32 pid; u32 cpu; }};
struct val_t {{ u64 calls; u64 ns; }};
BPF_HASH(m, struct key_t, struct val_t, {ENTRIES});
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{ return 0; }}
"""
# the same with a process name in each value: a str column in the frame
SOURCE_COMM = SOURCE.replace("u64 ns; }", "u64 ns; char comm[16]; }")


def fill(name: str, entries: int) -> int:
    """On an engine: fill map ``m`` of program ``name`` with ``entries`` entries at once."""
    import numpy as np

    from ebpf_magic.cluster import engine
    from ebpf_magic.kernel import sysbpf

    m = engine.program(name).maps["m"]
    keys = np.zeros(entries, m.key_dtype)
    keys["pid"] = np.arange(entries)
    values = np.zeros(entries, m.value_dtype)
    values["calls"] = np.arange(entries)
    if "comm" in values.dtype.names:
        values["comm"] = [f"proc-{i % 977}".encode() for i in range(entries)]
    sysbpf.map_update_batch(m.handle.fd, keys, values, entries)
    return len(m)


def user_df(name: str) -> pd.DataFrame:
    """On an engine: the map's frame, as a user would return it from ``view.apply``."""
    from ebpf_magic.cluster import engine

    return engine.program(name).maps["m"].df


def gather(client, engines, source: str) -> tuple[float, float, float]:
    """Best times of: our gather, the user's, and the engines' own ``.df`` without sending."""
    from ebpf_magic import cluster

    view = client[:]
    prog = cluster.ClusterProgram(source, name="gather", engines=engines)
    try:
        assert view.apply_sync(fill, "gather", ENTRIES) == [ENTRIES, ENTRIES]
        ours = prog.maps["m"].df
        theirs = pd.concat(view.apply_sync(user_df, "gather"), keys=client.ids,
                           names=["engine", None]).reset_index(level=0)
        assert len(ours) == len(theirs) == 2 * ENTRIES
        assert np.array_equal(np.sort(ours["calls"].to_numpy()),
                              np.sort(theirs["calls"].to_numpy()))
        t_ours = best(lambda: prog.maps["m"].df, 9)
        t_theirs = best(lambda: pd.concat(view.apply_sync(user_df, "gather"),
                                          keys=client.ids, names=["engine", None]), 9)
        t_local = best(lambda: view.apply_sync(frame_size, "gather"), 9)
    finally:
        prog.stop()
    return t_ours, t_theirs, t_local


def frame_size(name: str) -> int:
    """On an engine: build the map's frame and send back only its length."""
    from ebpf_magic.cluster import engine

    return len(engine.program(name).maps["m"].df)


def main() -> int:
    import ipyparallel as ipp

    from ebpf_magic import cluster

    with ipp.Cluster(n=2, log_level=40) as client:
        client.wait_for_engines(2, timeout=120)
        engines = cluster.connect(client=client, timeout=120)

        all_s, one_s = [], []
        for _ in range(3):
            began = time.perf_counter()
            cluster.ClusterProgram(SOURCE, name="one", engines=engines, targets=[0]).stop()
            one_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            cluster.ClusterProgram(SOURCE, name="all", engines=engines).stop()
            all_s.append(time.perf_counter() - began)

        gathered = {label: gather(client, engines, source)
                    for label, source in (("numbers", SOURCE), ("with comm", SOURCE_COMM))}

    print(f"gather {ENTRIES:,} entries from each of 2 engines into one frame, best of 9:")
    for label, (t_ours, t_theirs, t_local) in gathered.items():
        print(f"  value {label:<10} prog.maps['m'].df {t_ours * 1e3:6.1f} ms; view.apply(.df) + "
              f"pd.concat {t_theirs * 1e3:6.1f} ms ({t_theirs / t_ours:.2f}x ours); engines "
              f"building .df alone {t_local * 1e3:6.1f} ms")
    print("attach the same cell (BCC compile included), best of 3:")
    print(f"  on 1 engine {min(one_s):.2f} s, on 2 engines {min(all_s):.2f} s "
          f"({min(all_s) / min(one_s):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
