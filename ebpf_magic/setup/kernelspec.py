"""Install and remove the "Python 3 (eBPF)" Jupyter kernel.

The kernelspec runs :mod:`ebpf_magic.setup.launcher`, which gives the kernel process
the capabilities BPF needs and no others (and, started by root, an unprivileged
user), so the notebook server itself never needs them. ``python -m ebpf_magic
install-kernel --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "python3-ebpf"
DISPLAY_NAME = "Python 3 (eBPF)"


def spec(python: str | None = None, display_name: str = DISPLAY_NAME) -> dict:
    """The kernel.json contents: ``python -I -m ebpf_magic.setup.launcher -f {connection_file}``.

    ``-I`` (isolated mode) keeps the working directory, which the kernel may be
    able to write, and ``PYTHON*`` variables out of what a root-started launcher imports.
    """
    return {
        "argv": [python or sys.executable, "-I", "-m", "ebpf_magic.setup.launcher",
                 "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True},
    }


def _manager():
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as e:
        raise SystemExit("jupyter_client is not installed: pip install ipykernel "
                         f"jupyter_client ({e})") from None
    return KernelSpecManager()


def _logos() -> list[Path]:
    try:
        from ipykernel.kernelspec import RESOURCES
    except ImportError:
        return []
    return sorted(Path(RESOURCES).glob("logo-*"))


def install(name: str = KERNEL_NAME, *, user: bool = False, prefix: str | None = None,
            display_name: str = DISPLAY_NAME, python: str | None = None) -> str:
    """Install the kernelspec; return the directory it was written to.

    Without ``user`` or ``prefix`` it goes to the system-wide Jupyter path.
    ``python`` is the interpreter that runs the launcher (by default this one);
    point it at a copy granted file capabilities to give an ordinary user BPF rights.
    """
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(
            json.dumps(spec(python, display_name), indent=1) + "\n")
        for logo in _logos():
            shutil.copy(logo, tmp)
        # Readable by everyone (the kernel's own user included), writable by the installer.
        for path in Path(tmp).iterdir():
            path.chmod(0o644)
        Path(tmp).chmod(0o755)
        return _manager().install_kernel_spec(tmp, kernel_name=name, user=user,
                                              prefix=prefix)


def uninstall(name: str = KERNEL_NAME, *, user: bool = False,
              prefix: str | None = None) -> str:
    """Remove the kernelspec (from the given location, or wherever Jupyter finds it)."""
    manager = _manager()
    if user or prefix:
        from jupyter_core.paths import jupyter_data_dir

        root = Path(prefix) / "share" / "jupyter" if prefix else Path(jupyter_data_dir())
        path = root / "kernels" / name
        if not (path / "kernel.json").is_file():
            raise SystemExit(f"no kernel {name!r} at {path}")
        shutil.rmtree(path)
        return str(path)
    if name not in manager.find_kernel_specs():
        raise SystemExit(f"no kernel named {name!r} is installed")
    return manager.remove_kernel_spec(name)


def _parser(prog: str, installing: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="this user's Jupyter data directory")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"this Python environment ({sys.prefix})")
    where.add_argument("--prefix", help="PREFIX/share/jupyter/kernels")
    parser.add_argument("--name", default=KERNEL_NAME, help=f"kernel name ({KERNEL_NAME})")
    if installing:
        parser.add_argument("--display-name", default=DISPLAY_NAME,
                            help=f"name shown in the launcher ({DISPLAY_NAME!r})")
        parser.add_argument("--python", help="interpreter that runs the kernel, e.g. a copy "
                            "granted file capabilities (default: this one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic install-kernel``."""
    args = _parser("python -m ebpf_magic install-kernel", True).parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(args.name, user=args.user, prefix=prefix,
                   display_name=args.display_name, python=args.python)
    print(f"Installed kernel {args.name!r} ({args.display_name}) in {path}")
    return 0


def uninstall_main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic uninstall-kernel``."""
    args = _parser("python -m ebpf_magic uninstall-kernel", False).parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = uninstall(args.name, user=args.user, prefix=prefix)
    print(f"Removed kernel {args.name!r} from {path}")
    return 0
