"""``/proc/kallsyms``, read once per process: kernel function names and addresses.

Stacks resolve kernel addresses here; probe listings, hints and BCC's kprobe patterns take
function names from here. The file is parsed on first use and kept for the life of the
process (symbols of modules loaded later are not seen).
"""

from __future__ import annotations

import bisect
import re
import threading

PATH = "/proc/kallsyms"
# text symbols, global or local, including weak ones: "ffffffff81000000 T name [module]"
_FUNCTION = re.compile(r"^([0-9a-fA-F]+) [tTwW] (\S+)", re.M)


class Kallsyms:
    """The text symbols of one reading of a kallsyms file."""

    def __init__(self, path: str = PATH) -> None:
        self.path = path
        with open(path) as f:
            found = _FUNCTION.findall(f.read())
        addrs = [int(a, 16) for a, _ in found]
        order = sorted((i for i, a in enumerate(addrs) if a), key=addrs.__getitem__)
        self._addrs = [addrs[i] for i in order]
        self._names = [found[i][1] for i in order]
        # padding before functions (-fpatchable-function-entry) is named __pfx_FUNC
        self.functions: tuple[str, ...] = tuple(sorted(
            {n for _, n in found if not n.startswith("__pfx_")}))

    @property
    def has_addresses(self) -> bool:
        """False where the kernel hides addresses from this process (no CAP_SYSLOG)."""
        return bool(self._addrs)

    def resolve(self, addr: int) -> str:
        """The function containing ``addr``, or its hex form when none does.

        PermissionError where the addresses are hidden (all read as zero).
        """
        if not self._addrs:
            raise PermissionError(f"{self.path} shows no addresses (needs CAP_SYSLOG or root)")
        i = bisect.bisect_right(self._addrs, addr) - 1
        return self._names[i] if i >= 0 else f"0x{addr:x}"


_loaded: Kallsyms | None = None
_lock = threading.Lock()


def kallsyms() -> Kallsyms:
    """The process-wide reading of ``/proc/kallsyms``, made on first use (OSError if unreadable)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = Kallsyms()
        return _loaded


def functions() -> tuple[str, ...]:
    """Every kernel function name, sorted; empty where kallsyms cannot be read."""
    try:
        return kallsyms().functions
    except OSError:
        return ()


def resolve(addr: int) -> str:
    """The kernel function containing ``addr`` (see :meth:`Kallsyms.resolve`)."""
    return kallsyms().resolve(addr)
