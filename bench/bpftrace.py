"""bpftrace cells: time to attached, and a 100 k-key map into a DataFrame, against bpftrace alone.

1. Attaching. ``%%bpftrace`` (a cell run in an IPython shell, from Shift-Enter to the cell's
   return: both bpftrace processes, the typed tree, the map descriptors, the streams) against
   the bpftrace command line alone on the same one-liner, timed to its "Attaching N probes"
   line and to its notice that every probe is attached. Median of several runs each.
2. Reading a map. A ``@[offset, comm] = count()`` map holding 100,000 keys (filled by
   100,000 ``lseek()`` calls of distinct offsets): ``NAME.maps["@"].df`` against bpftrace
   printing it (SIGUSR1 makes bpftrace print every map, as JSON here: timed until the line
   has arrived) and against that print turned into the same frame (``json`` and a split of
   each joined key). Best of several runs each.

Run as root: ``.venv/bin/python bench/bpftrace.py``. Ratios are ours over bpftrace's.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import signal
import statistics
import subprocess
import time

import numpy as np
import pandas as pd
from IPython.core.interactiveshell import InteractiveShell

from ebpf_magic.bpftrace import BpftraceProgram, process

MAGIC_FD = 987_654
ONE_LINER = f"tracepoint:syscalls:sys_enter_lseek /args->fd == {MAGIC_FD}/ {{ @[comm] = count(); }}"
BIG = (f"tracepoint:syscalls:sys_enter_lseek /args->fd == {MAGIC_FD}/ "
       "{ @[args->offset, comm] = count(); }")
KEYS = 100_000
RUNS = 7


def cli_attach() -> tuple[float, float]:
    """Seconds from starting the bpftrace command to "Attaching N probes", and to attached."""
    start = time.perf_counter()
    proc = subprocess.Popen([process.binary(), "-e", ONE_LINER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, process.ATTACHED: "1"})
    line = proc.stdout.readline()
    attaching = time.perf_counter() - start
    assert line.startswith("Attaching"), line
    while process.ATTACHED not in proc.stderr.readline():
        pass
    attached = time.perf_counter() - start
    process.stop(proc)
    return attaching, attached


def cell_attach(shell: InteractiveShell) -> float:
    """Seconds a ``%%bpftrace`` cell takes to return, attached."""
    start = time.perf_counter()
    shell.run_cell_magic("bpftrace", "bench -q", ONE_LINER)
    took = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()):
        shell.run_line_magic("bpf", "stop bench")
    return took


def fill(n: int) -> None:
    libc = ctypes.CDLL(None)
    lseek = libc.lseek
    fd = ctypes.c_int(MAGIC_FD)
    for offset in range(n):
        lseek(fd, ctypes.c_long(offset), 0)


def cli_print(proc: subprocess.Popen) -> float:
    """Seconds from SIGUSR1 to bpftrace's JSON line of the map having arrived."""
    start = time.perf_counter()
    proc.send_signal(signal.SIGUSR1)
    line = proc.stdout.readline()
    took = time.perf_counter() - start
    assert '"@"' in line, line[:200]
    cli_print.last = line
    return took


def json_frame(line: str) -> pd.DataFrame:
    """bpftrace's JSON print of ``@[offset, comm]`` as a frame, as a user would make it."""
    data = json.loads(line)["data"]["@"]
    keys = pd.Series(list(data.keys()))
    parts = keys.str.split(",", n=1, expand=True)
    return pd.DataFrame({"offset": parts[0].astype(np.int64), "comm": parts[1],
                         "count": np.fromiter(data.values(), np.int64, len(data))})


def main() -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ebpf_magic")
    cell_attach(shell)  # first start: imports, the shim, page cache
    cli, cells = [], []
    for _ in range(RUNS):
        cli.append(cli_attach())
        cells.append(cell_attach(shell))
    attaching = statistics.median(a for a, _ in cli)
    attached = statistics.median(b for _, b in cli)
    cell = statistics.median(cells)
    print(f"attach, median of {RUNS}: %%bpftrace cell {cell * 1000:.0f} ms; bpftrace alone "
          f"{attaching * 1000:.0f} ms to 'Attaching', {attached * 1000:.0f} ms to attached; "
          f"ratios {cell / attaching:.2f}x, {cell / attached:.2f}x")

    settings = {"BPFTRACE_MAP_KEYS_MAX": str(2 * KEYS)}
    env = {**os.environ, process.ATTACHED: "1", **settings}
    cli_proc = subprocess.Popen([process.binary(), "-f", "json", "-B", "line", "-e", BIG],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
    while process.ATTACHED not in cli_proc.stderr.readline():
        pass
    cli_proc.stdout.readline()  # attached_probes
    with BpftraceProgram(BIG, name="big", env=settings) as prog:
        fill(KEYS)
        ours, theirs, theirs_df = [], [], []
        for _ in range(RUNS):
            start = time.perf_counter()
            df = prog.maps["@"].df
            ours.append(time.perf_counter() - start)
            theirs.append(cli_print(cli_proc))
            start = time.perf_counter()
            frame = json_frame(cli_print.last)
            theirs_df.append(theirs[-1] + time.perf_counter() - start)
        assert len(df) == KEYS and len(frame) == KEYS, (len(df), len(frame))
        assert int(df["count"].sum()) == KEYS
    process.stop(cli_proc)
    best, best_print, best_frame = min(ours), min(theirs), min(theirs_df)
    print(f"{KEYS:,}-key map, best of {RUNS}: .df {best * 1000:.0f} ms; bpftrace's print "
          f"{best_print * 1000:.0f} ms ({best / best_print:.2f}x), its print as a frame "
          f"{best_frame * 1000:.0f} ms ({best / best_frame:.2f}x)")
    shell.run_line_magic("unload_ext", "ebpf_magic")


if __name__ == "__main__":
    main()
