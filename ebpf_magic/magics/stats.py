"""``%bpf stats [on|off]``: whether the kernel counts BPF run statistics, and the setting."""

from __future__ import annotations

from ebpf_magic.kernel import runstats
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState

USAGE = "%bpf stats [on|off]"
HELP = ("Whether the kernel counts programs' runs and run time (what NAME.overhead, %bpf list "
        "and %bpf top show), and how to enable it. While counted, every BPF program on the "
        "machine pays two clock reads a run (20-100 ns): `off` lets go of this process's "
        "BPF_ENABLE_STATS descriptor and takes none again; `on` takes one where this process "
        "may.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("setting", nargs="?", choices=("on", "off"))


def run(_magics: MagicsState, args: str) -> None:
    opts = PARSER.parse(args)
    if opts.setting == "off":
        runstats.disable()
    elif opts.setting == "on":
        runstats.enable()
    status = runstats.status()
    print(f"BPF run statistics: {'counted' if status.counting else 'not counted'}; "
          f"{status.detail}")
    if status.hint:
        print(status.hint)
