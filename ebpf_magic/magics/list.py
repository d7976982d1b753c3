"""``%bpf list``: the session's programs."""

from __future__ import annotations

import pandas as pd

USAGE = "%bpf list"
HELP = "A table of programs: name, probes attached, maps, events so far, uptime."


def run(magics, args: str) -> pd.DataFrame:
    return magics.session.table()
