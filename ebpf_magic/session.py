"""Named programs of one interactive session (what ``%bpf list`` shows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from ebpf_magic.api import PROGRAM, Named, ProgramView
from ebpf_magic.data import overhead
from ebpf_magic.internal.tables import Listing
from ebpf_magic.program import running, stop_all

COLUMNS = ["name", "probes", "maps", "events", "uptime_s", "state", *overhead.TOTALS]


class Session:
    """Programs by name, live or replayed. Starting a name that exists stops the old one first."""

    def __init__(self) -> None:
        self.programs: dict[str, ProgramView] = {}

    def start(self, name: str, factory: Callable[[], ProgramView]) -> ProgramView:
        """Stop any program called ``name``, then start and keep ``factory()``'s."""
        self.stop(name)
        prog = factory()
        self.programs[name] = prog
        return prog

    def get(self, name: str) -> ProgramView:
        return Named(self.programs, PROGRAM)[name]

    def stop(self, name: str) -> bool:
        """Stop and forget ``name``; False when there was none."""
        prog = self.programs.pop(name, None)
        if prog is None:
            return False
        prog.stop()
        return True

    def stop_all(self) -> list[str]:
        """Stop and forget the session's programs; returns their names."""
        names = list(self.programs)
        for name in names:
            self.stop(name)
        return names

    def stop_everything(self) -> list[str]:
        """Stop the session's programs, then every other program running in this process.

        Returns the names of those stopped, the session's first.
        """
        return self.stop_all() + [p.name for p in stop_all()]

    def others(self) -> list[ProgramView]:
        """Programs running in this process that no session name holds (started from Python)."""
        named = {id(p) for p in self.programs.values()}
        return [p for p in running() if id(p) not in named]

    def table(self) -> pd.DataFrame:
        """One row per program: the session's by name (running, stopped or replayed), then
        any other running in this process. Columns: name, probes, maps, events so far,
        uptime, state, and what it costs (runs per second, ns per run, percent of a CPU:
        NaN where not measured, and then ``attrs["overhead"]`` says why and how to measure)."""
        rows, why = [], []
        for prog in [*self.programs.values(), *self.others()]:
            row: dict[str, Any] = prog.summary()
            cost = prog.overhead
            row.update(overhead.totals(cost))
            if overhead.why(cost):
                why.append(overhead.why(cost))
            rows.append(row)
        df = Listing(rows, columns=COLUMNS,
                     empty_text="no programs: a %%bpf NAME cell starts one (see %bpf help)")
        if why:
            df.attrs["overhead"] = why[0]
        return df
