"""Loading a BPF program from raw instructions, for tests that need one without a compiler.

Kept apart from ``conftest`` so that a child process can import it alone.
"""

from __future__ import annotations

import ctypes

from ebpf_magic.kernel import sysbpf

_PROG_LOAD = 5


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", *, name: str = "",
              expected_attach_type: int = 0, log_size: int = 1 << 16) -> int:
    """Load a program from raw instructions (BPF_PROG_LOAD); return its fd.

    On failure the :class:`OSError` message carries the verifier's log.
    """
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                         log_level=1, log_size=log_size, log_buf=ctypes.addressof(log),
                         prog_name=name.encode()[:15],
                         expected_attach_type=expected_attach_type)
    try:
        return sysbpf.bpf(_PROG_LOAD, attr)
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"{e.strerror}: {text}" if text else e.strerror) from None
