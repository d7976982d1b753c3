"""``python -m ebpf_magic COMMAND``: command-line entry points."""

from __future__ import annotations

import importlib
import sys

# command -> module whose main(argv) -> int runs it
COMMANDS = {
    "install-kernel": "ebpf_magic.setup.kernelspec",
    "install-lab": "ebpf_magic.setup.lab",
    "lab-workspace": "ebpf_magic.setup.workspace",
    "uninstall-kernel": "ebpf_magic.uninstall_kernel",
    "doctor": "ebpf_magic.setup.doctor",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m ebpf_magic {" + ",".join(COMMANDS) + "} [options]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
