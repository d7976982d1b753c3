"""``%bpf doctor``: what works on this machine, and how to fix what does not."""

from __future__ import annotations

from IPython.core.error import UsageError

from ..doctor import Report
from ..doctor import run as run_doctor

USAGE = "%bpf doctor [--no-attach]"
HELP = ("Check privileges, BCC, kernel headers, BTF and tracefs, and which attach types work "
        "here (loads a tiny program of each kind, then removes everything); --no-attach "
        "skips loading programs.")


def run(magics, args: str) -> Report:
    words = args.split()
    if any(w != "--no-attach" for w in words):
        raise UsageError(f"usage: {USAGE}")
    return run_doctor(attach=not words)
