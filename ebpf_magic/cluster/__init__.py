"""One cell on many hosts: a program started on every engine of an ipyparallel cluster.

``connect()`` reaches a running cluster; ``ClusterProgram`` (what ``%%bpf NAME --targets
TARGETS`` makes) starts the source on each chosen engine, where it compiles and attaches
locally, and reads every host's maps and events into one frame with ``host`` and
``engine`` columns first. ``engine`` holds what runs on the engines;
:mod:`ebpf_magic.setup.engine_launcher` starts an engine with the BPF capabilities only
(see docs/privileges.md).
"""

from __future__ import annotations

from ebpf_magic.cluster.connect import ClusterError, ClusterWarning, Engines, connect, current
from ebpf_magic.cluster.program import ClusterMap, ClusterProgram, ClusterStream, Missing, run

__all__ = ["ClusterError", "ClusterMap", "ClusterProgram", "ClusterStream", "ClusterWarning",
           "Engines", "Missing", "connect", "current", "run"]
