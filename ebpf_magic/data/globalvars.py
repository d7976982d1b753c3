"""A running program's global variables as a live mapping: ``prog.globals["counter"]``.

Each read looks up the variable's data section in the kernel (a one-value array
map), so it shows what the program sees now. ``.data`` and ``.bss`` variables
can be written; ``.rodata`` is frozen at load, so it is set before load instead
(``%%bpf NAME --global VAR=VALUE``, ``Program(..., globals={...})``).

A write changes only the variable's own bytes, through a shared mapping of the
section's map (libbpf creates data sections mappable), so the program's updates
of its neighbours at the same moment are kept. Where a map cannot be mapped
(kernels before 5.5), the section's value is read, changed and written back
whole, and such an update can be lost.

Each read and write holds the program's lock, so none meets a descriptor that
stopping the program closed. :class:`SavedGlobals` holds values read at one moment
(a recording's), read-only.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.backend import GlobalVar, encode_value
from ebpf_magic.data.maps import stopped_error
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes
from ebpf_magic.kernel import sysbpf

_KEY = np.zeros(1, np.uint32)  # a data section's map holds its one value at index 0
COLUMNS = ["name", "section", "c_type", "value"]  # the columns of ``globals.df``


class Globals(Mapping[str, Any]):
    """``{name: value}`` of a program's global variables, read live from the kernel.

    Values are plain Python (ints, str for ``char[]``, enum names, dicts for
    structs). Assigning to a ``.data`` or ``.bss`` variable writes it into the
    running program. ``lock`` is the program's: each read and write holds it, and
    the program releases its descriptors only while holding it.
    """

    def __init__(self, variables: list[GlobalVar], program: str = "bpf",
                 lock: threading.Lock | None = None) -> None:
        self._vars = {v.name: v for v in variables}
        self._program = program
        self._lock = lock or contextlib.nullcontext()
        self._released = False
        self._stopped_at: float | None = None

    def release(self, stopped_at: float | None = None) -> None:
        """Forget the descriptors (the program closed them); reads then raise BPFError."""
        self._released = True
        self._stopped_at = stopped_at or self._stopped_at

    def _var(self, name: str) -> GlobalVar:
        if self._released:
            raise stopped_error(self._program, self._stopped_at)
        var = self._vars.get(name)
        if var is None:
            names = ", ".join(self._vars)
            raise KeyError(f"no global variable {name!r} in program {self._program!r}"
                           + (f" (globals: {names})" if names else " (it declares none)"))
        return var

    def _section(self, var: GlobalVar) -> np.ndarray:
        value = np.zeros(sysbpf.map_info(var.fd).value_size, np.uint8)
        sysbpf.map_lookup(var.fd, _KEY, value)
        return value

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            var = self._var(name)
            return _decode(self._section(var), var)

    def __setitem__(self, name: str, value: Any) -> None:
        with self._lock:
            self._write(self._var(name), name, value)

    def _write(self, var: GlobalVar, name: str, value: Any) -> None:
        if not var.writable:
            raise BPFError(f"{name} is in {var.section}, which is read-only after load",
                           f"Set it before load: %%bpf NAME --global {name}=VALUE, or "
                           f"Program(..., globals={{'{name}': VALUE}}).")
        raw = encode_value(var, value)
        size = sysbpf.map_info(var.fd).value_size
        try:
            with mmap.mmap(var.fd, size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE) as shared:
                shared[var.offset:var.offset + len(raw)] = raw
            return
        except OSError:  # not a mappable map
            pass
        section = self._section(var)
        section[var.offset:var.offset + len(raw)] = np.frombuffer(raw, np.uint8)
        sysbpf.map_update(var.fd, _KEY, section)

    def __contains__(self, name: object) -> bool:
        return name in self._vars

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)

    @property
    def df(self) -> pd.DataFrame:
        """One row per variable: name, section, C type, value (all read at once)."""
        sections: dict[int, np.ndarray] = {}
        rows = []
        with self._lock:
            for var in self._vars.values():
                if var.fd not in sections:
                    sections[var.fd] = self._section(self._var(var.name))
                rows.append({"name": var.name, "section": var.section, "c_type": var.c_type,
                             "value": _decode(sections[var.fd], var)})
        return frame(rows)

    def __repr__(self) -> str:
        if self._released:
            return f"<globals of program {self._program!r} (stopped)>"
        return repr(dict(self))

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False) if not self._released else repr(self)


class SavedGlobals(Mapping[str, Any]):
    """Global variables' values as read at one moment: a read-only ``{name: value}``.

    ``rows`` are rows of a live :attr:`Globals.df` (name, section, c_type, value);
    :attr:`df` gives them back as that frame. Empty for a program without globals.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), program: str = "bpf") -> None:
        self._rows = [{c: row[c] for c in COLUMNS} for row in rows]
        self._values = {row["name"]: row["value"] for row in self._rows}
        self._program = program

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            names = ", ".join(self._values)
            raise KeyError(f"no global variable {name!r} in program {self._program!r}"
                           + (f" (globals: {names})" if names else " (it has none)")) from None

    def __setitem__(self, name: str, value: Any) -> None:
        raise BPFError(f"the globals of {self._program!r} are values read when it was saved; "
                       "they cannot be set", "Run the program live to change its globals.")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def df(self) -> pd.DataFrame:
        """One row per variable: name, section, C type, value."""
        return frame(self._rows)

    def __repr__(self) -> str:
        return repr(self._values)

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False)


def frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows of globals (name, section, c_type, value) as ``globals.df`` shows them.

    Values stay the Python objects they are (an int beside a float stays an int).
    """
    rows = list(rows)
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object if c == "value"
                                      else None) for c in COLUMNS})


def _decode(section: np.ndarray, var: GlobalVar) -> Any:
    value = np.frombuffer(section.tobytes(), var.dtype, count=1, offset=var.offset)[0]
    return dtypes.to_python(value, var.dtype)
