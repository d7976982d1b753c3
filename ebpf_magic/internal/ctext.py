"""Reading C source text: comments and literals masked, parentheses matched.

Source rewriting (each backend's own) searches the masked text, so a name in a
comment or a string never matches, and edits the original text at the same offsets.
"""

from __future__ import annotations


def mask_code(source: str) -> str:
    """``source`` with comments and string/char literal contents blanked (same length)."""
    out = list(source)
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
            continue
        else:
            i += 1
            continue
        for k in range(i, j):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


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
