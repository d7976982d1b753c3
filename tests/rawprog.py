"""Loading a BPF program from raw instructions, for tests that need one without a compiler.

Kept apart from ``conftest`` so that a child process can import it alone.
"""

from __future__ import annotations

from ebpf_magic.kernel import sysbpf


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", *, name: str = "",
              expected_attach_type: int = 0, log_size: int = 1 << 16) -> int:
    """Load a program from raw instructions (BPF_PROG_LOAD); return its fd.

    On failure the :class:`OSError` message carries the verifier's log.
    """
    return sysbpf.prog_load(prog_type, insns, license, name=name,
                            expected_attach_type=expected_attach_type, log_size=log_size)
