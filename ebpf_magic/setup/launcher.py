"""Start an IPython kernel that holds the capabilities BPF needs and no others.

A Jupyter kernelspec runs ``python -I -m ebpf_magic.setup.launcher -f {connection_file}``.

Started by root (a Jupyter server running as root), the launcher becomes the
unprivileged account :data:`ACCOUNT` (made by ``scripts/setup.sh``): it keeps
:func:`wanted` across the change of user and no other capability, so the kernel
can load BPF but cannot write root's files, read other users' files or become
root again. Started by anyone else, it keeps :func:`wanted` of what it holds
(an interpreter granted file capabilities holds what ``setcap`` gave it).

Either way it removes every other capability from the bounding set, raises the
kept ones as ambient capabilities so that processes the kernel starts (the
compile worker, ``!bpftool``) keep them, sets ``no_new_privs`` so that no
set-user-id or file-capability program run from a cell gains more, lifts
``RLIMIT_MEMLOCK``, and replaces itself with ``python -I -m ipykernel_launcher`` in
the environment :func:`account_env` gives (started by root) or its own (otherwise).
Where it holds CAP_SYS_ADMIN (as root) it first enables BPF run statistics and passes
the kernel the descriptor that keeps them on (:func:`pass_stats`), unless
``EBPF_MAGIC_BPF_STATS=off``.

Run ``python -m ebpf_magic.setup.launcher --show`` to print the set it would keep.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ebpf_magic.internal import files
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import runstats, sysbpf
from ebpf_magic.kernel.host import (
    CAP_BPF,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_RESOURCE,
    CAP_SYSLOG,
)

ACCOUNT = "ebpf-kernel"
"""The account a root-started kernel runs as."""

CAP_SETPCAP = 8
CAP_IPC_LOCK = 14

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

ENV_KEPT = ("PATH", "TERM", "COLORTERM", "NO_COLOR", "COLUMNS", "LINES", "LANG", "LANGUAGE",
            "TZ", "MPLBACKEND", "JPY_PARENT_PID", "JPY_SESSION_NAME")
"""What a root-started kernel keeps of the server's environment, with every variable whose
name starts with one of :data:`ENV_KEPT_PREFIXES` except :data:`ENV_DROPPED`: the locale,
the terminal, ``PATH`` (absolute entries only), matplotlib's backend, what ipykernel reads
(``JPY_PARENT_PID`` to exit with the server, ``JPY_SESSION_NAME``) and ebpf_magic's
own settings. Nothing else: no tokens (``JUPYTER_*``, ``JPY_API_TOKEN``),
no ``PYTHON*`` or ``LD_*``, no credentials, no proxies, no root's directories."""
ENV_KEPT_PREFIXES = ("LC_", "EBPF_MAGIC_")
ENV_DROPPED = ("EBPF_MAGIC_CACHE",)  # a directory of root's
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(Exception):
    """The kernel cannot be started with the rights it should have."""


def memlock_liftable() -> bool:
    """True when this process's locked-memory limit is, or may be made, unlimited."""
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return hard == resource.RLIM_INFINITY or bool(
        kernel.process_caps("CapEff") >> CAP_SYS_RESOURCE & 1)


def wanted(version: tuple[int, int] | None = None,
           memlock_unlimited: bool | None = None) -> set[int]:
    """The capabilities the kernel process needs on this host.

    CAP_BPF and CAP_PERFMON load and attach tracing programs (kernel >= 5.8;
    CAP_SYS_ADMIN before that), CAP_NET_ADMIN attaches XDP and tc programs,
    CAP_SYSLOG makes /proc/kallsyms show the addresses that kernel stacks are
    symbolized with, CAP_SYS_RESOURCE lifts the locked-memory limit BPF maps
    are charged to before 5.11. Perf ring buffers are locked memory at any
    version: where the limit cannot be lifted (``memlock_unlimited`` false; by
    default :func:`memlock_liftable`) CAP_IPC_LOCK lets them exceed it.
    tracefs, where uprobes are defined, is reached through its group
    (``scripts/setup.sh``), not through a file-access override.
    """
    version = kernel.version_tuple() if version is None else version
    caps = {CAP_BPF, CAP_PERFMON} if version >= (5, 8) else {CAP_SYS_ADMIN}
    caps |= {CAP_NET_ADMIN, CAP_SYSLOG}
    if version < (5, 11):
        caps.add(CAP_SYS_RESOURCE)
    elif not (memlock_liftable() if memlock_unlimited is None else memlock_unlimited):
        caps.add(CAP_IPC_LOCK)
    return caps


