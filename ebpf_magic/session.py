"""Named programs of one interactive session (what ``%bpf list`` shows)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from ebpf_magic.program import Program


class Session:
    """Programs by name. Starting a name that exists stops the old program first."""

    def __init__(self) -> None:
        self.programs: dict[str, Program] = {}

    def start(self, name: str, factory: Callable[[], Program]) -> Program:
        """Stop any program called ``name``, then start and keep ``factory()``'s."""
        self.stop(name)
        prog = factory()
        self.programs[name] = prog
        return prog

    def get(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            known = ", ".join(self.programs) or "none"
            raise KeyError(f"no program named {name!r} (programs: {known})") from None

    def stop(self, name: str) -> bool:
        """Stop and forget ``name``; False when there was none."""
        prog = self.programs.pop(name, None)
        if prog is None:
            return False
        prog.stop()
        return True

    def stop_all(self) -> list[str]:
        names = list(self.programs)
        for name in names:
            self.stop(name)
        return names

    def table(self) -> pd.DataFrame:
        """One row per program: name, probes, maps, events so far, uptime, state."""
        return pd.DataFrame([p.summary() for p in self.programs.values()],
                            columns=["name", "probes", "maps", "events", "uptime_s", "state"])
