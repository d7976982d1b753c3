"""The compile worker seen from the notebook's process: start it, ask it, survive it.

BCC compiles and loads in a separate process (:mod:`.worker`), so a compiler
crash, an LLVM fatal error, a hang or a runaway allocation ends that process,
not the user's. Programs already running hold their own descriptors and are
unaffected. A dead worker is started again on the next request.

Its bounds are :data:`ebpf_magic.internal.settings.compile_timeout` (each request) and
:data:`~ebpf_magic.internal.settings.compile_memory` (each worker, from its start):
``%config BPFMagics.compile_timeout = 180`` in a notebook.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ebpf_magic import suggest
from ebpf_magic.backend.bcc import protocol
from ebpf_magic.errors import CompileError
from ebpf_magic.internal import settings

_TAIL_LINES = 8
_NOTHING_LOST = "nothing was attached, other programs are unaffected"


class Worker:
    """One worker process: its socket, its stderr file and its request lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._stderr: int | None = None
        self._ready = False
        self._owner = 0
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int | None:
        """The worker's process id, if one is running."""
        return self._proc.pid if self._alive() else None

    def start(self) -> None:
        """Start the worker unless one is running (returns without waiting for it)."""
        with self._lock:
            self._ensure()

    def next_id(self) -> int:
        """A fresh id naming one program in the worker between its compile and its load."""
        return next(self._ids)

    def request(self, message: dict[str, Any],
                timeout: float | None = None) -> tuple[dict[str, Any], list[int]]:
        """Send ``message``; return the reply and the descriptors it carried.

        Raises :class:`~ebpf_magic.errors.CompileError` when the worker crashes or
        has not answered in full within ``timeout`` (default
        :data:`~ebpf_magic.internal.settings.compile_timeout`) seconds of the call, its
        reply's last byte included; the worker is then gone and the next request starts a
        new one. An interrupt stops the worker
        too, and propagates.
        """
        timeout = settings.compile_timeout if timeout is None else timeout
        with self._lock:
            self._ensure()
            if self._ready and select.select([self._sock], [], [], 0)[0]:
                self._stop()  # it died between requests: its end of the socket is closed
                self._ensure()
            deadline = time.monotonic() + timeout
            try:
                if not self._ready:
                    protocol.receive(self._sock, deadline)
                    self._ready = True
                os.ftruncate(self._stderr, 0)
                protocol.send(self._sock, message, deadline=deadline)
                return protocol.receive(self._sock, deadline)
            except protocol.Timeout:
                self._stop()
                raise CompileError(
                    f"the compiler took longer than {timeout:g} s on this cell and was "
                    f"stopped; {_NOTHING_LOST}",
                    "If the program is just large, raise the bound: "
                    "`%config BPFMagics.compile_timeout = 300`.") from None
            except (OSError, protocol.Closed):
                raise self._crashed() from None
            except BaseException:
                self._stop()
                raise

    def _crashed(self) -> CompileError:
        proc = self._proc
        status = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = proc.wait(timeout=5)
        tail = self._stderr_tail()
        self._stop()
        if status is not None and status < 0:
            try:
                how = f"crashed ({signal.Signals(-status).name})"
            except ValueError:
                how = f"crashed (signal {-status})"
        else:
            how = f"exited (status {status})" if status is not None else "stopped answering"
        message = f"the compiler {how} on this cell; {_NOTHING_LOST}"
        if tail:
            message += ". Its last words:\n" + "\n".join("    " + ln for ln in tail)
        hint = ("This is a bug in BCC or LLVM triggered by this code; changing the construct "
                "it names usually avoids it. The compiler restarts on the next cell.")
        construct = suggest.unsupported_construct("\n".join(tail))
        if construct:
            hint = construct[0].upper() + construct[1:] + " The compiler restarts on the next cell."
        if any(w in "\n".join(tail) for w in ("bad_alloc", "MemoryError")) \
                or status == -signal.SIGKILL:
            hint += (f" If it ran out of memory, the worker's bound is "
                     f"{settings.compile_memory >> 20} MiB "
                     "(`%config BPFMagics.compile_memory`).")
        return CompileError(message, hint)

    def _stderr_tail(self) -> list[str]:
        if self._stderr is None:
            return []
        try:
            size = os.fstat(self._stderr).st_size
            start = max(0, size - 16384)
            text = os.pread(self._stderr, size - start, start).decode("utf-8", "replace")
        except OSError:
            return []
        lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        return [ln[:300] for ln in lines[-_TAIL_LINES:]]

    def _alive(self) -> bool:
        return (self._proc is not None and self._proc.poll() is None
                and self._owner == os.getpid())

    def _ensure(self) -> None:
        if self._alive():
            return
        self._stop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd, path = tempfile.mkstemp(prefix="ebpf_magic-compiler-", suffix=".log")
        os.unlink(path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        # numpy's BLAS would reserve address space per CPU for threads the worker never uses
        # (the worker finds BCC the way this process would, and reports it missing itself)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ebpf_magic.backend.bcc.worker", "--fd",
                 str(child.fileno()), "--parent", str(os.getpid()), "--memory",
                 str(settings.compile_memory)],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, pass_fds=[child.fileno()],
                env=env, start_new_session=True)
        except BaseException:
            parent.close()
            os.close(fd)
            raise
        finally:
            child.close()
        self._sock, self._stderr, self._ready, self._owner = parent, fd, False, os.getpid()

    def _stop(self) -> None:
        """Kill the worker (if any) and release what belongs to it."""
        proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                os.close(self._stderr)
            self._stderr = None
        self._ready = False

    def close(self) -> None:
        """Stop the worker; the next request starts a new one."""
        with self._lock:
            self._stop()


_worker = Worker()


def worker() -> Worker:
    """The process's compile worker."""
    return _worker


def prestart() -> None:
    """Start the worker now, so the first compile does not wait for BCC to import."""
    _worker.start()


atexit.register(_worker.close)
