"""Starting and stopping a ``bpftrace`` process that has this process's rights and no more.

bpftrace runs as a child with this process's user and capabilities (a kernel started
by root's Jupyter keeps only the BPF ones, and passes them on as ambient capabilities),
the uid shim preloaded where this process is not root (:mod:`.shim`), in a session of its
own so that a notebook's interrupt (a signal to the kernel's process group) does not stop
it, and with the parent-death signal set, so that it stops when this process dies however
it dies. It is told to say when every probe is attached
(``__BPFTRACE_NOTIFY_PROBES_ATTACHED``: a line on its standard error), and prints its
output as JSON lines, flushed line by line.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from ebpf_magic import backend
from ebpf_magic.bpftrace import shim
from ebpf_magic.errors import BPFError, OptionError

_T = TypeVar("_T")

ATTACHED = "__BPFTRACE_NOTIFY_PROBES_ATTACHED"
PLACES = ("/usr/bin/bpftrace", "/usr/sbin/bpftrace", "/usr/local/bin/bpftrace")
INSTALL_HINT = "Install it: `apt-get install bpftrace` (scripts/setup.sh does)."
MISSING = "bpftrace is not installed"
STOP_TIMEOUT = 30.0  # seconds bpftrace gets to detach (closing each probe takes a while)
ENV_NAME = re.compile(r"BPFTRACE_[A-Z0-9_]+")
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
KERNEL_SOURCE = "BPFTRACE_KERNEL_SOURCE"  # where bpftrace reads kernel headers from
# bpftrace's own knobs a caller may set (``bpftrace --help`` lists them)
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def binary() -> str:
    """The bpftrace program to run; :class:`~ebpf_magic.errors.BPFError` if there is none."""
    found = shutil.which("bpftrace") or next((p for p in PLACES if os.access(p, os.X_OK)),
                                             None)
    if found is None:
        raise BPFError(MISSING, INSTALL_HINT)
    return found


@functools.lru_cache(maxsize=4)
def version(path: str | None = None) -> str | None:
    """bpftrace's version (``0.17.0``), or None where it cannot be run."""
    try:
        out = subprocess.run([path or binary(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, BPFError, subprocess.SubprocessError):
        return None
    m = re.search(r"v?(\d+\.\d+(?:\.\d+)?\S*)", out)
    return m.group(1) if m else None


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` checked: bpftrace's own variables (``BPFTRACE_MAP_KEYS_MAX``...) only."""
    bad = [k for k in env if not ENV_NAME.fullmatch(str(k))]
    if bad:
        raise OptionError(f"not a bpftrace setting: {', '.join(map(repr, bad))}",
                          "Give bpftrace's own variables, e.g. BPFTRACE_MAP_KEYS_MAX=100000 "
                          "(`bpftrace --help` lists them).")
    return {str(k): str(v) for k, v in env.items()}


def argv(program: str, *, dry_run: bool = False, pid: int | None = None,
         params: Sequence[str] = (), unsafe: bool = False) -> list[str]:
    """The command line running ``program`` (``dry_run``: ``-d``, print its typed tree and
    load nothing)."""
    out = [binary(), "-f", "json", "-B", "line"]
    if dry_run:
        out.append("-d")
    if pid is not None:
        out += ["-p", str(pid)]
    if unsafe:
        out.append("--unsafe")
    return out + ["-e", program, *map(str, params)]


def environment(settings: Mapping[str, str] = (), includes: bool = False) -> dict[str, str]:
    """bpftrace's environment: this process's, ``settings`` (``BPFTRACE_*``), the attach
    notice, the shim (:mod:`.shim`: the uid check, a watch on this process), where this
    process is not root the kernel's BTF by path, and for a program that ``includes``
    headers, where the running kernel's are (:data:`KERNEL_SOURCE`).

    A ``#include <linux/...>`` needs headers of the running kernel, which bpftrace looks for
    in ``/lib/modules/RELEASE``; where they are not installed, a backend's tree of the
    kernel's own types serves (the distribution's ``/usr/include/linux`` alone lacks the
    kernel-internal definitions).

    bpftrace finds the kernel's BTF by walking the kernel's BTF objects by id, which needs
    CAP_SYS_ADMIN; without it, ``BPFTRACE_BTF`` names the file the kernel publishes
    (module types are then not known to it).
    """
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(check_env(dict(settings)))
    env[ATTACHED] = "1"
    env["LD_PRELOAD"] = str(shim.preload())
    env[shim.WATCH] = "1"
    if shim.needed() and "BPFTRACE_BTF" not in env and os.access(VMLINUX_BTF, os.R_OK):
        env["BPFTRACE_BTF"] = VMLINUX_BTF
    if includes and KERNEL_SOURCE not in env and \
            not os.path.isdir(f"/lib/modules/{platform.release()}/build/include"):
        tree = backend.header_tree()
        if tree is not None:
            env[KERNEL_SOURCE] = str(tree)
    return env


def _child_setup(parent: int) -> None:
    """In the child before exec: stop with SIGTERM when the parent dies (if it already
    has, stop now)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def spawn(args: list[str], env: Mapping[str, str]) -> subprocess.Popen:
    """Start ``args`` with ``env`` and pipes for its output, in its own session."""
    return _start(args, dict(env), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _start(args: list[str], env: dict[str, str] | None, stdin: int, stderr: int
           ) -> subprocess.Popen:
    """A child in a session of its own, output on a pipe, stopped when this process dies.

    The parent-death signal is tied to the thread that forks: the child is started from a
    thread that lives as long as this process (the main thread, else a thread kept for it).
    """
    parent = os.getpid()

    def start() -> subprocess.Popen:
        return subprocess.Popen(args, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True, close_fds=True,
                                preexec_fn=lambda: _child_setup(parent))

    if threading.current_thread() is threading.main_thread():
        return start()
    return _spawner().call(start)


class _Spawner:
    """A thread that lives as long as the process and starts children for other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._jobs: list[tuple[object, list]] = []
        threading.Thread(target=self._run, name="ebpf_magic-bpftrace-spawner",
                         daemon=True).start()

    def call(self, func: Callable[[], _T]) -> _T:
        box: list = []
        with self._cond:
            self._jobs.append((func, box))
            self._cond.notify_all()
            while not box:
                self._cond.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                func, box = self._jobs.pop(0)
            try:
                result = (True, func())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result = (False, e)
            with self._cond:
                box.append(result)
                self._cond.notify_all()


@functools.lru_cache(maxsize=1)
def _spawner() -> _Spawner:
    return _Spawner()


# The held command's shell: it waits for a line on its input, then becomes the command.
_HOLD = 'read _go || exit 1; exec "$@"'


def spawn_held(command: str) -> subprocess.Popen:
    """Start ``command`` (split as a shell splits it) held before it runs: its process
    exists, with the pid it will keep, and becomes the command at :func:`release`.

    Its output (standard output and error) comes on ``stdout``; it runs in a session of
    its own, with this process's user and rights, and stops when this process dies.
    """
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise OptionError(f"cannot split the command {command!r}: {e}") from None
    if not words:
        raise OptionError("the command to run is empty")
    return _start(["/bin/sh", "-c", _HOLD, "sh", *words], None, stdin=subprocess.PIPE,
                  stderr=subprocess.STDOUT)


def release(held: subprocess.Popen, go: bool = True) -> None:
    """Let a held command run (``go``), or end it before it runs."""
    if held.stdin is None:
        return
    with contextlib.suppress(OSError):
        if go:
            held.stdin.write(b"go\n")
        held.stdin.close()
    held.stdin = None


def end(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """Stop a command's whole session: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    return proc.wait()


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT, every: float = 0.5) -> int:
    """Stop ``proc`` as Ctrl-C stops bpftrace (it detaches, prints, exits); if it has not
    exited after ``timeout`` seconds, kill it. Returns its exit status.

    SIGTERM, which bpftrace handles as SIGINT, is sent again every ``every`` seconds:
    bpftrace 0.17 loses one that arrives while it is not waiting for events (see
    :mod:`.shim`), and unlike SIGINT, whose default action it restores while exiting, a
    repeated SIGTERM cannot kill it half-way.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(every)
    if proc.poll() is None:
        proc.kill()
    return proc.wait()
