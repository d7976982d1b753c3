"""Snapshotting a running program's maps periodically, and saving programs with them.

:func:`record_snapshots` starts a :class:`Recorder` for a program; :func:`save`
writes a program with its recorder's snapshots; :func:`mark` and :func:`autosave`
keep ``recordings/NAME.bpfrec`` fresh for cells run with ``--record``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from ebpf_magic.api import ProgramView
from ebpf_magic.errors import BPFError
from ebpf_magic.sessions import policy, writer
from ebpf_magic.sessions.replayed import ReplayedProgram
from ebpf_magic.sessions.snapshots import Snapshot, Snapshots


class Recorder(Snapshots):
    """Snapshot a running program's maps every ``every`` seconds, in a background thread.

    The thread ends by itself when the program stops; :meth:`stop` ends it
    earlier. ``snapshots`` holds what was taken, at most ``limit`` (the newest);
    :func:`save` includes them.
    """

    def __init__(self, prog: ProgramView, every: float = 1.0,
                 maps: Iterable[str] | None = None, limit: int = 3600) -> None:
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        super().__init__()
        self.every = float(every)
        self.names = list(maps) if maps is not None else None
        for name in self.names or ():
            prog.maps[name]  # an unknown name fails here, naming the maps there are
        self.limit = limit
        self._prog = weakref.ref(prog)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Recorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ebpf_magic-recorder",
                                            daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def take(self) -> Snapshot | None:
        """Take one snapshot now; None when the program has stopped."""
        prog = self._prog()
        if prog is None or not prog.running:
            return None
        try:
            frames = prog.read_maps(self.names)
        except BPFError:
            return None  # the program has stopped
        snap = Snapshot(time.time(), frames)
        self.snapshots.append(snap)
        del self.snapshots[:-self.limit]
        return snap

    def _run(self) -> None:
        while not self._halt.wait(self.every):
            if self.take() is None:
                return

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Recorder every {self.every:g}s ({state}): {len(self.snapshots)} snapshot(s)>"


_recorders: weakref.WeakKeyDictionary[ProgramView, Recorder] = \
    weakref.WeakKeyDictionary()


def record_snapshots(prog: ProgramView, every: float = 1.0,
                     maps: Iterable[str] | None = None) -> Snapshots:
    """Start snapshotting ``prog``'s maps every ``every`` seconds; :func:`save` keeps them.

    For a replayed program this gives the recorded snapshots, so the same
    notebook code draws the same plots.
    """
    if isinstance(prog, ReplayedProgram):
        return prog.snapshots
    old = _recorders.get(prog)
    if old is not None:
        old.stop()
    rec = Recorder(prog, every, maps)
    _recorders[prog] = rec
    return rec.start()


def recorder_of(prog: ProgramView) -> Snapshots | None:
    """The snapshots :func:`record_snapshots` holds for ``prog``, if any."""
    if isinstance(prog, ReplayedProgram):
        return prog.snapshots
    return _recorders.get(prog)


def save(prog: ProgramView, path: str | os.PathLike, *,
         snapshots: Snapshots | Iterable[Snapshot] | None = None, hostname: bool = True,
         tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
    """Write ``prog`` (live, replayed or cluster) to one recording file at ``path``, with
    the host facts it gives (:meth:`~ebpf_magic.api.ProgramView.host_facts`).

    Args:
        prog: a :class:`~ebpf_magic.program.Program` (save it before stopping
            it: a stopped program's maps are gone) or a replayed program.
        path: the file to write (``.bpfrec`` by convention); folders are made.
        snapshots: periodic map snapshots to include; by default those
            :func:`record_snapshots` took for ``prog``, if any.
        hostname: False leaves host names out.
        tables: extra DataFrames to keep, by name (a replay has them as
            ``prog.tables``): results only the live machine can compute, such
            as stacks symbolized against its running processes.

    Returns the path written. A running program's maps are snapshotted once more now.
    """
    if snapshots is None:
        snapshots = recorder_of(prog) or []
    return writer.write(prog, path, snapshots=snapshots, hostname=hostname, tables=tables,
                        host=prog.host_facts(hostname))


_marked: weakref.WeakSet[ProgramView] = weakref.WeakSet()


def mark(prog: ProgramView, every: float | None = 1.0) -> None:
    """Have :func:`autosave` write ``prog``'s recording; snapshot its maps every ``every`` s."""
    _marked.add(prog)
    if every:
        record_snapshots(prog, every)


def records(prog: ProgramView) -> bool:
    """Whether :func:`autosave` writes ``prog``'s recording: a live program that records."""
    return not isinstance(prog, ReplayedProgram) and (
        prog in _marked or policy.recording_enabled())


def autosave(prog: ProgramView, hostname: bool = True,
             tables: Mapping[str, pd.DataFrame] | None = None) -> Path | None:
    """Refresh ``recordings/NAME.bpfrec`` for a live program that records, else do nothing.

    A program records when :func:`mark` was called for it (``%%bpf NAME
    --record``) or when ``EBPF_MAGIC_RECORD=1`` (see :mod:`.policy`).
    Replayed programs are never written back. ``EBPF_MAGIC_HOSTNAME=0`` leaves
    the hostname out, as ``hostname=False`` does.
    """
    hostname = hostname and os.environ.get("EBPF_MAGIC_HOSTNAME", "1").strip() != "0"
    if not records(prog):
        return None
    return save(prog, policy.recording_path(prog.name), hostname=hostname, tables=tables)
