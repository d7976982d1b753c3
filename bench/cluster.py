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
    sysbpf.map_update_batch(m.handle.fd, keys, values, entries)
    return len(m)


def user_df(name: str) -> pd.DataFrame:
    """On an engine: the map's frame, as a user would return it from ``view.apply``."""
    from ebpf_magic.cluster import engine

    return engine.program(name).maps["m"].df


def main() -> int:
    import ipyparallel as ipp

    from ebpf_magic import cluster

    with ipp.Cluster(n=2, log_level=40) as client:
        client.wait_for_engines(2, timeout=120)
        engines = cluster.connect(client=client, timeout=120)
        view = client[:]

        all_s, one_s = [], []
        for _ in range(3):
            began = time.perf_counter()
            cluster.ClusterProgram(SOURCE, name="one", engines=engines, targets=[0]).stop()
            one_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            cluster.ClusterProgram(SOURCE, name="all", engines=engines).stop()
            all_s.append(time.perf_counter() - began)

        prog = cluster.ClusterProgram(SOURCE, name="gather", engines=engines)
        try:
            assert view.apply_sync(fill, "gather", ENTRIES) == [ENTRIES, ENTRIES]
            ours = prog.maps["m"].df
            theirs = pd.concat(view.apply_sync(user_df, "gather"), keys=client.ids,
                               names=["engine", None]).reset_index(level=0)
            assert len(ours) == len(theirs) == 2 * ENTRIES
            assert np.array_equal(np.sort(ours["calls"].to_numpy()),
                                  np.sort(theirs["calls"].to_numpy()))
            t_ours = best(lambda: prog.maps["m"].df)
            t_theirs = best(lambda: pd.concat(view.apply_sync(user_df, "gather"),
                                              keys=client.ids, names=["engine", None]))
            t_local = best(lambda: view.apply_sync(lambda: len(
                __import__("ebpf_magic.cluster.engine").cluster.engine
                .program("gather").maps["m"].df)))
        finally:
            prog.stop()

    print(f"gather {ENTRIES:,} entries from each of 2 engines into one frame:")
    print(f"  prog.maps['m'].df (Arrow IPC, in parallel)     {t_ours * 1e3:8.1f} ms")
    print(f"  view.apply(.df) + pd.concat (pickled frames)  {t_theirs * 1e3:8.1f} ms  "
          f"({t_theirs / t_ours:.2f}x ours)")
    print(f"  engines building .df alone, nothing sent back {t_local * 1e3:8.1f} ms")
    print("attach the same cell (BCC compile included), best of 3:")
    print(f"  on 1 engine {min(one_s):.2f} s, on 2 engines {min(all_s):.2f} s "
          f"({min(all_s) / min(one_s):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
