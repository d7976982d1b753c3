"""A stream's counters: every event received is held or counted as not held."""

from __future__ import annotations

import numbers
from typing import Any

import pandas as pd


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, numbers.Integral) else str(value)


class Stats(dict):
    """A stream's counters by name, shown as a small table: label, count, what it means."""

    #: each counter's label and meaning, in the order shown
    LABELS = {
        "received": ("received", "events read from the kernel's buffer"),
        "held": ("in the frame", "events in .df now"),
        "lost_kernel": ("lost in kernel", "never reached the buffer: it was full"),
        "dropped_cap": ("dropped by the cap", "oldest events beyond max_rows, forgotten"),
        "spilled": ("spilled to disk", "written to the spill file instead of memory"),
        "discarded_paused": ("discarded while paused", "arrived while the stream was paused"),
        "cleared": ("cleared", "forgotten by clear()"),
        "lost_reader": ("lost after a failure", "taken after the stream failed; see .failure"),
        "failed": ("failed", "1 if the stream stopped delivering events"),
    }

    @property
    def df(self) -> pd.DataFrame:
        """One row per counter: its label, count and meaning."""
        rows = [(label, self[key], meaning) for key, (label, meaning) in self.LABELS.items()
                if key in self]
        lost = self.get("lost_per_cpu")
        if lost:
            rows.append(("lost in kernel by CPU",
                         ", ".join(f"CPU {c}: {n:,}" for c, n in sorted(lost.items())),
                         "where the kernel's losses happened"))
        return pd.DataFrame(rows, columns=["counter", "count", "meaning"]).set_index("counter")

    def __repr__(self) -> str:
        df = self.df
        width = max(len(label) for label in df.index)
        counts = [_count(c) for c in df["count"]]
        digits = max(len(c) for c in counts)
        return "\n".join(f"{label:<{width}}  {c:>{digits}}  {meaning}"
                         for label, c, meaning in zip(df.index, counts, df["meaning"],
                                                      strict=True))

    def _repr_html_(self) -> str:
        return self.df.to_html(formatters={"count": _count})
