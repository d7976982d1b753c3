"""Where ebpf_magic keeps what it builds once and reuses (kernel header trees, vmlinux.h).

Root's cache, :data:`SYSTEM_CACHE`, is readable by every user, so the eBPF kernel (an
unprivileged account) reuses what root built.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_CACHE = Path("/var/cache/ebpf_magic")


def cache_dir() -> Path:
    """Where this process keeps its cache.

    ``$EBPF_MAGIC_CACHE`` when set, else :data:`SYSTEM_CACHE` for root, else the
    user's XDG cache.
    """
    if os.environ.get("EBPF_MAGIC_CACHE"):
        return Path(os.environ["EBPF_MAGIC_CACHE"])
    if os.geteuid() == 0:
        return SYSTEM_CACHE
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                "ebpf_magic")
