"""Reading C source text: comments and literals masked, parentheses matched.

Source rewriting (each backend's own) searches the masked text, so a name in a
comment or a string never matches, and edits the original text at the same offsets.
"""

from __future__ import annotations

import re

# a comment, or a string or character literal up to its closing quote or the line's end
_MASKED = re.compile(r"//[^\n]*|/\*[\s\S]*?(?:\*/|\Z)|"
                     r"(\"|')((?:\\[\s\S]|\\\Z|(?!\1)[^\\\n])*)(\1?)")


def _spaces(text: str) -> str:
    return "\n".join(" " * len(line) for line in text.split("\n"))


def _blank(m: re.Match) -> str:
    if m.group(1) is None:  # a comment: spaces, its new lines kept
        return _spaces(m.group(0))
    return m.group(1) + _spaces(m.group(2)) + m.group(3)


def mask_code(source: str) -> str:
    """``source`` with comments and string/char literal contents blanked (same length)."""
    return _MASKED.sub(_blank, source)


def matching_paren(code: str, open_at: int) -> int:
    """Index of the ``)`` closing the ``(`` at ``open_at`` in masked ``code``; -1 if none."""
    return _matching(code, open_at, "(", ")")


def matching_brace(code: str, open_at: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_at`` in masked ``code``; -1 if none."""
    return _matching(code, open_at, "{", "}")


def _matching(code: str, open_at: int, opener: str, closer: str) -> int:
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == opener:
            depth += 1
        elif code[i] == closer:
            depth -= 1
            if depth == 0:
                return i
    return -1
