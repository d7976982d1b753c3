"""Errors a user can act on.

Every error raised by ebpf_magic for something the user can fix derives from
:class:`BPFError`. Its ``str()`` is the complete message: what went wrong and
what to do. The IPython magic shows that message alone, without a traceback.
"""

from __future__ import annotations


class BPFError(Exception):
    """Base class: ``message`` says what happened, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the message is the whole story."""
        lines = [f"\x1b[31m{type(self).__name__}\x1b[0m: {self.message}"]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines).splitlines()


class BCCNotFoundError(BPFError):
    """The distribution's BCC Python package cannot be found."""


class NotPrivilegedError(BPFError):
    """The process lacks the rights to load or attach BPF programs."""


class HeadersMissingError(BPFError):
    """No kernel headers BCC could compile against."""


class CompileError(BPFError):
    """The C source did not compile; ``diagnostics`` holds the compiler's lines."""

    def __init__(self, message: str, hint: str = "",
                 diagnostics: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.diagnostics = diagnostics or []


class VerifierError(BPFError):
    """The kernel's verifier rejected a function; ``log`` is the verifier's log."""

    def __init__(self, message: str, hint: str = "", log: str = "",
                 function: str = "") -> None:
        super().__init__(message, hint)
        self.log = log
        self.function = function


class AttachError(BPFError):
    """A probe could not be attached; ``probe`` names it."""

    def __init__(self, message: str, hint: str = "", probe: str = "") -> None:
        super().__init__(message, hint)
        self.probe = probe


class ProbeSpecError(BPFError, ValueError):
    """An attach specification is malformed or ambiguous."""


class ReplayError(BPFError):
    """A recording is malformed, truncated or not a recording."""


class ExportError(BPFError, ValueError):
    """Data that cannot be written in the format asked for; the hint says what it needs."""


class OptionError(BPFError, ValueError):
    """An option's value is malformed or out of range; the hint says what is allowed."""
