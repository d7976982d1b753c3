"""A check's result, and the words for how it went."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OK, WARN, FAIL, UNAVAILABLE, NOT_CHECKED = "ok", "warn", "fail", "unavailable", "not checked"
STATUSES = (OK, WARN, FAIL, UNAVAILABLE, NOT_CHECKED)


@dataclass
class Finding:
    """What one check found: ``check`` names it, ``status`` is one of :data:`STATUSES`,
    ``detail`` says what was seen and ``fix`` what to do where it is not ok."""

    check: str
    status: str
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        """True where the facility works (``ok``, or ``warn``: works with a caveat)."""
        return self.status in (OK, WARN)


def safely(name: str, check: Callable[[], Finding]) -> Finding:
    """``check()``, or a failed finding named ``name`` saying why it could not run."""
    try:
        return check()
    except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
        return Finding(name, FAIL, f"the check failed: {type(e).__name__}: {e}")