def last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAP_BPF


def mask(caps: set[int]) -> int:
    return sum(1 << c for c in caps)


def _capget() -> tuple[int, int, int]:
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    join = lambda field: getattr(data[0], field) | getattr(data[1], field) << 32  # noqa: E731
    return join("effective"), join("permitted"), join("inheritable")


def _capset(bits: int) -> None:
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    for i, part in enumerate((bits & 0xFFFFFFFF, bits >> 32)):
        data[i].effective = data[i].permitted = data[i].inheritable = part
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _prctl(*args: int) -> None:
    if _libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl{args} failed: {os.strerror(err)}")


def _raise_memlock() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY,) * 2)
    except (ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def _shrink_bounding_set(keep: int) -> None:
    effective, _, _ = _capget()
    if effective >> CAP_SETPCAP & 1:
        for cap in range(last_cap() + 1):
            if not keep >> cap & 1:
                _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    elif os.geteuid() == 0:
        print("ebpf_magic.setup.launcher: no CAP_SETPCAP, so the bounding set stays as it is and "
              "programs the kernel runs may regain root's capabilities", file=sys.stderr)


def _hold(keep: int) -> None:
    """Make ``keep`` the effective, permitted, inheritable and ambient sets."""
    _capset(keep)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(last_cap() + 1):
        if keep >> cap & 1:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def _keepable(caps: set[int]) -> tuple[int, int]:
    """(the wanted mask, the part of it this process holds)."""
    known = mask({c for c in caps if c <= last_cap()})
    return known, known & _capget()[1]


def _warn_missing(known: int, keep: int) -> None:
    missing = known & ~keep
    if missing:
        lacking = ", ".join(kernel.cap_names(missing))
        print(f"ebpf_magic.setup.launcher: this process lacks {lacking}; "
              "the kernel runs without them", file=sys.stderr)


def restrict(caps: set[int]) -> int:
    """Keep only ``caps`` (of those held) in every capability set; return the kept mask."""
    known, keep = _keepable(caps)
    _raise_memlock()
    _shrink_bounding_set(keep)
    _hold(keep)
    _warn_missing(known, keep)
    return keep


def account(name: str | None = None) -> pwd.struct_passwd:
    """The password entry of ``name`` (default :data:`ACCOUNT`); LaunchError if missing."""
    name = name or ACCOUNT
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise LaunchError(
            f"there is no user {name!r} to run the eBPF kernel or engine as, and neither "
            "runs as root. Run scripts/setup.sh as root, which creates it.") from None


def become(entry: pwd.struct_passwd, caps: set[int]) -> int:
    """As root, turn into ``entry``'s user holding only ``caps``; return the kept mask.

    The bounding set shrinks first (that needs CAP_SETPCAP, which root has), then
    ``PR_SET_KEEPCAPS`` carries the permitted set across setresuid, and the kept
    capabilities are raised again, ambient included, as the new user.
    """
    known, keep = _keepable(caps)
    _raise_memlock()
    _shrink_bounding_set(keep)
    _prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    _prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    _hold(keep)
    _warn_missing(known, keep)
    return keep


def account_env(entry: pwd.struct_passwd, env: dict[str, str],
                keep: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a process started by root as ``entry``'s account.

    Only :data:`ENV_KEPT` (and ``keep``) of ``env``, with home, user and XDG
    directories the account's own.
    """
    out = {k: v for k, v in env.items()
           if (k in ENV_KEPT or k in keep or k.startswith(ENV_KEPT_PREFIXES))
           and k not in ENV_DROPPED}
    out["PATH"] = ":".join(p for p in out.get("PATH", _DEFAULT_PATH).split(":")
                           if os.path.isabs(p)) or _DEFAULT_PATH
    home = entry.pw_dir
    out.update(HOME=home, USER=entry.pw_name, LOGNAME=entry.pw_name,
               XDG_CACHE_HOME=os.path.join(home, ".cache"),
               XDG_CONFIG_HOME=os.path.join(home, ".config"),
               XDG_DATA_HOME=os.path.join(home, ".local", "share"),
               XDG_STATE_HOME=os.path.join(home, ".local", "state"))
    return out


# Directories below a sys.path entry that are not imported from through it: the
# interpreter's own site directory beside a virtualenv's, say.
_OTHER_SITES = ("site-packages", "dist-packages")


def _named_and_real(entry: str) -> set[Path]:
    """The path as named and where its links lead: either chain could be swapped."""
    return {Path(os.path.abspath(entry or os.curdir)), Path(os.path.realpath(entry or os.curdir))}


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    """Whether ``path`` exists and is of ``kind``. A path this process may not even look up
    (a ``sys.path`` entry that is no path, such as an editable install's hook name, read
    from a folder the account may not enter) is nothing it could change either."""
    try:
        return kind(path.stat().st_mode)
    except OSError:
        return False


def _may_change(path: str | os.PathLike, st: os.stat_result | None = None) -> bool:
    """This process may write ``path``, or owns it (and so may make it writable again:
    a file of its own at mode 0444 is as good as writable)."""
    try:
        return os.access(path, os.W_OK) or (st or os.stat(path)).st_uid == os.geteuid()
    except OSError:
        return False


def _writable_above(path: Path) -> str | None:
    """``path`` or the nearest directory above it this process may change, sticky ones aside.

    A sticky directory (``/tmp``) above ``path`` only counts when the account owns the
    entry below it: it may create names there but not replace others' entries.
    """
    child = None
    for p in (path, *path.parents):
        if _may_change(p):
            sticky = p.stat().st_mode & stat.S_ISVTX
            if not sticky or child is None or child.stat().st_uid == os.geteuid():
                return str(p)
        child = p
    return None


def _writable_inside(top: Path, roots: set[Path]) -> list[str]:
    """Directories and files under ``top`` (itself not writable) this process may change.

    A writable directory is named, not entered. Other roots and directories named like
    a site directory are left to their own walk, or not imported from here at all;
    linked directories are walked where they lead.
    """
    found, pending, seen = [], [str(top)], set()
    while pending:
        here = pending.pop()
        if here in seen:
            continue
        seen.add(here)
        try:
            entries = list(os.scandir(here))
        except OSError:  # a directory the account may not list is not walked
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:  # a dangling link: nothing to run
                continue
            if not entry.is_dir():
                if _may_change(entry.path, st):
                    found.append(entry.path)
                continue
            target = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            if Path(target) in roots or entry.name in _OTHER_SITES:
                continue
            if _may_change(target, st):
                found.append(entry.path)
            else:
                pending.append(target)
    return found


def writable_code_paths(paths: list[str] | None = None) -> list[str]:
    """Paths this process may change that hold code a root-started launcher runs.

    Checked as the kernel's or engine's account. Root runs, at its next start, the
    interpreter (and ``pyvenv.cfg``, which chooses its paths), the ``.pth`` files of
    site directories and the modules it imports from this package and from ``sys.path``
    (``paths`` in its place); root's Jupyter server reads the environment's
    ``etc/jupyter`` and runs its kernelspecs. A file the account may change there (it
    may write it, or owns it and so may make it writable), or a directory there or above
    it the account may change, would let it choose what root runs. Every file and
    directory below those is checked (about 30,000 in this project's virtualenv, 0.1 s).
    """
    package = Path(__file__).resolve().parents[1]
    # the Jupyter server's configuration and kernelspecs in this environment, which root's
    # server reads and runs (ebpf_magic.setup.lab)
    jupyter = [os.path.join(sys.prefix, *d) for d in (("etc", "jupyter"),
                                                      ("share", "jupyter", "kernels"))]
    named = [str(package), os.path.dirname(sys.executable), *jupyter,
             *(sys.path if paths is None else paths)]
    singles = {p for e in named + [sys.executable, os.path.join(sys.prefix, "pyvenv.cfg")]
               for p in _named_and_real(e) if _is(p, stat.S_ISREG)}
    found = {str(p) for p in singles if _may_change(p)}
    found |= {w for p in singles if (w := _writable_above(p.parent))}
    trees = {p for e in named for p in _named_and_real(e) if _is(p, stat.S_ISDIR)}
    roots = {p.resolve() for p in trees}
    walked = set()
    for tree in sorted(trees):
        above = _writable_above(tree)
        if above:
            found.add(above)
        elif tree.resolve() not in walked:
            walked.add(tree.resolve())
            found.update(_writable_inside(tree.resolve(), roots - {tree.resolve()}))
    return sorted(found)


def _connection_file(argv: list[str]) -> tuple[int, str, str] | None:
    """(index, flag, path) of ``-f PATH`` or ``-f=PATH``: ``argv[index] == flag + path``."""
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return i + 1, "", argv[i + 1]
        for flag in ("-f=", "--f="):
            if arg.startswith(flag):
                return i, flag, arg[len(flag):]
    return None


def hand_over_connection(argv: list[str], text: bytes) -> list[str]:
    """``argv`` naming a private copy of the connection file, owned by this process's user.

    The server's file is readable by root only. The copy is an anonymous memory
    file (mode 0600) inherited across exec as ``/proc/self/fd/N``; it goes away
    with the kernel, so nothing is left behind.
    """
    found = _connection_file(argv)
    if found is None:
        return argv
    index, flag, _ = found
    out = list(argv)
    out[index] = flag + memory_file("jupyter-connection.json", text)
    return out


def memory_file(name: str, data: bytes) -> str:
    """A private in-memory copy of ``data`` that survives exec: its ``/proc/self/fd`` path.

    Made after the switch from bytes root read before it, it hands the new account a
    file it could not open; made before the switch, it would be root's and unreadable.
    """
    fd = os.memfd_create(name, 0)
    os.fchmod(fd, 0o600)
    os.write(fd, data)
    os.set_inheritable(fd, True)
    return f"/proc/self/fd/{fd}"


def refuse_writable_code(entry: pwd.struct_passwd) -> None:
    """LaunchError if ``entry``'s account (this process now) may change code root runs."""
    unsafe = writable_code_paths()
    if unsafe:
        raise LaunchError(
            f"user {entry.pw_name!r} may write to {', '.join(unsafe[:5])}"
            f"{f' and {len(unsafe) - 5} more' if len(unsafe) > 5 else ''}, which holds code "
            "this launcher runs as root: it could change what the next one runs. Make "
            "these paths root's and not writable by that user (scripts/setup.sh checks "
            "this).")


def no_new_privs() -> None:
    """Nothing this process executes from now on gains privileges (setuid, file caps)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def pass_stats(env: dict[str, str], who: str = "ebpf_magic.setup.launcher") -> dict[str, str]:
    """``env`` naming a ``BPF_ENABLE_STATS`` descriptor the kernel will inherit
    (:data:`~ebpf_magic.kernel.runstats.FD_ENV`), taken now, while this process holds
    CAP_SYS_ADMIN.

    The kernel then sees each program's run count and run time for its lifetime without
    that capability. The descriptor is the one thing of root's it receives, and it does
    nothing but keep statistics enabled; the kernel drops it when it exits. While it is
    held every BPF program on the machine pays two clock reads a run
    (:data:`~ebpf_magic.kernel.runstats.PRICE`), so none is taken where
    ``EBPF_MAGIC_BPF_STATS=off`` (:data:`~ebpf_magic.kernel.runstats.SETTING_ENV`). A
    number already in ``env`` is never passed on: only the descriptor taken here.
    """
    out = {k: v for k, v in env.items() if k != runstats.FD_ENV}
    if runstats.setting_off(env) or not runstats.may_enable():
        return out
    try:
        fd = sysbpf.enable_stats()
    except OSError as e:
        print(f"{who}: cannot enable BPF run statistics ({e}); the kernel runs without them",
              file=sys.stderr)
        return out
    os.set_inheritable(fd, True)
    out[runstats.FD_ENV] = str(fd)
    return out


def _start_as_account(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    entry = account()
    found = _connection_file(argv)
    text = Path(found[2]).read_bytes() if found else b""
    env = pass_stats(dict(os.environ))
    become(entry, wanted())
    refuse_writable_code(entry)
    if not os.access(os.curdir, os.X_OK):
        print(f"ebpf_magic.setup.launcher: user {entry.pw_name!r} may not enter {os.getcwd()}; "
              "files beside the notebook are out of the kernel's reach", file=sys.stderr)
    env = account_env(entry, env)
    output_to_log(env, "kernel.log")
    return hand_over_connection(argv, text), env


LOG_LIMIT = 16 << 20
"""A log of :func:`output_to_log` longer than this (bytes) starts again empty."""


def output_to_log(env: dict[str, str], name: str) -> str:
    """Send this process's stdout and stderr to ``$XDG_STATE_HOME/ebpf_magic/NAME`` of the
    account it now runs as (in ``env``); return that path.

    Root's server or cluster passes its own terminal or log on: whatever the account
    wrote there (terminal escapes that set root's clipboard or title, say) would reach
    root's terminal. The launcher says where the output went, on the old stderr, first.
    """
    state = files.make_dirs(Path(env["XDG_STATE_HOME"], "ebpf_magic"), 0o700)
    path = str(state / name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        if os.fstat(fd).st_size > LOG_LIMIT:
            os.ftruncate(fd, 0)
        print(f"ebpf_magic.setup.launcher: process {os.getpid()} ({env['USER']}) writes its "
              f"output to {path}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.write(fd, f"--- process {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        for target in (1, 2):
            os.dup2(fd, target)
    finally:
        os.close(fd)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--show"]:
        print(",".join(kernel.cap_names(mask(wanted()))))
        return 0
    env = dict(os.environ)
    if CAP_SYS_ADMIN in wanted():
        print("ebpf_magic launcher: this kernel (before 5.8) has no CAP_BPF/CAP_PERFMON, so the "
              "eBPF kernel keeps CAP_SYS_ADMIN, which is nearly all of root: its confinement "
              "does not hold here (docs/privileges.md)", file=sys.stderr)
    try:
        if os.getuid() == 0 or os.geteuid() == 0:
            argv, env = _start_as_account(argv)
        else:
            env = pass_stats(env)
            restrict(wanted())
    except (LaunchError, OSError) as e:
        print(f"ebpf_magic.setup.launcher: {e}", file=sys.stderr)
        return 1
    no_new_privs()
    try:
        os.execve(sys.executable, [sys.executable, "-I", "-m", "ipykernel_launcher", *argv], env)
    except OSError as e:
        print(f"ebpf_magic.setup.launcher: uid {os.getuid()} cannot run {sys.executable}: {e}. The "
              "Python environment must be readable by the kernel's user (scripts/setup.sh "
              "grants it).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
