"""Attach/detach benchmark: many tracepoints through ebpf_magic.kernel.link against BCC, in one run.

One BCC-compiled tracepoint program counting this process's syscalls is attached
to N tracepoints (default: every ``syscalls:sys_enter_*``) and detached again:

  (a) ebpf_magic.kernel.link: ``tracepoint()`` per event, then ``close_all()``; "detach"
      is the time until every program has stopped running (checked: the count
      stands still after it), "released" until every fd is closed as well
      (``wait_released()``, done in the background)
  (b) BCC: ``attach_tracepoint(tp_re=...)`` for the same events, then ``cleanup()``
  (c) for the reason: ``Link.close()`` one at a time on the first few events,
      the per-event cost of the kernel's grace periods

Run as root: ``.venv/bin/python bench/detach.py [--n 360]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from ebpf_magic.backend.bcc import headers
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.kernel import link

SOURCE = """
BPF_ARRAY(calls, u64, 1);
int on_enter(void *ctx) {
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    calls.atomic_increment(0);
    return 0;
}
"""


def _calls(bpf) -> int:
    return bpf["calls"][0].value


def _compile(bcc):
    return bcc.BPF(text=SOURCE.replace("PID", str(os.getpid())).encode())


def _check_fires(bpf, what: str) -> None:
    before = _calls(bpf)
    for _ in range(100):
        os.getppid()
    if _calls(bpf) - before < 100:
        sys.exit(f"{what}: the program did not run on getppid()")


def _check_stopped(bpf, what: str) -> None:
    before = _calls(bpf)
    for _ in range(100):
        os.getppid()
    if _calls(bpf) != before:
        sys.exit(f"{what}: the program still runs after detaching")


def run_link(bcc, names: list[tuple[str, str]]) -> dict:
    bpf = _compile(bcc)
    fd = bpf.load_func(b"on_enter", bcc.BPF.TRACEPOINT).fd
    t0 = time.perf_counter()
    links = [link.tracepoint(fd, cat, name) for cat, name in names]
    attach = time.perf_counter() - t0
    _check_fires(bpf, "ebpf_magic.kernel.link")
    t0 = time.perf_counter()
    link.close_all(links)
    detach = time.perf_counter() - t0
    _check_stopped(bpf, "ebpf_magic.kernel.link")
    link.wait_released()
    released = time.perf_counter() - t0
    bpf.cleanup()
    return {"attach_s": attach, "detach_s": detach, "released_s": released}


def run_bcc(bcc, names: list[tuple[str, str]]) -> dict:
    bpf = _compile(bcc)
    pattern = "^(" + "|".join(re.escape(f"{c}:{n}") for c, n in names) + ")$"
    t0 = time.perf_counter()
    bpf.attach_tracepoint(tp_re=pattern.encode(), fn_name=b"on_enter")
    attach = time.perf_counter() - t0
    if len(bpf.tracepoint_fds) != len(names):
        sys.exit(f"BCC attached {len(bpf.tracepoint_fds)} tracepoints, not {len(names)}")
    _check_fires(bpf, "BCC")
    t0 = time.perf_counter()
    bpf.cleanup()
    detach = time.perf_counter() - t0
    return {"attach_s": attach, "detach_s": detach, "released_s": detach}


def run_one_by_one(bcc, names: list[tuple[str, str]]) -> dict:
    bpf = _compile(bcc)
    fd = bpf.load_func(b"on_enter", bcc.BPF.TRACEPOINT).fd
    links = [link.tracepoint(fd, cat, name) for cat, name in names]
    costs = []
    for lk in links:
        t0 = time.perf_counter()
        lk.close()
        costs.append(time.perf_counter() - t0)
    bpf.cleanup()
    costs.sort()
    return {"median_ms": 1e3 * costs[len(costs) // 2], "max_ms": 1e3 * costs[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="tracepoints (default: all sys_enter_*)")
    ap.add_argument("--one-by-one", type=int, default=10,
                    help="tracepoints closed one at a time for (c)")
    args = ap.parse_args(argv)
    headers.ensure()  # BCC_KERNEL_SOURCE for BCC's compile
    bcc = import_bcc()
    names = link.tracepoints("syscalls:sys_enter_*")
    names = names[:args.n] if args.n else names
    n = len(names)
    ours = run_link(bcc, names)
    theirs = run_bcc(bcc, names)
    print(f"{n} tracepoints (syscalls:sys_enter_*)")
    print(f"{'':28}{'attach s':>10}{'detach s':>10}{'released s':>12}")
    for label, r in (("(a) ebpf_magic.kernel.link", ours), ("(b) BCC", theirs)):
        print(f"{label:28}{r['attach_s']:>10.3f}{r['detach_s']:>10.3f}{r['released_s']:>12.3f}")
    per100 = 100 * ours["detach_s"] / n
    print(f"\nattach: BCC / link = {theirs['attach_s'] / ours['attach_s']:.1f}x")
    print(f"detach (programs stopped): BCC / link = {theirs['detach_s'] / ours['detach_s']:.1f}x,"
          f" {per100:.3f} s per 100 tracepoints")
    print(f"released (every fd closed): BCC / link = "
          f"{theirs['released_s'] / ours['released_s']:.1f}x")
    if args.one_by_one:
        c = run_one_by_one(bcc, names[:args.one_by_one])
        print(f"(c) Link.close() one at a time, {args.one_by_one} tracepoints: median "
              f"{c['median_ms']:.0f} ms, max {c['max_ms']:.0f} ms per tracepoint")
    met = per100 < 0.5
    print(f"\n{'MET ' if met else 'MISS'} detach < 0.5 s per 100 tracepoints")
    return 0 if met else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: attaching tracepoints needs BPF rights")
    sys.exit(main())
