"""The ``%%bpf`` cell magic and ``%bpf`` line magic: a thin adapter over the library.

Cell mode compiles and attaches a program (:mod:`.cell`). Line mode runs a
subcommand, one small module each, listed in :data:`SUBCOMMANDS`. ``%%bpftrace`` runs a
cell with bpftrace (:mod:`.bpftrace`).
"""

from __future__ import annotations

import difflib
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Bool, Float, Int, observe
from traitlets.config import Config

from ebpf_magic.data.streams import DEFAULTS as STREAM_DEFAULTS
from ebpf_magic.internal import deprecation, settings
from ebpf_magic.magics import bpftrace, cell, complete
from ebpf_magic.magics.args import SUBCOMMANDS, subcommand
from ebpf_magic.magics.cell import MAX_SECONDS
from ebpf_magic.session import Session
from ebpf_magic.source import interpolate

DEFAULT_MAX_ROWS = STREAM_DEFAULTS["max_rows"]
OLD_NAME = "BpfMagics"  # the class's name in earlier releases, still read from %config


def _warn_old_name(config: Config) -> None:
    if OLD_NAME in config and config[OLD_NAME]:
        deprecation.renamed(f"%config {OLD_NAME}.NAME", "%config BPFMagics.NAME", stacklevel=5)


def _doc() -> str:
    subs = "\n".join(f"  {subcommand(n).USAGE}\n      {subcommand(n).HELP}"
                     for n in SUBCOMMANDS)
    return f"{cell.DOC}\nLine mode, %bpf SUBCOMMAND:\n{subs}\n"


@magics_class
class BPFMagics(Magics):
    """Holds the session's named programs; its settings are ``%config BPFMagics.NAME = VALUE``
    (``%config BPFMagics`` lists them with their help; ``BpfMagics.NAME``, the name of earlier
    releases, still sets them for one release)."""

    compile_timeout = Float(settings.compile_timeout, min=0.1, max=MAX_SECONDS,
                            help="Seconds one compile (and, for BCC, its load) may take before "
                                 "the compiler is stopped and the cell fails").tag(config=True)
    compile_memory = Int(settings.compile_memory, min=256 << 20,
                         help="Bytes of address space a compile worker may use; applies from "
                              "the next worker on (a worker starts again after one that "
                              "crashed or was stopped)").tag(config=True)
    cache = Bool(settings.cache,
                 help="Keep compiled programs (per user, private) and load an unchanged cell "
                      "without compiling it again; False compiles every cell anew"
                 ).tag(config=True)
    max_rows = Int(DEFAULT_MAX_ROWS, min=1, max=cell.MAX_ROWS,
                   help="Events each stream of a cell's program keeps (the oldest are dropped "
                        "and counted), where the cell's line has no --max-rows").tag(config=True)
    cost_after = Float(3.0, min=0.0,
                       help="Seconds after a cell starts its program that the cell shows what "
                            "the program costs, if it is costly (0: never)").tag(config=True)
    costly_cpu_pct = Float(1.0, min=0.0,
                           help="What a cell's program must cost, in percent of one CPU, for "
                                "the cell to show it").tag(config=True)

    @observe("compile_timeout", "compile_memory", "cache")
    def _library_setting(self, change: dict) -> None:
        setattr(settings, change["name"], change["new"])

    @classmethod
    def section_names(cls) -> list[str]:
        """Configuration sections read, the old class name's first (so the new one wins)."""
        return [OLD_NAME, *super().section_names()]

    def update_config(self, config: Config) -> None:
        _warn_old_name(config)
        super().update_config(config)

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        _warn_old_name(self.config)  # ipython_config.py's c.BpfMagics.NAME
        self.session = Session()
        self.warned: set[str] = set()  # notes shown once per session (the kernel headers')
        self.cost_notes: dict[str, cell.CostNote] = {}  # by program name
        # the %bpf top widgets shown, by the cell that shows each; stopped with the extension
        self.tops: list[tuple[str | None, Any]] = []

    @line_cell_magic
    @no_var_expand
    def bpf(self, line: str, cell_text: str | None = None) -> Any:
        # The line gets the cell's interpolation rules, not IPython's expansion, which
        # evaluates any {expression} and takes time quadratic in the line's length.
        line = interpolate(line, self.shell.user_ns)
        if cell_text is not None:
            return cell.run(self, line, cell_text)
        sub, _, rest = line.strip().partition(" ")
        if not sub:
            raise UsageError("%bpf needs a subcommand: " + ", ".join(SUBCOMMANDS) +
                             " (or use %%bpf NAME as a cell magic; see %bpf?)")
        if sub not in SUBCOMMANDS:
            near = difflib.get_close_matches(sub, SUBCOMMANDS, n=1)
            maybe = f"did you mean %bpf {near[0]}? " if near else ""
            raise UsageError(f"unknown subcommand {cell.clip(sub)!r}; {maybe}"
                             f"known: {', '.join(SUBCOMMANDS)}")
        try:
            shlex.split(rest)  # subcommands split their arguments the same way
        except ValueError as e:
            raise UsageError(f"%bpf {sub}: {e}") from None
        return subcommand(sub).run(self, rest.strip())

    @line_cell_magic("bpftrace")
    @no_var_expand
    def bpftrace_cell(self, line: str, cell_text: str | None = None) -> None:
        return bpftrace.run(self, interpolate(line, self.shell.user_ns), cell_text)


def register(ipython: InteractiveShell) -> None:
    magics = BPFMagics(ipython)
    magics.bpf.__func__.__doc__ = _doc()
    magics.bpftrace_cell.__func__.__doc__ = bpftrace.DOC
    ipython.register_magics(magics)
    ipython._ebpf_magics = magics
    complete.register(ipython)


def unregister(ipython: InteractiveShell) -> None:
    magics = getattr(ipython, "_ebpf_magics", None)
    if magics is not None:
        cell.cancel_cost(magics)
        for _cell, top in magics.tops:
            top.stop()
        magics.tops.clear()
        magics.session.stop_all()
        del ipython._ebpf_magics
    complete.unregister(ipython)
