"""A running program's global variables as a live mapping: ``prog.globals["counter"]``.

Each read looks up the variable's data section in the kernel (a one-value array
map), so it shows what the program sees now. ``.data`` and ``.bss`` variables
can be written; ``.rodata`` is frozen at load, so it is set before load instead
(``%%bpf NAME --set VAR=VALUE``, ``Program(..., globals={...})``).

A write changes only the variable's own bytes, through a shared mapping of the
section's map (libbpf creates data sections mappable), so the program's updates
of its neighbours at the same moment are kept. Where a map cannot be mapped
(kernels before 5.5), the section's value is read, changed and written back
whole, and such an update can be lost.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ebpf_magic.backend import GlobalVar, encode_value
from ebpf_magic.data.maps import stopped_error
from ebpf_magic.errors import BPFError
from ebpf_magic.internal import dtypes
from ebpf_magic.kernel import sysbpf

_KEY = np.zeros(1, np.uint32)  # a data section's map holds its one value at index 0


class Globals(Mapping[str, Any]):
    """``{name: value}`` of a program's global variables, read live from the kernel.

    Values are plain Python (ints, str for ``char[]``, enum names, dicts for
    structs). Assigning to a ``.data`` or ``.bss`` variable writes it into the
    running program.
    """

    def __init__(self, variables: list[GlobalVar], program: str = "bpf") -> None:
        self._vars = {v.name: v for v in variables}
        self._program = program
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
        var = self._var(name)
        return _decode(self._section(var), var)

    def __setitem__(self, name: str, value: Any) -> None:
        var = self._var(name)
        if not var.writable:
            raise BPFError(f"{name} is in {var.section}, which is read-only after load",
                           f"Set it before load: %%bpf NAME --set {name}=VALUE, or "
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
        """One row per variable: name, section, C type, value (read now)."""
        sections: dict[int, np.ndarray] = {}
        rows = []
        for var in self._vars.values():
            if var.fd not in sections:
                sections[var.fd] = self._section(self._var(var.name))
            rows.append({"name": var.name, "section": var.section, "c_type": var.c_type,
                         "value": _decode(sections[var.fd], var)})
        return pd.DataFrame(rows, columns=["name", "section", "c_type", "value"])

    def __repr__(self) -> str:
        if self._released:
            return f"<globals of program {self._program!r} (stopped)>"
        return repr(dict(self))

    def _repr_html_(self) -> str:
        return self.df.to_html(index=False) if not self._released else repr(self)


def _decode(section: np.ndarray, var: GlobalVar) -> Any:
    value = np.frombuffer(section.tobytes(), var.dtype, count=1, offset=var.offset)[0]
    return dtypes.to_python(value, var.dtype)
