"""``/proc/kallsyms``: kernel function names and addresses.

Stacks resolve kernel addresses here; probe listings, hints and BCC's kprobe patterns take
function names from here. The file is parsed on first use and kept. The core kernel's
symbols never move; BPF programs' and modules' come and go, so an address that lands among
them is resolved against a reading at most :data:`STALE_AFTER` seconds old (a program
loaded after the reading would otherwise take the name of whatever lay below it).
"""

from __future__ import annotations

import bisect
import re
import threading
import time

PATH = "/proc/kallsyms"
STALE_AFTER = 1.0  # seconds a reading is trusted for BPF programs' and modules' addresses
# text symbols, global or local, including weak ones: "ffffffff81000000 T name [module]"
_FUNCTION = re.compile(r"^([0-9a-fA-F]+) [tTwW] (\S+)(?:\t\[(\S+)\])?", re.M)


class Kallsyms:
    """The text symbols of one reading of a kallsyms file."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path = path or PATH
        self.read_at = time.monotonic()
        with open(path) as f:
            found = _FUNCTION.findall(f.read())
        addrs = [int(a, 16) for a, _, _ in found]
        order = sorted((i for i, a in enumerate(addrs) if a), key=addrs.__getitem__)
        self._addrs = [addrs[i] for i in order]
        self._names = [found[i][1] for i in order]
        self._outside_core = [bool(found[i][2]) for i in order]  # a module's, or [bpf]
        # padding before functions (-fpatchable-function-entry) is named __pfx_FUNC
        self.functions: tuple[str, ...] = tuple(sorted(
            {n for _, n, _ in found if not n.startswith("__pfx_")}))

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

    def moving(self, addr: int) -> bool:
        """Whether ``addr`` lands among symbols that come and go (BPF programs, modules),
        or above every symbol: a later reading may name it differently."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        return i == len(self._addrs) - 1 or (i >= 0 and self._outside_core[i])


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
    """The kernel function containing ``addr`` (see :meth:`Kallsyms.resolve`), read again
    first where ``addr`` lies among BPF programs or modules and the reading is older than
    :data:`STALE_AFTER` seconds."""
    global _loaded
    table = kallsyms()
    if table.has_addresses and table.moving(addr) and \
            time.monotonic() - table.read_at > STALE_AFTER:
        fresh = Kallsyms(table.path)
        with _lock:
            _loaded = table = fresh
    return table.resolve(addr)
