"""How often and for how long each BPF program ran: the kernel's own run statistics.

The kernel counts, per program, its runs (``run_cnt``) and the time spent in them
(``run_time_ns``) only while statistics are enabled, machine-wide: while the sysctl
``kernel.bpf_stats_enabled`` is 1 (an administrator's choice) or while any process holds a
``BPF_ENABLE_STATS`` descriptor. Taking one needs CAP_SYS_ADMIN, which the notebook kernel
does not keep: its launcher takes one as root before it drops privileges and passes it
on, inherited, its number named in :data:`FD_ENV`. A process that holds CAP_SYS_ADMIN
itself takes one at :func:`acquire`. While statistics are enabled every BPF program on the
machine pays for two clock reads per run (:data:`PRICE`); ``EBPF_MAGIC_BPF_STATS=off``
(:data:`SETTING_ENV`) in the launcher's or this process's environment, or :func:`disable`,
turns that off.

This module holds this process's descriptor (:func:`acquire`, :func:`release`; the
kernel drops it with the process), says whether statistics are being counted and since
when (:func:`status`), and reads programs' counters by descriptor, by id, or from another
process's ``/proc/PID/fdinfo``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ebpf_magic.kernel import host, sysbpf

FD_ENV = "EBPF_MAGIC_STATS_FD"
"""Names the inherited ``BPF_ENABLE_STATS`` descriptor a launcher passes to the kernel."""
SETTING_ENV = "EBPF_MAGIC_BPF_STATS"
"""``off`` (or ``0``, ``no``, ``false``): take no statistics descriptor, in a launcher or here."""
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
STATS_LINK = "anon_inode:bpf-stats"  # what /proc/PID/fd/N names a statistics descriptor as
PROG_LINK = "anon_inode:bpf-prog"
PROBE_MAX_AGE = 1.0  # seconds a test of whether the kernel counts is trusted
PRICE = ("two clock reads a run: about 20 ns on bare metal, about 90 ns measured in a VM "
         "(bench/overhead.py)")
"""What run statistics cost every BPF program on the machine while they are enabled."""

HOW_TO_ENABLE = (
    "The kernel counts BPF programs' runs and run time only while statistics are enabled. "
    "Start the notebook kernel from a root Jupyter server through the eBPF kernelspec "
    "(`sudo ./run lab`, or `python -m ebpf_magic install-kernel`): its launcher enables them "
    "for the kernel's lifetime. Or, as root, `sysctl kernel.bpf_stats_enabled=1` (until set "
    "back to 0). Either way every BPF program on the machine then pays " + PRICE + ".")


def setting_off(env: Mapping[str, str] | None = None) -> bool:
    """True when ``env`` (default: this process's) turns statistics off (:data:`SETTING_ENV`)."""
    value = (os.environ if env is None else env).get(SETTING_ENV, "")
    return value.strip().lower() in ("off", "0", "no", "false")


@dataclass(frozen=True)
class RunStats:
    """One program's counters: ``run_cnt`` runs taking ``run_time_ns`` in all.

    ``name`` is the kernel's (at most 15 characters; "" where only ``/proc`` was read);
    ``kind`` the program type as bpftool names it.
    """

    prog_id: int
    name: str
    kind: str
    run_cnt: int
    run_time_ns: int


def of_fd(fd: int) -> RunStats:
    """The counters of the program behind descriptor ``fd``."""
    info = sysbpf.prog_info(fd)
    return RunStats(info.id, info.name.decode(errors="replace"), info.kind, info.run_cnt,
                    info.run_time_ns)


def machine() -> list[RunStats]:
    """Every program loaded on the machine; PermissionError without CAP_SYS_ADMIN."""
    out = []
    for prog_id in sysbpf.loaded_prog_ids():
        try:
            fd = sysbpf.prog_fd_by_id(prog_id)
        except FileNotFoundError:  # unloaded meanwhile
            continue
        try:
            out.append(of_fd(fd))
        finally:
            os.close(fd)
    return out


def may_enable() -> bool:
    """True when this process holds CAP_SYS_ADMIN: it may enable statistics, and list every
    program on the machine."""
    return bool(host.effective_caps() >> host.CAP_SYS_ADMIN & 1)


def prog_fds(pid: int | str = "self") -> list[int]:
    """Descriptors of BPF programs that process ``pid`` holds (those this process may see)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    out = []
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"{base}/{name}") == PROG_LINK:
                out.append(int(name))
    return sorted(out)


def of_process(pid: int | str = "self") -> list[RunStats]:
    """The counters of every program process ``pid`` holds a descriptor of, each once.

    Read from ``/proc/PID/fdinfo``, which gives no program names (``name`` is "").
    Empty for a process this one may not inspect, or that exited.
    """
    seen: dict[int, RunStats] = {}
    for fd in prog_fds(pid):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            stats = RunStats(int(fields["prog_id"]), "",
                             sysbpf.PROG_TYPES.get(int(fields["prog_type"]), ""),
                             int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
        except (KeyError, ValueError):
            continue
        seen.setdefault(stats.prog_id, stats)
    return list(seen.values())


def owners() -> dict[int, list[int]]:
    """``{program id: [process ids]}``: which processes hold a descriptor of each program,
    of the processes whose descriptors this one may read (root: all of them)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for stats in of_process(int(entry)):
                out.setdefault(stats.prog_id, []).append(int(entry))
    return out


def comm(pid: int) -> str:
    """The command name of process ``pid`` ("" once it exited)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int | None = None) -> list[int]:
    """Process ids of ``pid``'s (default: this process's) children, theirs, and so on."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, pending = [], list(parents.get(root, []))
    while pending:
        child = pending.pop()
        out.append(child)
        pending += parents.get(child, [])
    return sorted(out)


