"""``python -m ebpf_magic uninstall-kernel``: remove the "Python 3 (eBPF)" kernel."""

from ebpf_magic.setup.kernelspec import uninstall_main as main

__all__ = ["main"]
