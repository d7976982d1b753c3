"""Where recordings live, and whether a cell runs live or replays one.

Notebooks that run live on a Linux box and replay elsewhere find recordings by
name: ``recordings/NAME.bpfrec`` under the working directory (the notebook's
folder), or under the folder named by ``EBPF_MAGIC_RECORDINGS``. A cell runs live
when a backend for it is available here; setting ``EBPF_MAGIC_REPLAY=1`` replays
even then, and ``EBPF_MAGIC_RECORD=1`` makes live runs refresh the recordings.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

from ebpf_magic.backend import BACKENDS, available, choose_backend
from ebpf_magic.errors import BPFError
from ebpf_magic.sessions import format as fmt

RECORDINGS_ENV = "EBPF_MAGIC_RECORDINGS"
REPLAY_ENV = "EBPF_MAGIC_REPLAY"
RECORD_ENV = "EBPF_MAGIC_RECORD"

_settings: dict[str, Any] = {"dir": None, "replay": None}


def recordings_dir() -> Path:
    """The folder recordings are looked up in and saved to by name.

    ``set_recordings_dir()`` wins, then ``$EBPF_MAGIC_RECORDINGS``, then
    ``recordings/`` in the working directory (a notebook's own folder).
    """
    chosen = _settings["dir"] or os.environ.get(RECORDINGS_ENV)
    return Path(chosen) if chosen else Path.cwd() / "recordings"


def set_recordings_dir(path: str | os.PathLike | None) -> None:
    """Use ``path`` for recordings by name (None: back to the default)."""
    _settings["dir"] = None if path is None else Path(path)


def recording_path(name: str) -> Path:
    """Where the recording of the program called ``name`` is (or would be)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ValueError(f"{name!r} cannot name a recording file (use letters, digits, _ . -)")
    return recordings_dir() / f"{name}{fmt.SUFFIX}"


def find_recording(name: str) -> Path | None:
    """The recording of ``name`` in :func:`recordings_dir`, if there is one."""
    try:
        path = recording_path(name)
    except ValueError:
        return None
    return path if path.is_file() else None


def _env_flag(env: str) -> bool:
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")


def recording_enabled() -> bool:
    """True when live runs should (re)write their recordings (``$EBPF_MAGIC_RECORD``)."""
    return _env_flag(RECORD_ENV)


def set_replay(on: bool | None) -> None:
    """Replay recordings even where live tracing works (None: follow ``$EBPF_MAGIC_REPLAY``)."""
    _settings["replay"] = on


def kernel_ready() -> tuple[bool, str]:
    """Whether programs may run live here at all, whatever runs them, and if not, why not:
    replay was not requested, this is Linux, and this process may load BPF programs."""
    replay = _settings["replay"]
    if replay if replay is not None else _env_flag(REPLAY_ENV):
        how = "set_replay(True)" if replay else f"{REPLAY_ENV}=1"
        return False, f"replay was requested ({how})"
    if platform.system() != "Linux":
        return False, f"eBPF needs Linux; this is {platform.system()}"
    from ebpf_magic.kernel import host as kernel

    if not kernel.has_bpf_rights():
        return False, f"no rights to load BPF: {kernel.rights_summary()}"
    return True, "live"


def can_run_live(source: str | None = None, backend: str | None = None) -> tuple[bool, str]:
    """Whether a backend can load BPF programs here, and if not, why not.

    With ``source``, whether the backend for it (``backend``, else chosen by its dialect) is
    available here; without, whether any backend is.
    """
    ready, why = kernel_ready()
    if not ready:
        return False, why
    try:
        wanted = [choose_backend(source, backend)] if source is not None else list(BACKENDS)
    except BPFError:
        return True, "live"  # an unknown --backend is the live run's error to report
    why = []
    for name in wanted:
        ok, reason = available(name)
        if ok:
            return True, "live"
        why.append(f"no {name} backend: {reason.splitlines()[0] if reason else 'missing'}")
    return False, "; ".join(why)


def is_live() -> bool:
    """True when ``%%bpf`` cells run live here, False when they replay recordings."""
    return can_run_live()[0]
