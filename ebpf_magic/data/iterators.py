"""BPF iterators as tables: ``prog.iter["dump_tasks"].df`` runs the iterator and reads it.

An ``iter/task`` (``task_file``, ``tcp``, ``udp``, ``bpf_map``...) program is called
once per kernel object while its output is read, so each read is a fresh walk of the
kernel's objects as they are now. What it writes becomes a DataFrame:

* fixed-size records written with ``bpf_seq_write(seq, &rec, sizeof(rec))`` are
  decoded with the record's C type, one row per record, one column per field
  (``char[]`` as str);
* text written with ``BPF_SEQ_PRINTF`` becomes one row per line, column ``line``.

Each read holds the program's lock, and the program closes its links only while
holding it, so no read meets a closed link; once stopped, reads raise
:class:`~ebpf_magic.errors.BPFError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ebpf_magic.api import Named
from ebpf_magic.backend import IterHandle
from ebpf_magic.data import eventframe
from ebpf_magic.data.maps import stopped_error
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel.link import LinkError


class Iterator:
    """One attached iterator program of a running program."""

    def __init__(self, handle: IterHandle, program: str,
                 lock: threading.Lock | None = None) -> None:
        self.handle = handle
        self.name = handle.name
        self.target = handle.target
        self._program = program
        self._lock = lock or contextlib.nullcontext()
        self._released = False
        self._stopped_at: float | None = None

    @property
    def record_dtype(self) -> np.dtype | None:
        """The layout of one record, or None where the iterator writes text."""
        return self.handle.record_dtype

    def read(self) -> bytes:
        """Run the iterator once; everything it wrote."""
        with self._lock:
            if self._released:
                raise stopped_error(self._program, self._stopped_at)
            try:
                return self.handle.link.read()
            except LinkError as e:
                raise BPFError(f"{self._program}.iter[{self.name!r}]: {e.what} ({e.strerror})",
                               e.hint) from None

    def lines(self) -> list[str]:
        """One run's output as lines of text."""
        return self.read().decode("utf-8", "replace").splitlines()

    def records(self) -> np.ndarray:
        """One run's output as an array of records (the iterator writes fixed-size records)."""
        dt = self.record_dtype
        if dt is None:
            raise BPFError(f"{self._program}.iter[{self.name!r}] writes text, not records",
                           f"Read it as lines: {self._program}.iter[{self.name!r}].lines()")
        data = self.read()
        if len(data) % dt.itemsize:
            raise BPFError(f"{self._program}.iter[{self.name!r}] wrote {len(data):,} bytes, not a "
                           f"whole number of {dt.itemsize}-byte records",
                           "Write only whole records with bpf_seq_write (one type per "
                           "iterator), or text only with BPF_SEQ_PRINTF.")
        return np.frombuffer(data, dt)

    @property
    def df(self) -> pd.DataFrame:
        """Run the iterator once: its records (a column per field), or its lines (``line``)."""
        if self.record_dtype is None:
            return pd.DataFrame({"line": pd.Series(self.lines(), dtype=str)})
        return eventframe.frame(self.records())

    def release(self, stopped_at: float | None = None) -> None:
        """Forget the link (the program closed it); reads then raise BPFError."""
        self._released = True
        self._stopped_at = stopped_at or self._stopped_at

    def __repr__(self) -> str:
        kind = "records" if self.record_dtype is not None else "text"
        return f"<Iterator {self.name} (iter/{self.target}, {kind})>"


class Iterators(Named[Iterator]):
    """A program's iterators, by function name."""

    def __init__(self, handles: Mapping[str, IterHandle], program: str,
                 lock: threading.Lock | None = None) -> None:
        super().__init__({name: Iterator(h, program, lock) for name, h in handles.items()},
                         "iterator")

    def release(self, stopped_at: float | None = None) -> None:
        """The program stopped: every iterator's reads raise from now on."""
        for it in self.values():
            it.release(stopped_at)

    def __repr__(self) -> str:
        return f"<Iterators {', '.join(self) or '(none)'}>"
