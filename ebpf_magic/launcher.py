"""``python -I -m ebpf_magic.launcher``: the kernel launcher by the name older kernelspecs use.

Kernelspecs installed before the launcher moved to :mod:`ebpf_magic.setup.launcher` start
this module; it runs that launcher's :func:`~ebpf_magic.setup.launcher.main` unchanged.
``python -m ebpf_magic install-kernel`` writes the new name into a kernelspec.
"""

from __future__ import annotations

import sys

from ebpf_magic.setup.launcher import main

if __name__ == "__main__":
    sys.exit(main())
