"""BCC's diagnostics turned into the package's errors, with the cell's line numbers.

The worker returns BCC's exception text and what libbcc printed; these
functions, run in the notebook's process, decide what the user is told.
"""

from __future__ import annotations

import difflib
import re

from ebpf_magic import suggest
from ebpf_magic.backend.bcc import headers
from ebpf_magic.errors import (
    BPFError,
    CompileError,
    HeadersMissingError,
    NotPrivilegedError,
    VerifierError,
)
from ebpf_magic.kernel import host as kernel

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
        return CompileError(message, _compile_hint(diags), diagnostics=diags)
    if "Failed to load" in text or "bpf: Failed" in log:
        fn = re.search(r"program b?'?(\w+)", text)
        return load_failure(fn.group(1) if fn else "?", text, log, source, log, line_offset)
    return BPFError(f"BCC failed: {text}", log.strip()[-2000:])


_LEFT_AS_IS = re.compile(r"\{([A-Za-z_]\w*(?:\.\w+)*)\}|\$([A-Za-z_]\w*)")


def _compile_hint(diags: list[str]) -> str:
    """What to do about compile errors with a recognisable cause, else ''."""
    if any("undeclared identifier 'args'" in d for d in diags):
        return ("`args` exists only inside TRACEPOINT_PROBE(category, event) { ... }, which "
                "attaches itself; a function attached with -a tracepoint:CATEGORY:EVENT gets "
                "`void *ctx`: write the function as TRACEPOINT_PROBE(CATEGORY, EVENT), or "
                "read the fields through a pointer to the event's struct trace_event_raw_EVENT.")
    code = [d for d in diags if d.startswith("    ")]
    names = dict.fromkeys(a or b for d in code for a, b in _LEFT_AS_IS.findall(d))
    if names:
        listed = ", ".join(names)
        return (f"Not substituted, as no notebook variable has the name: {listed}. Define the "
                "variable before running the cell, or double the braces ({{name}}, $$name) to "
                "keep the text.")
    return ""


def format_diagnostics(log: str, source: str, filename: str, line_offset: int = 0) -> list[str]:
    """Compiler diagnostics with line numbers of the cell and the offending line.

    ``line_offset`` is added to the reported numbers (1 in a notebook, where the
    ``%%bpf`` line is the cell's first).

    BCC inserts generated code (tracepoint structs, USDT arguments) into the
    text it compiles and rewrites some lines, so the compiler's line numbers are
    mapped back to the cell by finding the quoted source line there, or the most
    similar one. An error inside a header is shown at the cell line that
    included it, with the header's own place.
    """
    cell = source.splitlines()
    lines = log.splitlines()
    out: list[str] = []
    included_at: int | None = None  # the main file's line the current header chain starts at
    for i, line in enumerate(lines):
        inc = _INCLUDED.match(line)
        if inc:
            if _is_main(inc.group("file")):
                included_at = int(inc.group("line"))
            continue
        m = _DIAG.match(line)
        if not m or m.group("sev") == "warning":
            continue
        quoted = lines[i + 1] if i + 1 < len(lines) else ""
        sev, msg, reported = m.group("sev"), m.group("msg"), int(m.group("line"))
        if _is_main(m.group("file")):
            included_at = None
            number = _cell_line(quoted, reported, cell)
            place = ""
        else:
            number = included_at if included_at and 1 <= included_at <= len(cell) else None
            place = f" (in {m.group('file')}:{reported})"
        if number is None:
            out.append(f"{m.group('file')}:{reported}: {sev}: {msg}")
            if quoted.strip():
                out.append(f"    {quoted.strip()}")
            continue
        out.append(f"{filename}, line {number + line_offset}{place}: {sev}: {msg}")
        out.append(f"    {cell[number - 1].strip()}")
    if not out:
        errors = [ln for ln in lines if "error" in ln]
        out = errors[:10]
    return out


_INCLUDED = re.compile(r"^In file included from (?P<file>[^:\s]+):(?P<line>\d+):")


