"""Source rewriting done before compilation, for event-stream bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prepared:
    """The text to compile, and the maps the rewrite added (hidden from the user)."""

    text: str
    hidden: set[str] = field(default_factory=set)


def prepare(source: str) -> Prepared:
    """Rewrite ``source`` for compilation."""
    return Prepared(source)
