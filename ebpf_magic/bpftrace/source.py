"""bpftrace program text: its ``printf`` formats, marked so their output splits exactly.

bpftrace prints a ``printf`` as one formatted string, so ``"%s %d"`` of the command
``a b`` and 1 reads back as ``a b 1``: where the first value ends is lost. Before the
program runs, each ``printf`` format is rewritten (:func:`mark_printfs`) to start with
``RS<i>RS`` (its index, between ASCII record separators) and to put a unit separator
(``US``) before and after every conversion. A line of output then splits into the
literal text and each value (:func:`split_marked`); the text without the marks is the
line bpftrace would have printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

RS = "\x1e"  # before and after a printf's index
US = "\x1f"  # around each value
_CONVERSION = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\d*)(?:\.(?P<precision>\d+))?"
                         r"(?P<length>hh|h|ll|l|z|j|t)?(?P<conv>[diouxXcsprf%])")
_ESCAPE = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Conversion:
    """One ``%`` conversion of a format: ``%-8s`` has flags ``-``, width 8, conv ``s``."""

    spec: str
    flags: str
    width: int
    conv: str


@dataclass(frozen=True)
class Literal:
    """A string literal in program text: where it is (``start``..``end``, quotes included)
    and its characters with escapes resolved."""

    start: int
    end: int
    text: str


def conversions(fmt: str) -> list[tuple[str, Conversion | None]]:
    """``fmt`` as pieces ``(text, conversion)``: literal text before each conversion, and a
    last piece with None; ``%%`` stays literal text (as ``%``)."""
    out: list[tuple[str, Conversion | None]] = []
    text, pos = [], 0
    for m in _CONVERSION.finditer(fmt):
        text.append(fmt[pos:m.start()])
        pos = m.end()
        if m.group("conv") == "%":
            text.append("%")
            continue
        out.append(("".join(text), Conversion(m.group(0), m.group("flags"),
                                              int(m.group("width") or 0), m.group("conv"))))
        text = []
    text.append(fmt[pos:])
    out.append(("".join(text), None))
    return out


def _string(text: str, start: int) -> tuple[int, str]:
    """The end (after the closing quote) and value of the literal opening at ``start``."""
    out, i = [], start + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return i + 1, "".join(out)
        if c == "\n":
            break
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            hexa = re.match(r"[xX]([0-9a-fA-F]{1,2})", text[i + 1:i + 4])
            octal = re.match(r"[0-7]{1,3}", text[i + 1:i + 4])
            if hexa:
                out.append(chr(int(hexa.group(1), 16)))
                i += 1 + len(hexa.group(0))
            elif octal:
                out.append(chr(int(octal.group(0), 8)))
                i += 1 + len(octal.group(0))
            else:
                out.append(_ESCAPE.get(nxt, nxt))
                i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError(f"unterminated string at offset {start}")


def _words(text: str) -> Iterator[tuple[int, int, str | None]]:
    """``(start, end, None)`` of each word and ``(start, end, value)`` of each string literal in
    ``text``, in order; comments and preprocessor lines are skipped. ValueError for an
    unterminated string or comment (bpftrace reports those itself)."""
    word = re.compile(r"[A-Za-z_]\w*")
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        line_start = text.rfind("\n", 0, i) + 1
        if text.startswith("//", i) or (c == "#" and not text[line_start:i].strip()):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated comment")
            i = end + 2
        elif c == '"':
            end, value = _string(text, i)
            yield i, end, value
            i = end
        elif c.isalpha() or c == "_":
            m = word.match(text, i)
            yield m.start(), m.end(), None
            i = m.end()
        else:
            i += 1


def printf_formats(text: str) -> list[Literal]:
    """The format literal of each ``printf(...)`` call in ``text``, in order."""
    out: list[Literal] = []
    tokens = list(_words(text))
    for k, (start, end, value) in enumerate(tokens[:-1]):
        nxt = tokens[k + 1]
        if value is None and text[start:end] == "printf" and nxt[2] is not None and \
                re.fullmatch(r"\s*\(\s*", text[end:nxt[0]]) and \
                (start == 0 or text[start - 1] != ":"):
            out.append(Literal(nxt[0], nxt[1], nxt[2]))
    return out


_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include\b", re.M)


def includes(text: str) -> bool:
    """Whether the program ``#include``s headers (bpftrace's preprocessor reads them)."""
    return bool(_INCLUDE.search(text))


