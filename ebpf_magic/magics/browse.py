"""``%bpf browse [NAME]``: a live browser of a program's maps, or of every program's."""

from __future__ import annotations

import shlex
from argparse import ArgumentTypeError

from IPython.core.error import UsageError

from .cell import seconds

# the longest refresh interval the browser's own control offers
MAX_EVERY = 3600.0

USAGE = "%bpf browse [NAME[/MAP]] [--every SECONDS]"
HELP = ("A live table of the maps of program NAME (all session programs without it): "
        "sort, filter, top-N, pause, edit and delete rows; histograms as bar charts.")


def run(magics, args: str):
    from ..widgets import MapBrowser

    words = shlex.split(args)
    interval = 1.0
    if "--every" in words:
        i = words.index("--every")
        if i + 1 == len(words):
            raise UsageError(f"usage: {USAGE}")
        try:
            interval = seconds(words[i + 1], hi=MAX_EVERY)
        except ArgumentTypeError as e:
            raise UsageError(f"%bpf browse: --every {e}") from None
        del words[i:i + 2]
    if len(words) > 1:
        raise UsageError(f"usage: {USAGE}")
    session = magics.session
    target = words[0] if words else ""
    name, _, map_name = target.partition("/")
    if name:
        try:
            prog = session.get(name)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
        browser = MapBrowser(prog, interval=interval)
    else:
        def every_program():
            return {f"{p}/{m}": v for p, prog in session.programs.items() if prog.running
                    for m, v in prog.maps.items()}

        browser = MapBrowser(every_program, interval=interval)
    if map_name:
        browser.chooser.value = map_name if name else target
    return browser