def holders() -> list[int]:
    """Ids of the processes this one may inspect that hold a statistics descriptor."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/fd/{fd}") == STATS_LINK:
                    out.append(int(entry))
                    break
    return sorted(out)


# -- this process's descriptor and what it knows --------------------------------------


@dataclass(frozen=True)
class Status:
    """Whether the kernel counts run statistics now, and why.

    ``source``: ``descriptor`` (this process holds one), ``sysctl`` (an administrator set
    ``kernel.bpf_stats_enabled``), ``elsewhere`` (another process holds a descriptor: they
    stop when it lets go), ``off``, or ``disabled`` (turned off here by the setting).
    ``since`` is the ``time.monotonic()`` from which this process knows they count (None
    where it does not know). ``hint`` says how to enable them where they are not counted.
    """

    counting: bool
    source: str
    detail: str
    since: float | None = None
    hint: str = ""


class _Holder:
    """This process's statistics descriptor, if any, and the setting that forbids one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.origin = ""
        self.since: float | None = None
        self.disabled = setting_off()
        self.probed: tuple[float, bool] | None = None

    def adopt_inherited(self) -> bool:
        """Hold the descriptor a launcher passed (:data:`FD_ENV`), if it is one.

        The variable is removed either way, so processes started from here are not told of
        a descriptor they do not have; the descriptor stops being inherited by them.
        """
        text = os.environ.pop(FD_ENV, "")
        if not text.isdigit():
            return False
        fd = int(text)
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != STATS_LINK:
                return False
        except OSError:
            return False
        if self.disabled:
            os.close(fd)
            return False
        os.set_inheritable(fd, False)
        self.fd, self.origin, self.since = fd, "passed on by the launcher", time.monotonic()
        return True

    def take(self) -> bool:
        """Enable statistics with this process's own CAP_SYS_ADMIN, where it holds it."""
        if self.disabled or not may_enable():
            return False
        try:
            fd = sysbpf.enable_stats()
        except OSError:  # a kernel before 5.8, or a capability refused by an LSM
            return False
        self.fd, self.origin, self.since = fd, "taken by this process", time.monotonic()
        return True

    def counting_now(self) -> bool:
        """Whether the kernel counts runs now: a ``return 0`` program run once, its count read.

        Remembered for :data:`PROBE_MAX_AGE` seconds. False where no program can be loaded.
        """
        now = time.monotonic()
        if self.probed is not None and now - self.probed[0] < PROBE_MAX_AGE:
            return self.probed[1]
        try:
            fd = sysbpf.load_return_zero("ebpf_magic_stat")
        except OSError:
            counting = False
        else:
            try:
                sysbpf.test_run(fd)
                counting = of_fd(fd).run_cnt > 0
            except OSError:
                counting = False
            finally:
                os.close(fd)
        self.probed = (now, counting)
        return counting


_holder = _Holder()


def acquire(take: bool = True) -> None:
    """Make sure the kernel counts, where this process may: hold the descriptor a launcher
    passed on, or (with ``take``) take one with CAP_SYS_ADMIN. Idempotent and cheap once
    held; nothing where the setting is off."""
    with _holder.lock:
        if _holder.fd is None and not _holder.adopt_inherited() and take:
            _holder.take()


def release() -> bool:
    """Close this process's descriptor; False when it held none.

    The kernel stops counting unless ``kernel.bpf_stats_enabled`` is set or another process
    holds one. A launcher's descriptor cannot be taken back without CAP_SYS_ADMIN.
    """
    with _holder.lock:
        fd, _holder.fd, _holder.since, _holder.probed = _holder.fd, None, None, None
    if fd is None:
        return False
    os.close(fd)
    return True


def disable() -> bool:
    """Turn statistics off for this process: release its descriptor and take none again
    until :func:`enable`. Returns whether it held one."""
    _holder.disabled = True
    return release()


def enable() -> Status:
    """Allow statistics again, :func:`acquire` them where this process may; the
    :func:`status` that gives."""
    _holder.disabled = False
    acquire()
    return status()


def held() -> int | None:
    """The descriptor this process holds, or None."""
    return _holder.fd


def sysctl_enabled() -> bool:
    """True when an administrator set ``kernel.bpf_stats_enabled`` to 1."""
    try:
        return SYSCTL.read_text().strip() == "1"
    except OSError:
        return False


def status() -> Status:
    """Whether the kernel counts run statistics now, who enabled them, or how to."""
    if _holder.fd is not None:
        return Status(True, "descriptor", f"enabled while this process runs: it holds a "
                      f"BPF_ENABLE_STATS descriptor ({_holder.origin})", _holder.since)
    if sysctl_enabled():
        return Status(True, "sysctl", "enabled machine-wide: kernel.bpf_stats_enabled = 1")
    if _holder.counting_now():
        return Status(True, "elsewhere", "enabled by another process's BPF_ENABLE_STATS "
                      "descriptor (bpftool prog profile, bpftop...): they stop when it lets go")
    if _holder.disabled:
        return Status(False, "disabled", "off: turned off here (EBPF_MAGIC_BPF_STATS=off or "
                      "%bpf stats off), and nothing else enables them",
                      hint="`%bpf stats on` takes them again where this process may "
                      "(CAP_SYS_ADMIN); otherwise: " + HOW_TO_ENABLE)
    return Status(False, "off", "off: kernel.bpf_stats_enabled = 0 and no process holds a "
                  "BPF_ENABLE_STATS descriptor", hint=HOW_TO_ENABLE)
