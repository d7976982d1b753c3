"""Map snapshots over time: what a recorder takes while a program runs and a recording holds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd


@dataclass
class Snapshot:
    """The maps of a program at one moment (``time``: seconds since the epoch)."""

    time: float
    maps: dict[str, pd.DataFrame]


class Snapshots:
    """Snapshots, oldest first, and the frames drawn from them.

    :meth:`frame` gives one map's snapshots as one DataFrame with a leading
    ``time`` column, the shape heatmaps over time are drawn from.
    """

    def __init__(self, snapshots: Iterable[Snapshot] = ()) -> None:
        self.snapshots: list[Snapshot] = list(snapshots)

    def history(self, name: str) -> list[tuple[pd.Timestamp, pd.DataFrame]]:
        """``(time, frame)`` of each snapshot of map ``name``: what heatmaps over time take."""
        return [(pd.Timestamp(s.time, unit="s", tz="UTC"), s.maps[name])
                for s in self.snapshots if name in s.maps]

    def frame(self, name: str) -> pd.DataFrame:
        """Every snapshot of map ``name``, stacked, with a leading ``time`` column."""
        return stack([(s.time, s.maps[name]) for s in self.snapshots if name in s.maps])

    def __iter__(self) -> Iterator[Snapshot]:
        return iter(self.snapshots)

    def __len__(self) -> int:
        return len(self.snapshots)

    def __repr__(self) -> str:
        return f"<Snapshots: {len(self.snapshots)} snapshot(s)>"


def stack(snapshots: Iterable[tuple[float, pd.DataFrame]]) -> pd.DataFrame:
    """Snapshots ``(time, frame)`` as one frame with a ``time`` column (datetime, UTC)."""
    parts = [df.assign(time=pd.Timestamp(t, unit="s", tz="UTC"))
             for t, df in snapshots]
    if not parts:
        return pd.DataFrame({"time": pd.Series([], dtype="datetime64[ns, UTC]")})
    out = pd.concat(parts, ignore_index=True)
    return out[["time"] + [c for c in out.columns if c != "time"]]
