"""``%bpf doctor``: what works on this machine, and how to fix what does not."""

from __future__ import annotations

from ebpf_magic.magics.args import parser
from ebpf_magic.setup.doctor import Report
from ebpf_magic.setup.doctor import run as run_doctor

USAGE = "%bpf doctor [--no-attach]"
HELP = ("Check privileges, BCC, kernel headers, BTF and tracefs, and which attach types work "
        "here (loads a tiny program of each kind, then removes everything); --no-attach "
        "skips loading programs.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("--no-attach", action="store_true")


def run(magics, args: str) -> Report:
    return run_doctor(attach=not PARSER.parse(args).no_attach)
