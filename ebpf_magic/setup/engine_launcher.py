"""Start an ipyparallel engine that holds the capabilities BPF needs and no others.

The engine counterpart of :mod:`ebpf_magic.setup.launcher` (the Jupyter kernel's): the
same rights, the same account. Give :func:`engine_cmd` to the cluster's engine launcher::

    c.EngineLauncher.engine_cmd = engine_cmd()   # ipcluster_config.py, local or SSH

and each engine runs ``python -I -m ebpf_magic.setup.engine_launcher ARGS``. Started by root, it
becomes the account :data:`~ebpf_magic.setup.launcher.ACCOUNT` keeping only
:func:`~ebpf_magic.setup.launcher.wanted`; started by anyone else, it keeps what it holds
of that set. Either way the bounding set shrinks, ``no_new_privs`` is set, and it
replaces itself with ``python -m ipyparallel.engine ARGS``.

Run as the account, the engine cannot read root's IPython profile: the controller's
connection info reaches it through ``$IPP_CONNECTION_INFO`` (ipyparallel's default) or
``--file=PATH``, which is handed over as a private in-memory copy, and profile options
(and ``$IPP_PROFILE_DIR``) are dropped so the engine uses the account's own IPython
directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ebpf_magic.setup import launcher

_PROFILE_OPTIONS = ("--profile-dir", "--profile", "--ipython-dir")
_PROFILE_ENV = ("IPP_PROFILE_DIR", "IPYTHONDIR")
_FILE_OPTIONS = ("--file", "--IPEngine.url_file")


def engine_cmd(python: str | None = None) -> list[str]:
    """The command an ipyparallel engine launcher runs (``EngineLauncher.engine_cmd``)."""
    return [python or sys.executable, "-I", "-m", "ebpf_magic.setup.engine_launcher"]


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return name, value if eq else None


def account_args(argv: list[str]) -> list[str]:
    """``argv`` for an engine run as the account: no root profile; ``--file`` read now.

    The connection file is copied into an anonymous memory file inherited across exec
    (``/proc/self/fd/N``), so the account needs no way into root's directories.
    """
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name, value = _split(arg)
        if name in _PROFILE_OPTIONS:
            if value is None:
                next(args, None)
            continue
        if name in _FILE_OPTIONS:
            path = value if value is not None else next(args, "")
            out.append("--file=" + launcher.memory_file("ipcontroller-engine.json",
                                                         Path(path).read_bytes()))
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        if os.getuid() == 0 or os.geteuid() == 0:
            entry = launcher.account()
            argv = account_args(argv)
            launcher.become(entry, launcher.wanted())
            launcher.refuse_writable_code(entry)
            env = launcher.account_env(entry, {k: v for k, v in env.items()
                                               if k not in _PROFILE_ENV})
        else:
            launcher.restrict(launcher.wanted())
        launcher.no_new_privs()
    except (launcher.LaunchError, OSError) as e:
        print(f"ebpf_magic.setup.engine_launcher: {e}", file=sys.stderr)
        return 1
    if not os.access(os.curdir, os.X_OK):
        os.chdir(env.get("HOME", "/"))
    try:
        os.execve(sys.executable, [sys.executable, "-m", "ipyparallel.engine", *argv], env)
    except OSError as e:
        print(f"ebpf_magic.setup.engine_launcher: uid {os.getuid()} cannot run "
              f"{sys.executable}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
