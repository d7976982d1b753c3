"""``%bpf doctor``: what works on this machine, and how to fix what does not."""

from __future__ import annotations

from ebpf_magic.backend import BACKENDS
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState
from ebpf_magic.setup.doctor import Report
from ebpf_magic.setup.doctor import run as run_doctor

USAGE = "%bpf doctor [--no-attach] [--backend NAME]"
HELP = ("Check privileges, the backends' prerequisites (compilers, kernel headers, BTF) and "
        "tracefs, and which attach types work here (loads a tiny program of each kind with "
        "the first backend that can load programs, or --backend NAME, then removes "
        "everything); --no-attach skips loading programs.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("--no-attach", action="store_true")
PARSER.add_argument("--backend", choices=BACKENDS)


def run(_magics: MagicsState, args: str) -> Report:
    options = PARSER.parse(args)
    return run_doctor(attach=not options.no_attach, backend=options.backend)
