"""Find and import the operating system's BCC Python package from any interpreter.

BCC's Python module is pure Python over ``libbcc.so`` and is shipped by the
distribution, outside any virtualenv. When ``import bcc`` fails we look for
that one package in the places distributions install it and import it alone:
a whole system site-packages never goes on ``sys.path``.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from ebpf_magic.errors import BCCNotFoundError

ENV_VAR = "EBPF_MAGIC_BCC_PATH"

_SEARCH = [
    "/usr/lib/python3/dist-packages",  # Debian, Ubuntu
    "/usr/lib/python3*/site-packages",  # Fedora, Arch (noarch)
    "/usr/lib64/python3*/site-packages",  # Fedora, RHEL
    "/usr/local/lib/python3*/dist-packages",  # source builds (Debian-style prefix)
    "/usr/local/lib/python3*/site-packages",  # source builds
    "/usr/share/bcc/python",
]


def candidates() -> list[Path]:
    """Directories that contain a ``bcc`` package, the environment variable's first."""
    roots: list[str] = []
    if os.environ.get(ENV_VAR):
        roots.extend(os.environ[ENV_VAR].split(os.pathsep))
    for pattern in _SEARCH:
        roots.extend(sorted(glob.glob(pattern), reverse=True))
    found = []
    for root in roots:
        path = Path(root)
        if path.name == "bcc" and (path / "__init__.py").is_file():
            path = path.parent
        if (path / "bcc" / "__init__.py").is_file() and path not in found:
            found.append(path)
    return found


def _looks_like_bcc(module: ModuleType) -> bool:
    # PyPI's unrelated "bcc" project has no BPF class.
    return hasattr(module, "BPF")


def import_bcc() -> ModuleType:
    """Return the ``bcc`` module, importing the system's copy if needed."""
    existing = sys.modules.get("bcc")
    if existing is not None and _looks_like_bcc(existing):
        return existing
    try:
        module = importlib.import_module("bcc")
        if _looks_like_bcc(module):
            return module
        for name in [n for n in sys.modules if n == "bcc" or n.startswith("bcc.")]:
            del sys.modules[name]
    except ImportError:
        pass
    errors = []
    for root in candidates():
        try:
            return _import_from(root)
        except Exception as e:  # noqa: BLE001 - a broken copy fails anyhow: try the next
            errors.append(f"{root}/bcc: {e}")
    raise BCCNotFoundError("BCC's Python package was not found" +
                           (" (tried: " + "; ".join(errors) + ")" if errors else "."),
                           install_hint())


def _import_from(root: Path) -> ModuleType:
    init = root / "bcc" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "bcc", init, submodule_search_locations=[str(root / "bcc")])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == "bcc" or n.startswith("bcc.")]:
            del sys.modules[name]
        raise
    return module


def os_release() -> dict[str, str]:
    """The fields of /etc/os-release."""
    fields = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value.strip().strip('"')
    except OSError:
        pass
    return fields


def install_hint() -> str:
    """How to install BCC's Python package on this distribution."""
    info = os_release()
    family = " ".join([info.get("ID", ""), info.get("ID_LIKE", "")]).lower()
    if "debian" in family or "ubuntu" in family:
        cmd = "sudo apt-get install python3-bpfcc"
    elif any(d in family for d in ("fedora", "rhel", "centos")):
        cmd = "sudo dnf install python3-bcc"
    elif "arch" in family:
        cmd = "sudo pacman -S python-bcc"
    elif "suse" in family:
        cmd = "sudo zypper install python3-bcc"
    else:
        cmd = "install your distribution's BCC Python package (python3-bpfcc or python3-bcc)"
    return (f"Install it with: {cmd}\n"
            f"(Not `pip install bcc`: that PyPI project is unrelated.) If BCC is installed "
            f"somewhere else, set {ENV_VAR} to the directory that contains its bcc/ folder.")