def replace_word(text: str, word: str, value: str) -> str:
    """``text`` with every ``word`` outside strings and comments replaced by ``value`` (a
    builtin such as ``cpid`` by a number)."""
    out, pos = [], 0
    for start, end, literal in _words(text):
        if literal is None and text[start:end] == word and \
                (start == 0 or text[start - 1] not in ":$@."):
            out += [text[pos:start], value]
            pos = end
    out.append(text[pos:])
    return "".join(out)


def quote(value: str) -> str:
    """``value`` as a bpftrace string literal."""
    out = ['"']
    for c in value:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def mark(fmt: str, index: int) -> str:
    """The format of printf number ``index`` with its index and value marks (see module)."""
    parts = [f"{RS}{index}{RS}"]
    for literal, conv in conversions(fmt):
        parts.append(literal.replace("%", "%%"))
        if conv is not None:
            parts.append(f"{US}{conv.spec}{US}")
    return "".join(parts)


def mark_printfs(text: str) -> tuple[str, list[str]]:
    """``text`` with every printf format marked, and the formats as written, in order."""
    formats = printf_formats(text)
    out, pos = [], 0
    for i, lit in enumerate(formats):
        out += [text[pos:lit.start], quote(mark(lit.text, i))]
        pos = lit.end
    out.append(text[pos:])
    return "".join(out), [lit.text for lit in formats]


def split_marked(line: str, fmt: list[tuple[str, Conversion | None]]
                 ) -> tuple[str, list[str] | None]:
    """A marked printf output line (without its ``RS<i>RS`` head) as ``(text, values)``.

    ``values`` is None when the line does not split as ``fmt`` says (a value held a
    mark character): the text is then the line with every mark removed.
    """
    pieces = line.split(US)
    expected = 2 * (len(fmt) - 1) + 1
    if len(pieces) != expected or any(pieces[2 * i] != literal
                                      for i, (literal, _) in enumerate(fmt)):
        return line.replace(US, ""), None
    return "".join(pieces), pieces[1::2]


def head(line: str) -> tuple[int, str] | None:
    """``(index, rest)`` of a marked printf line, None for one without marks."""
    if not line.startswith(RS):
        return None
    end = line.find(RS, 1)
    if end < 0 or not line[1:end].isdigit():
        return None
    return int(line[1:end]), line[end + 1:]


_ERROR = re.compile(r"^(?:stdin|[^:\s]+\.bt):(?P<line>\d+):(?P<col>\d+)(?:-(?P<end>\d+))?: "
                    r"(?P<level>ERROR|WARNING): (?P<message>.*)$")


@dataclass(frozen=True)
class Diagnostic:
    """One message bpftrace printed about the program, at a line and column of it."""

    line: int | None
    column: int | None
    level: str  # "ERROR" or "WARNING"
    message: str
    excerpt: list[str]  # the source line and its ~~~ marks, as bpftrace printed them


_CLANG = re.compile(r"^\S+:\d+:\d+: (?P<level>warning|note|error|fatal error): ")


def unlocated(lines: list[str]) -> list[str]:
    """bpftrace's messages that name no line of the program, errors first: the compiler's
    warnings about headers (and their notes) are left out, so a header's own error (``error:
    redefinition of 'cfs_rq'``) is what a cell shows, not the first of a hundred warnings."""
    kept = []
    for text in lines:
        m = _CLANG.match(text)
        if not text.strip() or text.startswith("note: ") or (m and m["level"] in ("warning",
                                                                                 "note")):
            continue
        kept.append(text)
    errors = [t for t in kept if (t.startswith("ERROR: ") or " error: " in t)
              and not t.startswith("ERROR: Input (")]  # bpftrace echoing the headers' input
    return errors + [t for t in kept if t not in errors]


def diagnostics(stderr: str, line_offset: int = 0) -> list[Diagnostic]:
    """The located messages in bpftrace's ``stderr``, lines shifted by ``line_offset``
    (1 for a cell, whose first line is the magic's)."""
    out: list[Diagnostic] = []
    lines = stderr.splitlines()
    for i, text in enumerate(lines):
        m = _ERROR.match(text)
        if m is None:
            continue
        excerpt = [ln for ln in lines[i + 1:i + 3] if not _ERROR.match(ln)]
        out.append(Diagnostic(int(m.group("line")) + line_offset, int(m.group("col")),
                              m.group("level"), m.group("message"), excerpt))
    return out
