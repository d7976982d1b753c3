"""Tables as a notebook shows them: every value whole, numbers right-aligned, text left.

pandas cuts text cells at ``display.max_colwidth`` (50 characters), and JupyterLab
right-aligns every table cell; a listing whose point is its text (a probe's
arguments, a program's probes) needs neither. :class:`Listing` is the DataFrame the
library's listings return; :func:`html_table` renders any frame that way.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Mapping
from html import escape
from typing import Any

import pandas as pd

RIGHT = "text-align:right;font-variant-numeric:tabular-nums"
LEFT = "text-align:left"


def is_numeric(column: pd.Series) -> bool:
    """Whether ``column`` holds numbers (right-aligned, sorted largest first); bools do not."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def cell_text(value: Any, separated: bool = False) -> str:
    """``value`` as escaped HTML text: empty for a missing value, thousands separated
    when ``separated`` and a number."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if separated and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))


def html_table(df: pd.DataFrame, *, css_class: str = "", separated: Collection[str] = (),
               header_attrs: Callable[[str], str] | None = None,
               row_attrs: Callable[[Any], str] | None = None,
               marks: Mapping[str, str] | None = None) -> str:
    """An HTML table of ``df`` without its index: every cell whole and escaped, numeric
    columns right-aligned (those in ``separated`` with thousands separators), text left.

    ``header_attrs(column)`` and ``row_attrs(index label)`` give extra attributes for a
    header cell and a row (which then show a pointer: they are for clicking),
    ``marks[column]`` HTML after a column's name; all of them must be escaped HTML.
    """
    numeric = [is_numeric(df[c]) for c in df.columns]
    marks = marks or {}
    pointer = ";cursor:pointer" if header_attrs else ""
    head = "".join(
        f'<th style="{RIGHT if num else LEFT}{pointer}"'
        f'{header_attrs(str(c)) if header_attrs else ""}>'
        f"{escape(str(c))}{marks.get(str(c), '')}</th>"
        for c, num in zip(df.columns, numeric, strict=True))
    rows = []
    for index, values in zip(df.index, df.itertuples(index=False, name=None), strict=True):
        cells = "".join(
            f'<td style="{RIGHT if num else LEFT}">{cell_text(v, num and c in separated)}</td>'
            for c, v, num in zip(df.columns, values, numeric, strict=True))
        attrs = f' style="cursor:pointer"{row_attrs(index)}' if row_attrs else ""
        rows.append(f"<tr{attrs}>{cells}</tr>")
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class Listing(pd.DataFrame):
    """A DataFrame that shows every value whole, numbers right and text left-aligned.

    An empty one shows ``empty_text`` (what there is to do) rather than a bare header.
    Operations on it give plain DataFrames.
    """

    _metadata = ["empty_text"]

    def __init__(self, *args: Any, empty_text: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_text = empty_text

    def __repr__(self) -> str:
        if len(self) == 0 and self.empty_text:
            return self.empty_text
        with pd.option_context("display.max_colwidth", None, "display.max_columns", None,
                               "display.expand_frame_repr", False):
            return super().__repr__()

    def _repr_html_(self) -> str:
        if len(self) == 0 and self.empty_text:
            return f"<p>{escape(self.empty_text)}</p>"
        return html_table(self, css_class="bpf-listing")
