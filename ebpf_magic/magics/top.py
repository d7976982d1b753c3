"""``%bpf top``: a live table of BPF programs by their share of a CPU (the notebook's bpftop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState, seconds

if TYPE_CHECKING:
    from ebpf_magic.present.top import Top

MAX_EVERY = 3600.0

USAGE = "%bpf top [--every SECONDS] [--mine]"
HELP = ("A live table of BPF programs sorted by their share of a CPU, busiest first, with "
        "runs/s, ns per run and a sparkline of each one's recent share: every program on "
        "the machine where this process may list them (CAP_SYS_ADMIN), else, and with "
        "--mine, this process's and its children's. Stop it with its Stop button or "
        ".stop(); running the cell again replaces it.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("--every", type=lambda text: seconds(text, hi=MAX_EVERY),
                    default=1.0, metavar="SECONDS")
PARSER.add_argument("--mine", action="store_true")


def _cell_id(magics: MagicsState) -> str | None:
    """The notebook cell running now, where the front end says (JupyterLab, Notebook 7)."""
    kernel = getattr(magics.shell, "kernel", None)
    if kernel is None:
        return None
    try:
        return kernel.get_parent().get("metadata", {}).get("cellId")
    except (AttributeError, TypeError):
        return None


def run(magics: MagicsState, args: str) -> Top:
    from ebpf_magic.present.top import Top

    opts = PARSER.parse(args)
    cell = _cell_id(magics)
    # One top per cell: running the cell again stops the one it showed before (every
    # earlier one where the front end does not name cells).
    for entry in [e for e in magics.tops if cell is None or e[0] == cell]:
        entry[1].stop()
        magics.tops.remove(entry)
    top = Top("process" if opts.mine else "machine", interval=opts.every)
    magics.tops.append((cell, top))
    return top
