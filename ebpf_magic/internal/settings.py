"""The library's settings, read when they are needed: a change applies from the next compile.

In a notebook they are ``%config BPFMagics.NAME = VALUE`` (``%config BPFMagics`` lists them
with their help, :class:`ebpf_magic.magics.BPFMagics`); from Python, assign them here::

    from ebpf_magic.internal import settings
    settings.compile_timeout = 180
"""

from __future__ import annotations

compile_timeout: float = 60.0
"""Seconds one compile (and, for BCC, its load) may take, either backend."""

# BCC's peak for tcplife, a large real tool, is 0.36 GB of address space; LLVM reserves
# more on bigger programs, so the bound only stops runaways.
compile_memory: int = 4 << 30
"""Bytes of address space a compile worker process may use (from the next worker on)."""

cache: bool = True
"""Keep compiled programs and reuse them (False: every program is compiled afresh)."""
