"""The modules' names from before the package was laid out in layers.

Notebooks, installed kernelspecs (``python -m ebpf_magic.launcher``) and user code name
``ebpf_magic.replay``, ``ebpf_magic.plots`` and the like; those names resolve to the very
same module objects under their new homes, never to second copies. A module inside a
moved package is imported by its new name only (the error says which).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

PACKAGE = "ebpf_magic"
MOVED = {
    "sysbpf": "kernel.sysbpf", "perfbuf": "kernel.perfbuf", "ringbuf": "kernel.ringbuf",
    "timebase": "kernel.timebase", "symbols": "kernel.symbols",
    "cache": "internal.cache", "ctext": "internal.ctext",
    "link": "kernel.link", "btf": "kernel.btf",
    "maps": "data.maps", "streams": "data.streams", "eventstore": "data.eventstore",
    "eventframe": "data.eventframe", "histograms": "data.histograms", "stacks": "data.stacks",
    "dtypes": "internal.dtypes", "globalvars": "data.globalvars",
    "widgets": "present.widgets", "plots": "present.plots", "streamview": "present.streamview",
    "recording": "sessions", "replay": "sessions",
    "doctor": "setup.doctor", "kernelspec": "setup.kernelspec", "launcher": "setup.launcher",
}


def new_name(fullname: str) -> str | None:
    """The module's name now, or None if ``fullname`` never moved."""
    pkg, _, rest = fullname.partition(".")
    if pkg != PACKAGE or not rest:
        return None
    head, _, tail = rest.partition(".")
    if head not in MOVED:
        return None
    return ".".join([PACKAGE, MOVED[head], *([tail] if tail else [])])


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finds a moved module by its old name and hands back the module already loaded."""

    def find_spec(self, fullname: str, path: object, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is not None and fullname.count(".") > 1:
            # Importing a submodule by a second name would rebind its package's attribute
            # of that name (``link.tracepoint``, a function) to the module: name the new
            # place instead.
            raise ModuleNotFoundError(f"{fullname} is now {new}", name=fullname)
        real = None if new is None else importlib.util.find_spec(new)
        if real is None:
            return None
        # the real file as origin: ``python -m OLD_NAME`` gives the module its __file__
        return importlib.util.spec_from_file_location(fullname, real.origin, loader=self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(new_name(spec.name))
        spec.loader_state = module.__spec__  # the import system overwrites it next
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state

    def get_source(self, fullname: str) -> str | None:
        new = new_name(fullname)
        return importlib.util.find_spec(new).loader.get_source(new)

    def get_code(self, fullname: str) -> CodeType | None:
        """What ``python -m OLD_NAME`` runs: the module's code under its new name."""
        new = new_name(fullname)
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    """Let the old names import (once per interpreter)."""
    if not any(isinstance(f, _OldNames) for f in sys.meta_path):
        # first: the path finder would load a moved package's submodule a second time
        sys.meta_path.insert(0, _OldNames())
