"""Start an ipyparallel engine that holds the capabilities BPF needs and no others.

The engine counterpart of :mod:`ebpf_magic.setup.launcher` (the Jupyter kernel's): the
same rights, its own account. Give :func:`engine_cmd` to the cluster's engine launcher::

    c.EngineLauncher.engine_cmd = engine_cmd()   # ipcluster_config.py, local or SSH

and each engine runs ``python -I -m ebpf_magic.setup.engine_launcher ARGS``. Started by root, it
becomes the account :data:`ACCOUNT` keeping only :func:`~ebpf_magic.setup.launcher.wanted`;
started by anyone else, it keeps what it holds of that set. Either way the bounding set
shrinks, ``no_new_privs`` is set, and it replaces itself with ``python -I -m
ipyparallel.engine ARGS`` (isolated: nothing is imported from the working directory).

The engine holds the cluster's key (``$IPP_CONNECTION_INFO`` or the connection file), which
lets its holder run code on every engine of the cluster: a process of the notebook
kernels' account may read, trace and signal only its own user's processes, so engines run
as another user. Run as the account, the engine cannot read root's IPython profile: the
controller's connection info reaches it through ``$IPP_CONNECTION_INFO`` (ipyparallel's
default) or ``--file=PATH``, which root reads and the account receives as a private
in-memory copy, and profile options are dropped so the engine uses the account's own
IPython directory. Its environment is the kernel's allowlist
(:func:`~ebpf_magic.setup.launcher.account_env`) and :data:`ENV_KEPT`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ebpf_magic.setup import launcher

_PROFILE_OPTIONS = ("--profile-dir", "--profile", "--ipython-dir")
_FILE_OPTIONS = ("--file", "--IPEngine.url_file")

ENV_KEPT = ("IPP_CONNECTION_INFO", "IPP_CURVE_SERVERKEY", "IPP_CURVE_SECRETKEY",
            "IPP_CURVE_PUBLICKEY")
"""What a root-started engine keeps of its environment besides the kernel's
:data:`~ebpf_magic.setup.launcher.ENV_KEPT`: the controller's connection info and CurveZMQ
keys, which ipyparallel's engine reads from there."""

ACCOUNT = "ebpf-engine"
"""The account a root-started engine runs as (``scripts/setup.sh`` makes it): not the
kernels' :data:`~ebpf_magic.setup.launcher.ACCOUNT`, whose processes could otherwise read
the cluster's key from the engine; a member of that account's group, which opens
tracefs and the checkout to it."""


def engine_cmd(python: str | None = None) -> list[str]:
    """The command an ipyparallel engine launcher runs (``EngineLauncher.engine_cmd``)."""
    return [python or sys.executable, "-I", "-m", "ebpf_magic.setup.engine_launcher"]


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return name, value if eq else None


def account_args(argv: list[str]) -> tuple[list[str], bytes | None]:
    """``argv`` without root's profile and ``--file`` options, and that file's bytes.

    Read by root, before the change of user: the account may not open root's profile.
    """
    out: list[str] = []
    text = None
    args = iter(argv)
    for arg in args:
        name, value = _split(arg)
        if name in _PROFILE_OPTIONS:
            if value is None:
                next(args, None)
            continue
        if name in _FILE_OPTIONS:
            text = Path(value if value is not None else next(args, "")).read_bytes()
            continue
        out.append(arg)
    return out, text


def hand_over(argv: list[str], text: bytes | None) -> list[str]:
    """``argv`` and ``--file`` naming a private in-memory copy of ``text``, if any.

    Made after the change of user, so the account owns the copy it reopens as
    ``/proc/self/fd/N``; it is inherited across exec and goes away with the engine.
    """
    if text is None:
        return argv
    return [*argv, "--file=" + launcher.memory_file("ipcontroller-engine.json", text)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        if os.getuid() == 0 or os.geteuid() == 0:
            entry = launcher.account(ACCOUNT)
            argv, connection = account_args(argv)
            env = launcher.pass_stats(env, "ebpf_magic.setup.engine_launcher")
            launcher.become(entry, launcher.wanted())
            launcher.refuse_writable_code(entry)
            argv = hand_over(argv, connection)
            env = launcher.account_env(entry, env, keep=ENV_KEPT)
            launcher.output_to_log(env, "engine.log")
        else:
            env = launcher.pass_stats(env, "ebpf_magic.setup.engine_launcher")
            launcher.restrict(launcher.wanted())
        launcher.no_new_privs()
    except (launcher.LaunchError, OSError) as e:
        print(f"ebpf_magic.setup.engine_launcher: {e}", file=sys.stderr)
        return 1
    if not os.access(os.curdir, os.X_OK):
        os.chdir(env.get("HOME", "/"))
    try:
        os.execve(sys.executable, [sys.executable, "-I", "-m", "ipyparallel.engine", *argv], env)
    except OSError as e:
        print(f"ebpf_magic.setup.engine_launcher: uid {os.getuid()} cannot run "
              f"{sys.executable}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
