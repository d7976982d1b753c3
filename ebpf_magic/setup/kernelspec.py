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
from pathlib import Path
from typing import TYPE_CHECKING

from ebpf_magic.internal import files

if TYPE_CHECKING:
    from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "python3-ebpf"
DISPLAY_NAME = "Python 3 (eBPF)"
PLAIN_NAME = "python3"
PLAIN_DISPLAY_NAME = "Python 3 (isolated)"


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


def plain_spec(python: str | None = None) -> dict:
    """ipykernel's own kernel, isolated: ``python -I -m ipykernel_launcher``, as
    :data:`PLAIN_NAME`, in place of the stock one (which imports from the working
    directory: a kernel started there by root would run what others planted in it)."""
    return {
        "argv": [python or sys.executable, "-I", "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": PLAIN_DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def is_isolated(argv: list[str]) -> bool:
    """True when a kernelspec's ``argv`` starts Python in isolated mode (``-I``)."""
    options = argv[1:argv.index("-m")] if "-m" in argv else []
    return any(a.startswith("-") and not a.startswith("--") and "I" in a[1:] for a in options)


def _manager() -> KernelSpecManager:
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


def kernels_dir(user: bool = False, prefix: str | None = None) -> Path:
    """Where kernelspecs go: this user's Jupyter data directory, ``PREFIX/share/jupyter``,
    or else the system-wide Jupyter path."""
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH, jupyter_data_dir

    if user:
        return Path(jupyter_data_dir(), "kernels")
    if prefix:
        return Path(prefix, "share", "jupyter", "kernels")
    return Path(SYSTEM_JUPYTER_PATH[0], "kernels")


def install(name: str = KERNEL_NAME, *, user: bool = False, prefix: str | None = None,
            display_name: str = DISPLAY_NAME, python: str | None = None,
            contents: dict | None = None) -> str:
    """Install the kernelspec; return the directory it was written to.

    Without ``user`` or ``prefix`` it goes to the system-wide Jupyter path.
    ``python`` is the interpreter that runs the launcher (by default this one);
    point it at a copy granted file capabilities to give an ordinary user BPF rights.
    ``contents`` replaces the kernel.json of :func:`spec` (as :func:`plain_spec` does).
    A kernelspec of the same name there is replaced whole.
    """
    target = kernels_dir(user, prefix) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(contents or spec(python, display_name), indent=1) + "\n"

    def build(tmp: Path) -> None:
        (tmp / "kernel.json").write_text(text)
        for logo in _logos():
            shutil.copyfile(logo, tmp / logo.name)

    # Readable by everyone (the kernel's own user included), writable by the installer.
    return str(files.replace_dir(target, build))


def uninstall(name: str = KERNEL_NAME, *, user: bool = False,
              prefix: str | None = None) -> str:
    """Remove the kernelspec (from the given location, or wherever Jupyter finds it)."""
    if user or prefix:
        path = kernels_dir(user, prefix) / name
        if not (path / "kernel.json").is_file():
            raise SystemExit(f"no kernel {name!r} at {path}")
        shutil.rmtree(path)
        return str(path)
    manager = _manager()
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
