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


def define_flags(defines: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """``-D`` flags from ``{"NAME": value}`` (None: no value) or ``["NAME=VALUE", ...]``."""
    if isinstance(defines, Mapping):
        items = [(k, v) for k, v in defines.items()]
    else:
        items = [tuple(d.split("=", 1)) if "=" in d else (d, None) for d in defines]
    flags = []
    for name, value in items:
        if not re.fullmatch(r"[A-Za-z_]\w*", str(name)):
            raise ValueError(f"-D {name!r}: a macro name is letters, digits and underscores")
        flags.append(f"-D{name}" if value is None else f"-D{name}={_render(value)}")
    return flags


_FUNC_DEF = re.compile(r"^\s*(?:static\s+)?(?:inline\s+)?(?:int|void|u32|u64|long|unsigned "
                       r"int)\s+(\w+)\s*\(\s*(?:struct\s+pt_regs|void|struct\s+\w+)\s*\*",
                       re.MULTILINE)


def function_names(text: str) -> list[str]:
    """Names of functions that take a context pointer, found by a plain scan of the text."""
    return [m.group(1) for m in _FUNC_DEF.finditer(text)]
