"""Time of whole probe listings, against reading their sources in the same run.

In the same run, best of ``REPEAT``:

* the baseline: reading ``available_events`` and ``/proc/kallsyms`` (or ftrace's
  ``available_filter_functions``) into memory, what any listing must do;
* ``find("tracepoint:*")``, ``find("kprobe:*")``, ``find("*")`` (every tracepoint, raw
  tracepoint, kernel function, BTF function, event, profile form and device) warm: the
  sources' parsed names are kept after the first listing, the DataFrame is rebuilt each time;
* the first ``find("*")`` of the process (cold), and ``find()``'s summary.

Target: a full listing warm in under 1 s. Needs read access to tracefs:
``.venv/bin/python bench/probes.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

from timing import best

from ebpf_magic import discover
from ebpf_magic.kernel import tracefs


def main() -> None:
    root = tracefs.root() or Path("/sys/kernel/tracing")
    functions = root / "available_filter_functions"
    try:  # root may still be refused it (the file's mode says readable)
        functions.read_bytes()
    except OSError:
        functions = Path("/proc/kallsyms")

    def read_sources() -> None:
        (root / "available_events").read_bytes()
        functions.read_bytes()

    start = time.perf_counter()
    everything = discover.find("*")
    cold = time.perf_counter() - start
    base = best(read_sources)
    rows = {"tracepoint:*": best(lambda: discover.find("tracepoint:*")),
            "kprobe:*": best(lambda: discover.find("kprobe:*")),
            "* (all kinds)": best(lambda: discover.find("*")),
            "summary": best(discover.summary)}
    print(f"sources: {root / 'available_events'} and {functions}")
    print(f"reading the sources (baseline): {base * 1e3:8.1f} ms")
    print(f"first full listing (cold):      {cold * 1e3:8.1f} ms   {len(everything):,} rows")
    for name, t in rows.items():
        print(f"find({name!r:>16}) warm:      {t * 1e3:8.1f} ms   {t / base:6.1f}x baseline")
    verdict = "meets" if rows["* (all kinds)"] < 1.0 else "MISSES"
    print(f"full listing warm {verdict} the 1 s target")


if __name__ == "__main__":
    main()