def _is_main(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == "main.c"


def _cell_line(quoted: str, reported: int, cell: list[str]) -> int | None:
    """The cell's line the compiler quoted: the same text, else the most similar, else
    the reported number."""
    if quoted.strip():
        matches = [i + 1 for i, text in enumerate(cell) if text.rstrip() == quoted.rstrip()]
        if matches:
            return min(matches, key=lambda n: abs(n - reported))
        scores = [difflib.SequenceMatcher(None, quoted.strip(), text.strip()).ratio()
                  for text in cell]
        if scores and max(scores) >= 0.6:
            return max(range(len(cell)), key=lambda n: (scores[n], -abs(n + 1 - reported))) + 1
    return reported if 1 <= reported <= len(cell) else None


def load_failure(function: str, error: str, log: str, source: str = "", compile_log: str = "",
                 line_offset: int = 0) -> BPFError:
    """The error for ``function`` refused at load: usually the verifier's log tail.

    ``source`` and ``compile_log`` (the cell and what the compiler printed for it)
    let a call to an undeclared function be named, and the log's ``@ main.c:N``
    become the cell's line numbers.
    """
    if not kernel.has_bpf_rights():
        return NotPrivilegedError("Not allowed to load BPF programs: " + kernel.rights_summary(),
                                  kernel.rights_hint())
    undeclared = _UNDECLARED.findall(compile_log)
    if undeclared:
        name = undeclared[0]
        diags = format_diagnostics(compile_log.replace("warning:", "error:"), source, "cell",
                                   line_offset)
        where = [d for d in diags if name in d or d.startswith("    ")][:2]
        return CompileError(suggest.unknown_helper(name) + ("\n" + "\n".join(where)
                                                            if where else ""),
                            "Call one of the kernel's helpers (`man bpf-helpers`) or define "
                            "the function in the cell (static inline).", diagnostics=diags)
    vlog = log.split("bpf: Failed to load program:", 1)[-1].strip()
    reason = error.split(":")[-1].strip()
    tail = [ln for ln in vlog.splitlines() if ln.strip() and not ln.startswith("processed ")]
    decisive = suggest.verifier_excerpt(_cell_lines_in(tail[-12:], source, line_offset))
    return VerifierError(
        f"The kernel's verifier rejected {function}() ({reason}). The end of its log:\n"
        f"{decisive}",
        suggest.verifier_hint(vlog), log=vlog, function=function)


_UNDECLARED = re.compile(r"(?:implicit declaration of function|call to undeclared function) "
                         r"'(\w+)'")
_SOURCE_AT = re.compile(r"^; (?P<text>.*) @ main\.c:(?P<line>\d+)$")


def _cell_lines_in(tail: list[str], source: str, line_offset: int) -> list[str]:
    """The verifier's ``; TEXT @ main.c:N`` lines, with N replaced by the cell's line number.

    BCC compiles a rewritten copy of the cell with lines of its own in front; the
    cell line most like TEXT fixes the distance, which holds for its neighbours.
    Lines that name no source line (``@ main.c:0``) are left out.
    """
    cell = [ln.strip() for ln in source.splitlines()]
    found = [(i, _SOURCE_AT.match(ln)) for i, ln in enumerate(tail)]
    shifts = {}
    for i, m in found:
        if m and int(m.group("line")) and cell:
            text = m.group("text").strip()
            scores = [difflib.SequenceMatcher(None, text, c).ratio() for c in cell]
            best = max(range(len(cell)), key=lambda n: scores[n])
            if scores[best] >= 0.6:
                shifts[i] = int(m.group("line")) - (best + 1)
    out = []
    for i, m in found:
        if m and not int(m.group("line")):
            continue
        number = int(m.group("line")) - shifts[min(shifts, key=lambda j: abs(j - i))] \
            if m and shifts else 0
        out.append(f"; {cell[number - 1]} @ cell, line {number + line_offset}"
                   if 1 <= number <= len(cell) else tail[i])
    return out
