"""``%bpf browse [NAME]``: a live browser of a program's maps, or of every running program's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ebpf_magic.magics.args import parser
from ebpf_magic.magics.cell import MagicsState, seconds

if TYPE_CHECKING:
    from ebpf_magic.present.widgets import MapBrowser

# the longest refresh interval the browser's own control offers
MAX_EVERY = 3600.0

USAGE = "%bpf browse [NAME[/MAP]] [--every SECONDS]"
HELP = ("A live table of the maps of program NAME (every running program's without it): "
        "sort, filter, top-N, pause, edit and delete rows; histograms as bar charts.")
PARSER = parser(USAGE, HELP)
PARSER.add_argument("target", nargs="?", default="", metavar="NAME[/MAP]")
PARSER.add_argument("--every", type=lambda text: seconds(text, hi=MAX_EVERY), default=1.0,
                    metavar="SECONDS")


def run(magics: MagicsState, args: str) -> MapBrowser:
    from ebpf_magic.present.widgets import MapBrowser, running_maps

    opts = PARSER.parse(args)
    name, _, map_name = opts.target.partition("/")
    if name:
        try:
            prog = magics.session.get(name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
        browser = MapBrowser(prog, interval=opts.every)
    else:
        browser = MapBrowser(running_maps, interval=opts.every)
    if map_name:
        browser.chooser.value = map_name if name else opts.target
    return browser
