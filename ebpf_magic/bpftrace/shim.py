"""How bpftrace runs with the eBPF kernel's rights and no more: a ``geteuid()`` that says 0.

bpftrace 0.17 refuses to start unless its effective uid is 0 ("bpftrace currently only
supports running as the root user"), before it tries anything; newer releases ask for
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH instead, but only when ``geteuid()`` is not 0.
Neither check decides what bpftrace may do: the kernel does, from the process's
capabilities. The eBPF kernel's account has CAP_BPF and CAP_PERFMON (and its tracefs
group), which is what loading and attaching need, and must never hold uid 0 or the
CAP_DAC_* overrides.

So bpftrace is started as the kernel's own account, with its own capabilities, with this
small library preloaded (``LD_PRELOAD``): its ``geteuid()`` returns 0, which answers the
check of every release, and nothing else changes. The library removes ``LD_PRELOAD``
from the environment as it loads, so processes bpftrace starts (``system()`` with
``--unsafe``) run without it.

It also makes bpftrace stop when the process that started it is gone. bpftrace 0.17 sets a
flag on SIGINT or SIGTERM and looks at it only when its wait for events is interrupted: a
signal that arrives while it is doing anything else (handling events, or just before its
first wait) is noted and never acted on, so the parent-death signal alone can be lost; and
once its parent is gone, its next line of output would raise SIGPIPE and kill it before it
removed its uprobes. With ``EBPF_MAGIC_WATCH_PARENT`` set, the library catches SIGPIPE
(the write fails instead; its children still get the default action) and a thread of the
library (taking no signals itself) sends bpftrace's main thread SIGTERM every second once
its parent has changed. Both close narrow races (a signal between two waits, a write
between the parent's exit and its death signal): rare, but each would leave a bpftrace
running, or its uprobes defined, for good. Root's bpftrace
loads root's own copy for this; the uid check it answers is then moot.

Where it is kept: root builds it once (``scripts/setup.sh``: :func:`install`)
into ``/var/cache/ebpf_magic/bpftrace/``, root's and not writable by anyone else, and the
kernel's account uses that copy. A user for whom root has built none builds its own copy
into its own cache (``~/.cache/ebpf_magic/bpftrace/``, needs ``gcc``), which only that user
runs. A copy in root's cache is used only if it and the directories above it are root's
and not writable by group or others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from ebpf_magic.errors import BPFError
from ebpf_magic.internal import cache

SOURCE = r"""/* ebpf_magic: bpftrace's uid check answered; the kernel still checks capabilities. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

uid_t geteuid(void) { return 0; }

static pid_t parent;

static void ignore(int sig) { (void)sig; }

/* bpftrace 0.17 loses a stop signal that arrives while it is not waiting for events: once
   the process that started it is gone, ask it again every second until it stops. */
static void *watch(void *unused)
{
    (void)unused;
    for (;;) {
        sleep(1);
        if (getppid() != parent)
            syscall(SYS_tgkill, getpid(), getpid(), SIGTERM);
    }
    return NULL;
}

__attribute__((constructor)) static void ebpf_magic_start(void)
{
    pthread_t thread;
    sigset_t all, old;

    unsetenv("LD_PRELOAD"); /* children of bpftrace run without this library */
    if (!getenv("EBPF_MAGIC_WATCH_PARENT"))
        return;
    unsetenv("EBPF_MAGIC_WATCH_PARENT");
    /* With its reader gone, a write to bpftrace's output must fail, not kill it before it
       removes what it defined: a handler, not SIG_IGN, so that its children get the default. */
    signal(SIGPIPE, ignore);
    parent = getppid();
    sigfillset(&all); /* the watcher takes no signal: they stay bpftrace's own thread's */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (pthread_create(&thread, NULL, watch, NULL) == 0)
        pthread_detach(thread);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}
"""
NAME = f"euid0-{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so"
SUBDIR = "bpftrace"
WATCH = "EBPF_MAGIC_WATCH_PARENT"  # set: the library stops bpftrace once its parent is gone


def needed() -> bool:
    """True unless this process's effective uid is already 0."""
    return os.geteuid() != 0


def system_path() -> Path:
    """Where root keeps the library (readable by every user)."""
    return cache.SYSTEM_CACHE / SUBDIR / NAME


def _trusted(path: Path) -> bool:
    """True when ``path`` and every directory above it are root's and not group- or
    other-writable (a sticky directory such as /tmp is not trusted either)."""
    try:
        for p in [path, *path.parents]:
            st = p.lstat()
            if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or \
                    stat.S_ISLNK(st.st_mode):
                return False
    except OSError:
        return False
    return True


def user_path() -> Path:
    """Where this user builds its own copy."""
    return cache.cache_dir() / SUBDIR / NAME


def find() -> Path | None:
    """The library a non-root process preloads into bpftrace: root's copy if trusted, else
    this user's own copy if built; None if there is none yet."""
    system = system_path()
    if _trusted(system):
        return system
    own = user_path()
    return own if own.is_file() and own.stat().st_uid == os.geteuid() else None


def build(target: Path) -> Path:
    """Compile :data:`SOURCE` into ``target`` (written whole, readable by everyone)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BPFError("cannot build bpftrace's uid shim: no C compiler (gcc) here",
                       "Run scripts/setup.sh as root once (it builds the shim for every "
                       "user), or install gcc.")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp, "euid0.c")
        src.write_text(SOURCE)
        out = Path(tmp, NAME)
        done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(out), str(src)],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BPFError(f"cannot build bpftrace's uid shim: {done.stderr.strip()[:300]}",
                           "Run scripts/setup.sh as root once, or check gcc.")
        out.chmod(0o644)
        os.replace(out, target)
    return target


def preload() -> Path:
    """The library to preload into bpftrace from this process, built if missing: root's
    copy (for root, only that one), else this user's own."""
    if not needed():
        return install()
    found = find()
    return found if found is not None else build(user_path())


def install() -> Path:
    """Build root's copy, which every user may preload (run as root, by scripts/setup.sh),
    and remove copies of earlier versions of the library there."""
    if os.geteuid() != 0:
        raise BPFError("only root builds the shared copy of bpftrace's uid shim",
                       "Run scripts/setup.sh as root.")
    path = system_path() if _trusted(system_path()) else build(system_path())
    for old in path.parent.glob("euid0-*.so"):
        if old != path:
            old.unlink()
    return path
