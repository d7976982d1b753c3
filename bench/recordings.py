"""What reading a recording costs per byte of file: the densest hostile shapes against real ones.

Every shape below passes the reader's structural rules (stored members, one frame
a member, chunks that do not overlap, pages that hold their values), so it costs
all the work the rules allow; each is the most work per byte of file its kind
allows. Each file is loaded in a fresh interpreter the way a user first looks at
one (tests/hostile.py's child: load, announce, every frame and value column),
measuring CPU seconds and peak memory over the child's baseline:

  (a) real: ``sessions.save`` of a program with a stream of 200,000 events and
      a map with 600 snapshots, the recorder's shape;
  (b) frames: 5,000 one-row Parquet members of 121 bytes, hand-written;
  (c) pages: one column chunk of 16,384 one-value pages (the most a chunk may hold);
  (d) row groups: one member of 20,000 one-row row groups;
  (e) columns: one frame of 10,000 one-row columns;
  (f) manifest: a deflated manifest just under the limits (4 MB, 64 MB estimated).

Printed per shape: file size, CPU and memory, both per byte of file, and the
ratio of its CPU per byte to (a)'s. The manifest's cost is bounded outright, not
per byte (its limits stand whatever the file's size).

Run: ``.venv/bin/python bench/recordings.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ebpf_magic import sessions
from ebpf_magic.data.globalvars import SavedGlobals
from ebpf_magic.sessions.snapshots import Snapshot

from hostile import (
    CAPTURED,
    load_in_child,
    manifest,
    page,
    parquet,
    recording,
    stream,
    zeros_parquet,
    zip_bytes,
)


class _Stream:
    kind = "perf"

    def __init__(self, df: pd.DataFrame) -> None:
        self.df, self.stats = df, {"received": len(df)}


class _Map:
    name, kind, declared = "counts", "hash", ""
    key_type, value_type, max_entries = "u32", "u64", 1024
    key_dtype, value_dtype, value_columns = np.dtype("<u4"), np.dtype("<u8"), ["value"]

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df

    def info(self) -> dict:
        return {"map": self.name, "entries": len(self.df)}

    def __len__(self) -> int:
        return len(self.df)


class _Prog:
    name, source, cflags, pid, probes, attached = "real", "int x;", [], None, [], []
    backend, readable, tables, running, stopped_at = "bcc", True, {}, False, CAPTURED + 600
    started_at = CAPTURED

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        n = 200_000
        self.events = {"ev": _Stream(pd.DataFrame({
            "ts": np.arange(n, dtype=np.uint64) * 1000, "pid": rng.integers(1, 4000, n, np.uint32),
            "comm": pd.Series(rng.choice(["bash", "sshd", "python3", "cc1"], n), dtype=object),
            "bytes": rng.integers(0, 1 << 16, n, np.uint64)}))}
        self.keys = np.arange(64, dtype=np.uint32)
        self.maps = {"counts": _Map(self._snapshot(0))}
        self.globals = SavedGlobals()

    def _snapshot(self, i: int) -> pd.DataFrame:
        return pd.DataFrame({"key": self.keys, "value": (self.keys.astype(np.uint64) + 1) * i})

    def snapshots(self) -> list[Snapshot]:
        return [Snapshot(CAPTURED + i, {"counts": self._snapshot(i)}) for i in range(600)]

    def read_maps(self, names=None) -> dict:
        return {"counts": self.maps["counts"].df}

    def host_facts(self, hostname: bool = True) -> dict:
        return sessions.writer.host_facts(hostname, self.backend)


def real(path: Path) -> None:
    prog = _Prog()
    sessions.save(prog, path, snapshots=prog.snapshots())


def frames(path: Path) -> None:
    member = zeros_parquet(1, 1)
    snaps = [{"time": CAPTURED + j, "file": f"maps/0/{j}.parquet", "rows": 1,
              "columns": [["x", "int64"]], "index": []} for j in range(5000)]
    m = {"name": "m", "kind": "hash", "declared": "", "key_type": "u32", "value_type": "u64",
         "max_entries": 1, "key_dtype": None, "value_dtype": None, "info": {},
         "snapshots": snaps}
    path.write_bytes(recording(manifest(maps=[m]),
                               {f"maps/0/{j}.parquet": member for j in range(5000)}))


def pages(path: Path) -> None:
    n = 16_384
    body = page(0, (0).to_bytes(8, "little"), 1, encoding=0) * n
    member = parquet(body, [{"name": "x", "type": 2, "chunks": [
        {"start": 4, "size": len(body), "values": n}]}], n, [[0]])
    path.write_bytes(recording(manifest([stream("streams/0.parquet", n, [["x", "int64"]])]),
                               {"streams/0.parquet": member}))


def row_groups(path: Path) -> None:
    n = 20_000
    one = page(0, (0).to_bytes(8, "little"), 1, encoding=0)
    member = parquet(one * n, [{"name": "x", "type": 2, "chunks": [
        {"start": 4 + i * len(one), "size": len(one), "values": 1} for i in range(n)]}], n,
        [[i] for i in range(n)])
    path.write_bytes(recording(manifest([stream("streams/0.parquet", n, [["x", "int64"]])]),
                               {"streams/0.parquet": member}))


def columns(path: Path) -> None:
    n = 10_000
    one = page(0, (0).to_bytes(8, "little"), 1, encoding=0)
    cols = [{"name": f"c{i}", "type": 2, "chunks": [
        {"start": 4 + i * len(one), "size": len(one), "values": 1}]} for i in range(n)]
    member = parquet(one * n, cols, 1, [[0] * n])
    path.write_bytes(recording(manifest([stream("streams/0.parquet", 1,
                                                [[f"c{i}", "int64"] for i in range(n)])]),
                               {"streams/0.parquet": member}))


def big_manifest(path: Path) -> None:
    m = manifest([stream("streams/0.parquet", 1, [["x", "int64"]])])
    head = json.dumps(m)[:-1] + ', "pad": ['
    # [[],[],...]: an empty list per 3 bytes (estimated at two values), just under the limit
    count = ((60 << 20) // (2 * 72 + 3 * 4))
    text = head + "[]," * (count - 1) + "[]]}"
    path.write_bytes(zip_bytes([("manifest.json", text.encode(), zipfile.ZIP_DEFLATED),
                                ("streams/0.parquet", zeros_parquet(1, 1),
                                 zipfile.ZIP_STORED)]))


SHAPES = {"a real": real, "b frames": frames, "c pages": pages, "d row groups": row_groups,
          "e columns": columns, "f manifest": big_manifest}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in SHAPES.items():
            path = Path(tmp) / f"{name.split()[1]}.bpfrec"
            make(path)
            size = path.stat().st_size
            results = [load_in_child(path) for _ in range(3)]
            best = min(results, key=lambda r: r["cpu"])
            rows.append((name, size, best))
    base = rows[0][2]["cpu"] / rows[0][1]
    print(f"{'shape':14s} {'bytes':>10s} {'error':>6s} {'cpu_s':>6s} {'mem_MB':>7s} "
          f"{'us/byte':>8s} {'mem/byte':>9s} {'cpu ratio':>9s}")
    for name, size, r in rows:
        print(f"{name:14s} {size:10,d} {'yes' if r['error'] else 'no':>6s} {r['cpu']:6.2f} "
              f"{r['memory'] / (1 << 20):7.1f} {r['cpu'] / size * 1e6:8.2f} "
              f"{r['memory'] / size:9.1f} {r['cpu'] / size / base:9.1f}")
        if r["error"]:
            print(f"{'':14s} {r['error'][:110]}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
