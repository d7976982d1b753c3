"""bpftrace programs run from a notebook, read like any other program.

``run(text)`` starts bpftrace on a program in the background (:class:`BpftraceProgram`):
its maps are read from the kernel as typed DataFrames whenever asked, its output
(``printf``, printed maps, ``time()``...) streams into event frames, and it runs with the
rights of the process that starts it, no more (:mod:`.shim`). ``%%bpftrace NAME`` cells
make one. The modules, each one concern:

* :mod:`.process`: starting and stopping the bpftrace process, and a command run with it;
* :mod:`.shim`: the library that answers bpftrace's uid check for a non-root user;
* :mod:`.semantics`: the program's maps, printfs and probes, from bpftrace's type checker;
* :mod:`.source`: program text: its printf formats marked so their output splits exactly;
* :mod:`.maps`: maps read from the kernel while bpftrace runs;
* :mod:`.output`: bpftrace's JSON output lines as rows of event streams;
* :mod:`.program`: the program object (:class:`BpftraceProgram`);
* :mod:`.diagnose`: whether bpftrace cells run here, and the doctor's rows.
"""

from ebpf_magic.bpftrace.diagnose import can_run
from ebpf_magic.bpftrace.process import binary, version
from ebpf_magic.bpftrace.program import BpftraceProgram, BpftraceWarning, run

__all__ = ["BpftraceProgram", "BpftraceWarning", "binary", "can_run", "run", "version"]
