"""What this kernel and process can do for BPF, as checks a test or the launcher can call.

Like cilium/ebpf's ``features``: each check returns a :class:`Finding` (the check's name,
its status, what was seen, what to do) and renders nothing. :mod:`.rights` asks what this
process may do, :mod:`.system` what the kernel offers tracing, :mod:`.programs` which
program types load; :mod:`.attach` is what a backend hands over for attach probes, which
:mod:`ebpf_magic.setup.probing` runs. The doctor (:mod:`ebpf_magic.setup.doctor`) renders them.
"""

from __future__ import annotations

from collections.abc import Callable

from ebpf_magic.features.attach import AttachProbe, BackendChecks, ProbeSuite
from ebpf_magic.features.finding import (
    FAIL,
    NOT_CHECKED,
    OK,
    STATUSES,
    UNAVAILABLE,
    WARN,
    Finding,
    safely,
)
from ebpf_magic.features.programs import check_program_type, program_types
from ebpf_magic.features.rights import check_memlock, check_privileges, check_process
from ebpf_magic.features.system import (
    check_btf,
    check_debugfs,
    check_kernel,
    check_probe_events,
    check_run_stats,
    check_tracefs,
)

__all__ = ["FAIL", "NOT_CHECKED", "OK", "STATUSES", "UNAVAILABLE", "WARN", "AttachProbe",
           "BackendChecks", "Finding", "ProbeSuite", "check_btf", "check_debugfs",
           "check_kernel", "check_memlock", "check_privileges", "check_probe_events",
           "check_process", "check_program_type", "check_run_stats", "check_tracefs", "host",
           "program_types", "safely"]


def host() -> dict[str, Callable[[], Finding]]:
    """This process's and this kernel's checks, by the name of the finding each returns,
    in the order a report shows them."""
    return {"privileges": check_privileges, "process": check_process,
            "memlock": check_memlock, "kernel": check_kernel, "BTF": check_btf,
            "tracefs": check_tracefs, "debugfs": check_debugfs,
            "stale probe events": check_probe_events, "run statistics": check_run_stats}
