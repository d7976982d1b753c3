"""``doctor``: can BPF be used here, and which attach types work on this kernel?

:func:`run` gathers findings and renders them; it checks nothing itself. This process and
the kernel are checked by :mod:`ebpf_magic.features`; each backend reports its
prerequisites (:func:`ebpf_magic.backend.diagnostics`), whether it can load programs here
and its attach probes in its own dialect (:func:`ebpf_magic.backend.checks`), which
:mod:`.probing` loads and fires on a scratch veth pair and USDT binary (:mod:`.scratch`).
BPF is usable here when this process has the rights and some backend can load programs and
attach them. Every row says what failed, why, and how to fix it; everything the probes
create is removed before :func:`run` returns, and the removal is verified.

``python -m ebpf_magic doctor`` prints the report; ``%bpf doctor`` shows it in a notebook.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import shutil
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

from ebpf_magic import backend as registry
from ebpf_magic.bpftrace import diagnose as bpftrace_checks
from ebpf_magic.features import (
    FAIL,
    NOT_CHECKED,
    OK,
    UNAVAILABLE,
    WARN,
    Finding,
    safely,
)
from ebpf_magic.features import host as host_checks
from ebpf_magic.kernel import host
from ebpf_magic.setup import probing

__all__ = ["COLUMNS", "ENVIRONMENT", "Report", "Row", "main", "run"]

COLUMNS = ["check", "status", "detail", "fix"]
_COLORS = {OK: "#1a7f37", WARN: "#9a6700", FAIL: "#cf222e", UNAVAILABLE: "#cf222e",
           NOT_CHECKED: "#6e7781"}

Row = Finding  # a row of the report is one check's finding


@dataclass
class Report:
    """What :func:`run` found: ``.df`` for analysis, a table for terminals and notebooks.

    ``backends`` says, by backend name, whether each can load programs here;
    ``attach_kinds`` names the rows of attach probes (none when they did not run), which
    ``attach_backend``'s probes gave; ``prog_ids`` are the kernel ids of their programs.
    """

    rows: list[Finding] = field(default_factory=list)
    elapsed: float = 0.0
    prog_ids: list[int] = field(default_factory=list)
    backends: dict[str, Finding] = field(default_factory=dict)
    attach_kinds: list[str] = field(default_factory=list)
    attach_backend: str = ""

    @property
    def df(self) -> pd.DataFrame:
        """One line per row: check, status, detail, fix."""
        return pd.DataFrame([[r.check, r.status, r.detail, r.fix] for r in self.rows],
                            columns=COLUMNS)

    def status(self, check: str) -> str:
        """The status of the row named ``check``."""
        return next(r.status for r in self.rows if r.check == check)

    @property
    def usable(self) -> bool:
        """True when BPF programs can be used here: the rights, some backend that can load
        programs, and (where attach probes ran) one attach type that works."""
        by = {r.check: r.status for r in self.rows}
        if by.get("privileges") != OK or not any(b.status == OK for b in self.backends.values()):
            return False
        probed = [r for r in self.rows if r.check in self.attach_kinds]
        return not probed or any(r.ok for r in probed)

    @property
    def verdict(self) -> str:
        """One sentence: whether BPF can be used here."""
        if not self.usable:
            if self.backends and not any(b.status == OK for b in self.backends.values()):
                why = "; ".join(f"{name}: {b.detail}" for name, b in self.backends.items())
                return f"BPF cannot be used here yet: no backend can load programs ({why})."
            return "BPF cannot be used here yet: see the fixes above."
        if not self.attach_kinds:
            return "BPF programs can be loaded here (attach types were not checked)."
        return "BPF can be used here."

    def __str__(self) -> str:
        width = max(shutil.get_terminal_size((100, 24)).columns, 80)
        name_w = max(len(r.check) for r in self.rows) + 2 if self.rows else 10
        status_w = max(len(s) for s in _COLORS) + 2
        indent = " " * (name_w + status_w)
        lines = [f"ebpf_magic doctor: Linux {host.release()}, {self.elapsed:.1f} s",
                 f"{'check':<{name_w}}{'status':<{status_w}}detail", ""]
        for r in self.rows:
            detail = textwrap.wrap(r.detail, width - len(indent)) or [""]
            lines.append(f"{r.check:<{name_w}}{r.status:<{status_w}}{detail[0]}")
            lines += [indent + d for d in detail[1:]]
            if r.fix:
                lines += textwrap.wrap("fix: " + r.fix, width, initial_indent=indent,
                                       subsequent_indent=indent + "     ")
        return "\n".join([*lines, "", self.verdict])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        cells = []
        for r in self.rows:
            color = _COLORS.get(r.status, "inherit")
            fix = f"<br><i>fix:</i> {html.escape(r.fix)}" if r.fix else ""
            cells.append(f"<tr><td style='text-align:left'>{html.escape(r.check)}</td>"
                         f"<td style='text-align:left;color:{color};font-weight:bold'>"
                         f"{html.escape(r.status)}</td>"
                         f"<td style='text-align:left'>{html.escape(r.detail)}{fix}</td></tr>")
        return (f"<p><b>ebpf_magic doctor</b>: Linux {html.escape(host.release())}, "
                f"{self.elapsed:.1f} s. {html.escape(self.verdict)}</p><table><thead><tr>"
                f"<th>check</th><th>status</th><th>detail</th></tr></thead><tbody>{''.join(cells)}"
                "</tbody></table>")


def _row(check: Callable[[], registry.Diagnostic]) -> Callable[[], Finding]:
    """A backend's (or bpftrace's) check, as a check giving a row of the report."""
    return lambda: Finding(**asdict(check()))


# this process and the kernel first, then each backend's prerequisites and the cells it serves
ENVIRONMENT: dict[str, Callable[[], Finding]] = {
    **host_checks(),
    **{name: _row(check) for name, check in registry.diagnostics().items()},
    "bpftrace": _row(bpftrace_checks.check_installed)}


def run(attach: bool = True, backend: str | None = None) -> Report:
    """Check this machine; with ``attach``, load a tiny program of each attach type with
    ``backend``'s probes (default: the first backend that can load programs here)."""
    if backend is not None:
        backend = registry.get(backend).name  # BPFError naming the backends for a typo
    start = time.monotonic()
    rows = [safely(name, check) for name, check in ENVIRONMENT.items()]
    found = registry.checks()
    backends = {name: safely(name, checks.available) for name, checks in found.items()}
    report = Report(rows, backends=backends)
    if attach:
        privileges = next(r for r in rows if r.check == "privileges")
        try:
            suites = {name: checks.probes() for name, checks in found.items()}
            probed = probing.check_attach_types(privileges, backends, suites, backend)
        except Exception as e:  # noqa: BLE001 - report, never crash
            rows.append(Finding("attach types", FAIL, f"{type(e).__name__}: {e}"))
        else:
            rows += probed.findings
            report.attach_kinds = probed.kinds
            report.attach_backend = probed.backend
            report.prog_ids = probed.prog_ids
        rows.append(safely("bpftrace cells", _row(bpftrace_checks.check_cells)))
    report.elapsed = time.monotonic() - start
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic doctor``: print the report; exit 0 when BPF can be used."""
    parser = argparse.ArgumentParser(prog="python -m ebpf_magic doctor",
                                     description="Check whether and how eBPF works here.")
    parser.add_argument("--no-attach", action="store_true",
                        help="skip loading test programs (environment checks only)")
    parser.add_argument("--backend", choices=registry.BACKENDS,
                        help="load the attach probes with this backend (default: the first "
                             "that can load programs here)")
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        report = run(attach=not args.no_attach, backend=args.backend)
        print(report)
        return 0 if report.usable else 1
    return 1
