"""Preparing a cell's C source: variable interpolation and compiler flags.

Interpolation follows IPython's convention for magics, made safe for C:
``{name}`` and ``$name`` are replaced by the value of the Python variable
``name`` (attribute access like ``{cfg.pid}`` works too) only when that name
exists in the namespace. Everything else is left as written, so C braces
(``{ return 0; }``, ``{x}`` where no variable ``x`` exists) are untouched.
To keep ``{name}`` or ``$name`` literally although the variable exists,
double it: ``{{name}}`` becomes ``{name}``, ``$$name`` becomes ``$name``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ebpf_magic.errors import OptionError

# what a -D macro name may be, in words for error messages
MACRO_NAME_RULE = "a letter or underscore, then letters, digits or underscores"
_MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_BRACED = re.compile(r"(\{\{|\{)\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*(\}\}|\})")
_DOLLAR = re.compile(r"(\$\$|\$)([A-Za-z_]\w*)")
_MISSING = object()


def _resolve(expr: str, namespace: Mapping[str, Any]) -> Any:
    head, *attrs = expr.split(".")
    value = namespace.get(head, _MISSING)
    for attr in attrs:
        if value is _MISSING:
            break
        value = getattr(value, attr, _MISSING)
    return value


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def interpolate(text: str, namespace: Mapping[str, Any]) -> str:
    """Substitute ``{name}`` and ``$name`` from ``namespace`` (see the module doc)."""

    def braced(m: re.Match) -> str:
        opening, expr, closing = m.groups()
        if opening == "{{" and closing == "}}":
            return "{" + expr + "}" if _resolve(expr, namespace) is not _MISSING else m.group(0)
        if opening == "{{" or closing == "}}":
            return m.group(0)
        value = _resolve(expr, namespace)
        return m.group(0) if value is _MISSING else _render(value)

    def dollar(m: re.Match) -> str:
        sign, name = m.groups()
        if name not in namespace:
            return m.group(0)
        return "$" + name if sign == "$$" else _render(namespace[name])

    return _DOLLAR.sub(dollar, _BRACED.sub(braced, text))


def parse_define(text: str) -> tuple[str, str | None]:
    """``"NAME=VALUE"`` as ``(NAME, VALUE)``, ``"NAME"`` as ``(NAME, None)``.

    Raises :class:`~ebpf_magic.errors.OptionError` unless NAME is a C macro name.
    """
    name, eq, value = text.partition("=")
    _check_macro_name(name)
    return name, value if eq else None


def _check_macro_name(name: Any) -> None:
    if not isinstance(name, str) or not _MACRO_NAME.fullmatch(name):
        raise OptionError(f"{name!r} is not a C macro name",
                          f"A macro name is {MACRO_NAME_RULE}: PID, MAX_LEN, _DEBUG.")


def define_flags(defines: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """``-D`` flags from ``{"NAME": value}`` (None: no value) or ``["NAME=VALUE", ...]``.

    A single string is one define. Raises :class:`~ebpf_magic.errors.OptionError`
    for a name that is not a C macro name.
    """
    if isinstance(defines, Mapping):
        items = list(defines.items())
        for name, _ in items:
            _check_macro_name(name)
    else:
        texts = [defines] if isinstance(defines, str) else defines
        items = [parse_define(str(d)) for d in texts]
    return [f"-D{name}" if value is None else f"-D{name}={_render(value)}"
            for name, value in items]


# blanks, not \s, at the start: \s would match newlines and make a scan quadratic in blank lines
_FUNC_DEF = re.compile(r"^[ \t]*(?:static\s+)?(?:inline\s+)?(?:int|void|u32|u64|long|unsigned "
                       r"int)\s+(\w+)\s*\(\s*(?:struct\s+pt_regs|void|struct\s+\w+)\s*\*",
                       re.MULTILINE)


def function_names(text: str) -> list[str]:
    """Names of functions that take a context pointer, found by a plain scan of the text."""
    return [m.group(1) for m in _FUNC_DEF.finditer(text)]
