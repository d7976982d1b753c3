"""Recording programs to files and replaying them without a kernel.

The modules, each one concern:

* :mod:`.format`: the file format (members, manifest, versions, limits);
* :mod:`.writer`: writing a program (a :class:`~ebpf_magic.api.ProgramView`) to a file;
* :mod:`.reader`: reading a file, which is untrusted input, into checked frames;
* :mod:`.replayed`: recorded programs read back (:func:`load`), on the read API;
* :mod:`.snapshots` and :mod:`.recorder`: map snapshots over time, taken while a
  program runs, and saving programs with them;
* :mod:`.policy`: where recordings live, and whether a cell runs live or replays.

This package offers their public functions under one name.
"""

from ebpf_magic.sessions.format import MANIFEST, SUFFIX, VERSION
from ebpf_magic.sessions.policy import (
    RECORD_ENV,
    RECORDINGS_ENV,
    REPLAY_ENV,
    can_run_live,
    find_recording,
    is_live,
    recording_enabled,
    recording_path,
    recordings_dir,
    set_recordings_dir,
    set_replay,
)
from ebpf_magic.sessions.recorder import (
    Recorder,
    autosave,
    mark,
    record_snapshots,
    recorder_of,
    records,
    save,
)
from ebpf_magic.sessions.replayed import (
    RecordingInfo,
    ReplayedMap,
    ReplayedProgram,
    ReplayedStream,
    announce,
    load,
    replay_cell,
)
from ebpf_magic.sessions.snapshots import Snapshot, Snapshots, stack
from ebpf_magic.sessions.writer import frame_to_parquet, host_facts

__all__ = [
    "MANIFEST", "RECORDINGS_ENV", "RECORD_ENV", "REPLAY_ENV", "SUFFIX", "VERSION", "Recorder",
    "RecordingInfo", "ReplayedMap", "ReplayedProgram", "ReplayedStream", "Snapshot",
    "Snapshots", "announce", "autosave", "can_run_live", "find_recording", "frame_to_parquet",
    "host_facts", "is_live", "load", "mark", "record_snapshots", "recorder_of", "recording_enabled",
    "recording_path", "records", "recordings_dir", "replay_cell", "save", "set_recordings_dir",
    "set_replay", "stack",
]
