"""Results handed to the tools people already use: Perfetto, pprof, speedscope, flamegraph.pl.

* :mod:`.timeline`: event frames (a stream's events, live or replayed) as a Perfetto
  trace: tracks per thread, process or CPU, instants, slices for spans, counters;
* :mod:`.profile`: stack-count data in one shape (the *stack-count frame*), and folded
  text;
* :mod:`.pprof`: stack counts as a gzipped pprof profile;
* :mod:`.speedscope`: stack counts as a speedscope file.

Each writer takes plain frames, so a live program, a recording replayed without root
and any other front end export the same way. The protobuf writers import protobuf only
when they write.
"""

from ebpf_magic.export.pprof import to_pprof
from ebpf_magic.export.profile import as_stack_counts, read_folded, to_folded
from ebpf_magic.export.speedscope import to_speedscope
from ebpf_magic.export.timeline import ExportWarning, Timeline, program_to_perfetto, to_perfetto

__all__ = ["ExportWarning", "Timeline", "as_stack_counts", "program_to_perfetto", "read_folded",
           "to_folded", "to_perfetto", "to_pprof", "to_speedscope"]
