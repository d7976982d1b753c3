"""What reading one recording may still cost, charged before each cost is paid."""

from __future__ import annotations

from dataclasses import dataclass

from ebpf_magic.errors import ReplayError

MORE = "Pass max_bytes= to load() for larger recordings you trust."


@dataclass
class Budget:
    """Bytes the members may still unpack to, and bytes the frames may still decode to."""

    unpacked: int
    decoded: int

    def decode(self, cost: int, where: str, what: str) -> None:
        """Charge ``cost`` decoded bytes for ``what`` (``"it decodes to"``, say) of ``where``;
        a :class:`~ebpf_magic.errors.ReplayError` once the total is over the limit."""
        if cost > self.decoded:
            raise ReplayError(f"{where}: {what} {cost:,} bytes, over the limit of "
                              f"{self.decoded:,} bytes", MORE)
        self.decoded -= cost


def too_big(where: str, what: str, size: int, limit: int) -> ReplayError:
    """The error for ``what`` of ``where`` coming to ``size`` bytes, over ``limit``."""
    return ReplayError(f"{where}: {what} {size:,} bytes, over the limit of {limit:,} bytes",
                       MORE)
