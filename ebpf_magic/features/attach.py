"""What a backend gives the doctor: whether it can load programs here, and attach probes.

Each backend writes its probes in its own dialect (``backend/NAME/checks.py``); the
registry (:func:`ebpf_magic.backend.checks`) hands them over as :class:`BackendChecks`.
An attach probe is a tiny program of one kind that counts each firing in slot
``slot`` of the suite's counter (an array map of ``len(probes)`` u64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ebpf_magic.features.finding import Finding


@dataclass(frozen=True)
class AttachProbe:
    """One attach kind, tried by loading ``code`` and making it fire.

    ``kind`` names the kind (the report's row); ``spec`` is the attach spec
    (``tracepoint:syscalls:sys_enter_getppid``; placeholders ``{usdt_binary}`` and
    ``{xdp_device}``), "" where the function's own name or section attaches it.
    ``code`` is the C function with ``{hit}`` where it counts (other braces doubled);
    ``decl`` declares what it needs besides the counter (a buffer named ``stream``, whose
    events are read back). ``reported_as`` are other names the backend's errors give
    ``function``. ``risky`` kinds are often missing (kernel config, virtual machines) and
    are tried apart from the others, so their failures cost the others nothing.
    """

    kind: str
    spec: str
    function: str
    code: str
    decl: str = ""
    stream: str = ""
    reported_as: tuple[str, ...] = ()
    risky: bool = False

    def names(self) -> tuple[str, ...]:
        """Every name the backend may give this probe's function in an error."""
        return (self.function, *self.reported_as)


@dataclass(frozen=True)
class ProbeSuite:
    """A backend's attach probes and how to put some of them in one program.

    ``counter`` is the array map's name; ``header`` declares it (``{slots}`` is its size);
    ``hit`` is the statement counting one firing in slot ``{slot}``.
    """

    backend: str
    probes: tuple[AttachProbe, ...]
    counter: str
    header: str
    hit: str

    def slot(self, probe: AttachProbe) -> int:
        """The counter slot of ``probe``."""
        return self.probes.index(probe)

    def source(self, probes: list[AttachProbe]) -> str:
        """One program holding ``probes`` (a subset of :attr:`probes`)."""
        lines = [self.header.format(slots=len(self.probes))]
        lines += [p.decl for p in probes if p.decl]
        lines += [p.code.format(hit=self.hit.format(slot=self.slot(p))) for p in probes]
        return "\n".join(lines) + "\n"


class BackendChecks(Protocol):
    """A backend's own checks: its ``checks`` module."""

    def available(self) -> Finding:
        """Whether the backend can compile and load programs here, and what to do if not."""

    def probes(self) -> ProbeSuite:
        """Its attach probes, in its dialect."""
