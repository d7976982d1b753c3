"""Kernel I/O: bpf(2), perf events, perf and ring readers, links, BTF, host facts.

The host facts of :mod:`.host` (rights, capabilities, release) are also readable here by
the names they had when this package was one module (``ebpf_magic.kernel.has_bpf_rights``).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    host = importlib.import_module(f"{__name__}.host")
    try:
        return getattr(host, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
