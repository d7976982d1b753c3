"""BCC's diagnostics turned into the package's errors, with the cell's line numbers.

The worker returns BCC's exception text and what libbcc printed; these
functions, run in the notebook's process, decide what the user is told.
"""

from __future__ import annotations

import re

from ... import kernel
from ...errors import BPFError, CompileError, HeadersMissingError, NotPrivilegedError, VerifierError
from . import headers

_DIAG = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|fatal "
                   r"error): (?P<msg>.*)$")


def compile_failure(error: str, log: str, source: str, filename: str,
                    line_offset: int) -> BPFError:
    """The error for a failed compile: BCC's exception text ``error``, libbcc's ``log``."""
    text = error
    if "privilege" in text.lower() or "Operation not permitted" in log:
        if not kernel.has_bpf_rights():
            return NotPrivilegedError("Not allowed to load BPF programs: " +
                                      kernel.rights_summary(), kernel.rights_hint())
    if "Unable to find kernel headers" in log or re.search(
            r"fatal error: '[^']*(linux|asm|kconfig)[^']*' file not found", log):
        return HeadersMissingError("Kernel headers are missing or incomplete for BCC.",
                                   headers.install_hint())
    if "Failed to compile" in text:
        diags = format_diagnostics(log, source, filename, line_offset)
        message = ("The C code did not compile:\n" + "\n".join(diags) if diags
                   else "The C code did not compile (the compiler printed nothing).")
        return CompileError(message, diagnostics=diags)
    if "Failed to load" in text or "bpf: Failed" in log:
        fn = re.search(r"program b?'?(\w+)", text)
        return load_failure(fn.group(1) if fn else "?", text, log)
    return BPFError(f"BCC failed: {text}", log.strip()[-2000:])


def format_diagnostics(log: str, source: str, filename: str, line_offset: int = 0) -> list[str]:
    """Compiler diagnostics with line numbers of the cell and the offending line.

    ``line_offset`` is added to the reported numbers (1 in a notebook, where the
    ``%%bpf`` line is the cell's first).

    BCC inserts generated code (tracepoint structs, USDT arguments) into the
    text it compiles, so the compiler's line numbers are mapped back to the
    cell by finding the quoted source line there.
    """
    cell = source.splitlines()
    lines = log.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        m = _DIAG.match(line)
        if not m or m.group("sev") == "warning":
            continue
        quoted = lines[i + 1] if i + 1 < len(lines) else ""
        number = _cell_line(quoted, int(m.group("line")), cell)
        if number is None:
            continue  # a diagnostic inside BCC's own headers
        out.append(f"{filename}, line {number + line_offset}: {m.group('sev')}: "
                   f"{m.group('msg')}")
        out.append(f"    {cell[number - 1].strip()}")
    if not out:
        errors = [ln for ln in lines if "error" in ln]
        out = errors[:10]
    return out


def _cell_line(quoted: str, reported: int, cell: list[str]) -> int | None:
    if quoted.strip():
        matches = [i + 1 for i, text in enumerate(cell) if text.rstrip() == quoted.rstrip()]
        if matches:
            return min(matches, key=lambda n: abs(n - reported))
        return None
    return reported if 1 <= reported <= len(cell) else None


def load_failure(function: str, error: str, log: str) -> BPFError:
    """The error for ``function`` refused at load: usually the verifier's log tail."""
    if not kernel.has_bpf_rights():
        return NotPrivilegedError("Not allowed to load BPF programs: " + kernel.rights_summary(),
                                  kernel.rights_hint())
    vlog = log.split("bpf: Failed to load program:", 1)[-1].strip()
    reason = error.split(":")[-1].strip()
    tail = [ln for ln in vlog.splitlines() if ln.strip() and not ln.startswith("processed ")]
    decisive = "\n".join("    " + ln for ln in tail[-12:])
    return VerifierError(
        f"The kernel's verifier rejected {function}() ({reason}). The end of its log:\n"
        f"{decisive}",
        "The last lines name the instruction it refused; a common cause is reading memory "
        "without bpf_probe_read*() or a pointer that was not checked against NULL.",
        log=vlog, function=function)
