"""``%bpf struct NAME[.FIELD...] [--c]``: a kernel type's layout from BTF."""

from __future__ import annotations

import pandas as pd

from ebpf_magic.kernel import btf
from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState

USAGE = "%bpf struct NAME[.FIELD...] [--c]"
HELP = ("Fields of kernel struct NAME (offsets, sizes, C types) from the kernel's BTF; "
        "NAME.FIELD follows a member (through pointers); --c prints the C definition.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("name", metavar="NAME[.FIELD...]")
PARSER.add_argument("--c", action="store_true", dest="definition")


def run(_magics: MagicsState, args: str) -> pd.DataFrame | None:
    opts = PARSER.parse(args)
    if opts.definition:
        print(btf.definition(opts.name))
        return None
    return btf.struct(opts.name)
