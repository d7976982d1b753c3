"""Old spellings that keep working for one release, each with a warning that says the new one.

The warning is a FutureWarning: IPython shows those wherever they come from, while it hides
a DeprecationWarning raised inside a library.
"""

from __future__ import annotations

import warnings

REMOVED_IN = "0.2"
"""The release in which the old spellings stop working."""


def renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is written ``new`` now (``stacklevel`` as for :func:`warnings.warn`,
    counted from the caller of this function's caller)."""
    warnings.warn(f"{old} is deprecated and goes in ebpf_magic {REMOVED_IN}: write {new}",
                  FutureWarning, stacklevel=stacklevel)
