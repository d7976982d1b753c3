"""What errors say, worked out from a compiler's or the verifier's text alone: no kernel."""

import pytest

from ebpf_magic.backend.bcc.diagnostics import format_diagnostics
from ebpf_magic.suggest import verifier_hint


def test_errors_on_lines_bcc_rewrote_map_to_the_nearest_cell_line():
    cell = ("#include <linux/tcp.h>\nint f(struct pt_regs *ctx, struct sock *sk) {\n"
            "    struct tcp_sock *ts = tcp_sk(sk);\n    return ts->srtt_us;\n}\n")
    log = ("/virtual/main.c:19:27: error: incompatible pointer types\n"
           "    struct tcp_sock *ts = ((struct tcp_sock *)sk);\n"
           "                          ^\n")
    assert format_diagnostics(log, cell, "cell", 1) == [
        "cell, line 4: error: incompatible pointer types",
        "    struct tcp_sock *ts = tcp_sk(sk);"]


@pytest.mark.parametrize(("last_lines", "hint_start"), [
    ("back-edge from insn 12 to 5", "The verifier could not prove a loop ends"),
    ("BPF program is too large. Processed 1000001 insn", "The verifier could not prove a loop"),
    ("invalid read from stack R2 off -16+0 size 8", "A read of a stack variable that was never"),
    ("R1 pointer arithmetic on map_ptr prohibited", "Pointer arithmetic with a value"),
    ("R1 invalid mem access 'scalar'", "A direct read of memory the program does not own"),
    ("unknown func bpf_get_stackid#27", "A helper this program type may not call"),
    ("7: (79) r0 = *(u64 *)(r0 +0)\nR0 invalid mem access 'map_value_or_null'",
     "A map lookup can return NULL"),
])
def test_verifier_hint_by_rejection_class(last_lines, hint_start):
    log = "0: (b7) r1 = 0\n" + last_lines + "\nprocessed 8 insns (limit 1000000)"
    assert verifier_hint(log).startswith(hint_start)
