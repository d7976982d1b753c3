"""``doctor``: can BPF be used here, and which attach types work on this kernel?

:func:`run` checks privileges, the kernel, BTF and tracefs, asks each backend
(through :func:`ebpf_magic.backend.diagnostics`) for its needs (BCC and kernel
headers; clang, libbpf, the ``vmlinux.h`` cache) and which kind of cell it
serves, then learns which attach types really work by loading and attaching
a tiny program of each kind through :class:`~ebpf_magic.program.Program` and watching each one fire.
Every row says what failed, why, and how to fix it. All probes share one
compilation when they can: when an attach fails, the error names the probe,
that row is marked unavailable and the rest are compiled again without it.
Everything it creates (programs, a scratch network namespace with a veth
pair, a USDT test binary) is removed before it returns, and the removal is
verified.

``python -m ebpf_magic doctor`` prints the report; ``%bpf doctor`` shows it
in a notebook.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import html
import os
import platform
import resource
import shutil
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from ebpf_magic import backend
from ebpf_magic.bpftrace import diagnose as bpftrace_checks
from ebpf_magic.errors import (
    AttachError,
    BCCNotFoundError,
    BPFError,
    HeadersMissingError,
    NotPrivilegedError,
    VerifierError,
)
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import runstats, sysbpf, tracefs

OK, WARN, FAIL, UNAVAILABLE, NOT_CHECKED = "ok", "warn", "fail", "unavailable", "not checked"
COLUMNS = ["check", "status", "detail", "fix"]
_COLORS = {OK: "#1a7f37", WARN: "#9a6700", FAIL: "#cf222e", UNAVAILABLE: "#cf222e",
           NOT_CHECKED: "#6e7781"}

FIRE_TIMEOUT = 1.0  # seconds to wait for every attached probe to fire
_CLONE_NEWNET = 0x40000000
_USDT_SOURCE = ("#include <sys/sdt.h>\n"
                "int main(void) { DTRACE_PROBE(ebpf_magic, doctor); return 0; }\n")
_SDT_PACKAGE = "systemtap-sdt-dev (Debian/Ubuntu) or systemtap-sdt-devel (Fedora)"


@dataclass
class Row:
    """One line of the report."""

    check: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    """What :func:`run` found: ``.df`` for analysis, a table for terminals and notebooks."""

    rows: list[Row] = field(default_factory=list)
    elapsed: float = 0.0
    prog_ids: list[int] = field(default_factory=list)  # kernel ids of the test programs

    @property
    def df(self) -> pd.DataFrame:
        return pd.DataFrame([[r.check, r.status, r.detail, r.fix] for r in self.rows],
                            columns=COLUMNS)

    def status(self, check: str) -> str:
        """The status of the row named ``check``."""
        return next(r.status for r in self.rows if r.check == check)

    @property
    def usable(self) -> bool:
        """True when BPF programs can be loaded here: rights, BCC and one working attach type."""
        by = {r.check: r.status for r in self.rows}
        probed = [by[c.check] for c in CHECKS if c.check in by]
        return (by.get("privileges") == OK and by.get("BCC") == OK
                and (not probed or any(s in (OK, WARN) for s in probed)))

    def __str__(self) -> str:
        width = max(shutil.get_terminal_size((100, 24)).columns, 80)
        name_w = max(len(r.check) for r in self.rows) + 2 if self.rows else 10
        status_w = max(len(s) for s in _COLORS) + 2
        indent = " " * (name_w + status_w)
        lines = [f"ebpf_magic doctor: Linux {kernel.release()}, {self.elapsed:.1f} s",
                 f"{'check':<{name_w}}{'status':<{status_w}}detail", ""]
        for r in self.rows:
            detail = textwrap.wrap(r.detail, width - len(indent)) or [""]
            lines.append(f"{r.check:<{name_w}}{r.status:<{status_w}}{detail[0]}")
            lines += [indent + d for d in detail[1:]]
            if r.fix:
                lines += textwrap.wrap("fix: " + r.fix, width, initial_indent=indent,
                                       subsequent_indent=indent + "     ")
        return "\n".join(lines + ["", self.verdict])

    @property
    def verdict(self) -> str:
        if not self.usable:
            return "BPF cannot be used here yet: see the fixes above."
        if not any(r.check == c.check for r in self.rows for c in CHECKS):
            return "BPF programs can be loaded here (attach types were not checked)."
        return "BPF can be used here."

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        cells = []
        for r in self.rows:
            color = _COLORS.get(r.status, "inherit")
            fix = f"<br><i>fix:</i> {html.escape(r.fix)}" if r.fix else ""
            cells.append(f"<tr><td style='text-align:left'>{html.escape(r.check)}</td>"
                         f"<td style='text-align:left;color:{color};font-weight:bold'>"
                         f"{html.escape(r.status)}</td>"
                         f"<td style='text-align:left'>{html.escape(r.detail)}{fix}</td></tr>")
        return (f"<p><b>ebpf_magic doctor</b>: Linux {html.escape(kernel.release())}, "
                f"{self.elapsed:.1f} s. {html.escape(self.verdict)}</p><table><thead><tr>"
                f"<th>check</th><th>status</th><th>detail</th></tr></thead><tbody>{''.join(cells)}"
                "</tbody></table>")


# -- environment checks ---------------------------------------------------------


def check_privileges() -> Row:
    if kernel.has_bpf_rights():
        return Row("privileges", OK, kernel.rights_summary())
    return Row("privileges", FAIL, "not allowed to load BPF programs: " + kernel.rights_summary(),
               kernel.rights_hint())


def check_process() -> Row:
    return Row("process", OK, kernel.identity())


def check_memlock() -> Row:
    limit = kernel.memlock()
    if kernel.version_tuple() >= (5, 11):
        return Row("memlock", OK, f"{limit}; not used: kernels >= 5.11 charge BPF memory "
                   "to the memory cgroup instead")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY or soft >= 64 << 20:
        return Row("memlock", OK, f"{limit} (this kernel charges BPF memory to it)")
    if "CAP_SYS_RESOURCE" in kernel.capabilities():
        return Row("memlock", OK, f"{limit}; BCC raises it when needed (CAP_SYS_RESOURCE held)")
    return Row("memlock", WARN, f"{limit}: this kernel charges BPF maps to the locked-memory "
               "limit, so larger maps fail to load with EPERM",
               "Raise it: `ulimit -l unlimited` in the shell that starts Python, or "
               "LimitMEMLOCK=infinity in a systemd unit.")


def check_run_stats() -> Row:
    """Whether the kernel counts programs' runs (what ``NAME.overhead`` and ``%bpf top``
    show), taking this process's descriptor first as its programs would."""
    runstats.acquire()
    status = runstats.status()
    if status.counting:
        return Row("run statistics", OK, f"{status.detail}; programs' costs are shown (every "
                   f"BPF program on the machine pays {runstats.PRICE} meanwhile: "
                   "`%bpf stats off` or EBPF_MAGIC_BPF_STATS=off turns that off)")
    return Row("run statistics", WARN, f"{status.detail}: what programs cost cannot be shown "
               "(NAME.overhead, %bpf list, %bpf top)", status.hint)


def check_kernel() -> Row:
    return Row("kernel", OK, f"Linux {kernel.release()} ({platform.machine()})")


def check_btf() -> Row:
    if kernel.btf_available():
        return Row("BTF", OK, "/sys/kernel/btf/vmlinux: the kernel's own type information "
                   "(needed by fentry programs and by the libbpf backend's CO-RE reads)")
    return Row("BTF", WARN, "no /sys/kernel/btf/vmlinux: fentry/fexit and LSM programs and the "
               "libbpf backend cannot be used", "Use a kernel built with "
               "CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2021).")


def _mounted(fstype: str) -> list[str]:
    """Mount points of file systems of type ``fstype``."""
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    return [m[1] for m in mounts if len(m) > 2 and m[2] == fstype]


def check_tracefs() -> Row:
    try:
        before = tracefs.root()
        after = tracefs.ensure()
    except PermissionError:
        where = ", ".join(_mounted("tracefs")) or "tracefs"
        return Row("tracefs", WARN, f"{where}: not readable by uid {os.geteuid()}, so "
                   "tracepoints cannot be looked up", "Run with the rights named under privileges.")
    if after is None:
        return Row("tracefs", FAIL, "tracefs is not mounted: tracepoints cannot be found",
                   "As root: `mount -t tracefs tracefs /sys/kernel/tracing`.")
    if before is None:
        return Row("tracefs", OK, f"was not mounted; doctor mounted it at {after}")
    return Row("tracefs", OK, f"mounted at {after}")


def check_debugfs() -> Row:
    where = _mounted("debugfs")
    if where:
        return Row("debugfs", OK, f"mounted at {where[0]}")
    return Row("debugfs", WARN, "not mounted: some BCC versions and tools look for "
               "/sys/kernel/debug/tracing",
               "As root: `mount -t debugfs debugfs /sys/kernel/debug`.")


def check_probe_events() -> Row:
    from ebpf_magic.kernel.link import stale_probe_events

    stale = stale_probe_events()
    if not stale:
        return Row("stale probe events", OK, "none left in tracefs by processes that exited")
    shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    return Row("stale probe events", WARN, f"{len(stale)} uprobe/kprobe events left in tracefs "
               f"by processes that exited: {shown}",
               "ebpf_magic removes them at its first attach; now: `python -c 'from ebpf_magic "
               "import link; link.remove_stale_probe_events()'`.")


# -- attach checks --------------------------------------------------------------


@dataclass(frozen=True)
class AttachCheck:
    """A tiny program of one kind that counts each firing.

    By default its C is ``int FUNCTION(void *ctx)`` running ``body`` then
    counting; ``code`` replaces that where the function differs, with ``{hit}``
    where it counts.
    """

    check: str
    spec: str  # bpftrace-style attach spec; "" when the C function's name attaches it
    function: str
    body: str = ""  # statements before the count
    decl: str = ""  # map declarations the code needs besides the counter
    code: str = ""

    def text(self, hit: str) -> str:
        """The C function, with ``hit`` as its counting statement."""
        if self.code:
            return self.code.format(hit=hit)
        return f"int {self.function}(void *ctx) {{ {self.body}{hit}; return 0; }}"


CHECKS = [
    AttachCheck("kprobe", "kprobe:vfs_read", "doctor_kprobe"),
    AttachCheck("tracepoint", "tracepoint:syscalls:sys_enter_getppid", "doctor_tracepoint"),
    AttachCheck("raw tracepoint", "rawtracepoint:sys_enter", "doctor_raw_tracepoint"),
    AttachCheck("fentry", "", "kfunc__vfs_read",
                code="KFUNC_PROBE(vfs_read) {{ {hit}; return 0; }}"),
    AttachCheck("uprobe", "uprobe:c:getpid", "doctor_uprobe"),
    AttachCheck("USDT", "usdt:{usdt_binary}:ebpf_magic:doctor", "doctor_usdt"),
    AttachCheck("perf sampling", "profile:hz:99", "doctor_profile"),
    AttachCheck("hardware counters", "hardware:cycles", "doctor_hardware"),
    # one tracepoint each: BCC keeps one perf event per tracepoint name and program
    AttachCheck("perf buffer", "tracepoint:syscalls:sys_enter_getpgrp", "doctor_perf_buffer",
                body="u32 v = 1; doctor_perf_events.perf_submit(ctx, &v, sizeof(v)); ",
                decl="BPF_PERF_OUTPUT(doctor_perf_events);"),
    AttachCheck("ring buffer", "tracepoint:syscalls:sys_enter_getsid", "doctor_ring_buffer",
                body="u32 v = 1; doctor_ring_events.ringbuf_output(&v, sizeof(v), 0); ",
                decl="BPF_RINGBUF_OUTPUT(doctor_ring_events, 8);"),
    AttachCheck("XDP", "xdp:{xdp_device}", "doctor_xdp",
                code="int doctor_xdp(struct xdp_md *ctx) {{ {hit}; return XDP_PASS; }}"),
]
# Kinds often missing (kernel config, virtual machines) are loaded apart from the others, so
# that their failures do not make the others attach and detach again (uprobes detach slowly).
RISKY = [c for c in CHECKS if c.check in ("kprobe", "fentry", "hardware counters")]
_COUNTER = "doctor_hits"
_STREAMS = {"perf buffer": "doctor_perf_events", "ring buffer": "doctor_ring_events"}


def _source(checks: list[AttachCheck]) -> str:
    lines = [f"BPF_ARRAY({_COUNTER}, u64, {len(CHECKS)});"]
    lines += [c.decl for c in checks if c.decl]
    lines += [c.text(f"{_COUNTER}.increment({CHECKS.index(c)})") for c in checks]
    return "\n".join(lines) + "\n"


CAP_SYS_ADMIN, CAP_NET_ADMIN = 21, 12


def _veth_fix(step: list[str]) -> str:
    """What the XDP check's failed ``ip`` step ``step`` needs that this process lacks."""
    caps = kernel.effective_caps()
    if step[:2] == ["netns", "add"] and not caps >> CAP_SYS_ADMIN & 1:
        has = " (it has CAP_NET_ADMIN, enough for XDP itself)" if caps >> CAP_NET_ADMIN & 1 \
            else ""
        return ("Making the scratch network namespace needs CAP_SYS_ADMIN, which this process "
                f"lacks{has}: run doctor as root (`sudo python -m ebpf_magic doctor`) to check "
                "XDP; cells can still attach XDP to existing devices (-a xdp:DEV).")
    if not caps >> CAP_NET_ADMIN & 1:
        return "Making the test veth pair and attaching XDP need CAP_NET_ADMIN."
    return "The test veth pair needs veth support in the kernel (CONFIG_VETH)."


class Scratch:
    """What the USDT and XDP checks need: a binary with a USDT note, a veth in a fresh netns."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.netns = f"ebpf-magic-doctor-{tag}"
        self.device = f"emdoc{tag}"[:15]
        self.dir = Path(tempfile.mkdtemp(prefix=f"ebpf-magic-doctor-{tag}-"))
        self.usdt_binary = self.dir / "usdt_probe"
        self.skipped: dict[str, Row] = {}
        self._gcc: subprocess.Popen | None = None
        self._netns_made = False

    def start_build(self) -> None:
        """Compile the USDT test binary in the background (``finish_build`` waits)."""
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            self.skipped["USDT"] = Row("USDT", NOT_CHECKED, "no C compiler to build a test "
                                       "binary with a USDT probe (this libc has none)",
                                       f"Install gcc and {_SDT_PACKAGE} to check USDT.")
            return
        self._gcc = subprocess.Popen([cc, "-x", "c", "-", "-o", str(self.usdt_binary)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._gcc.stdin.write(_USDT_SOURCE)
        self._gcc.stdin.close()

    def finish_build(self) -> None:
        if self._gcc is None:
            return
        out = self._gcc.stdout.read()
        if self._gcc.wait() != 0:
            why = ("sys/sdt.h is missing" if "sdt.h" in out else
                   "the test binary did not compile: " + out.strip().splitlines()[-1]
                   if out.strip() else "the test binary did not compile")
            self.skipped["USDT"] = Row("USDT", NOT_CHECKED, why + ", so no binary with a USDT "
                                       "probe could be built", f"Install {_SDT_PACKAGE}.")
        self._gcc.stdout.close()
        self._gcc = None

    def make_veth(self) -> None:
        """A veth pair: one end here for XDP, its peer in a fresh network namespace."""
        if shutil.which("ip") is None:
            self.skipped["XDP"] = Row("XDP", NOT_CHECKED, "the `ip` command is missing, so no "
                                      "test device could be made",
                                      "Install iproute2 to check XDP.")
            return
        steps = [["netns", "add", self.netns],
                 ["link", "add", self.device, "type", "veth", "peer", "name", "peer",
                  "netns", self.netns],
                 ["link", "set", self.device, "up"],
                 ["-n", self.netns, "link", "set", "peer", "up"]]
        for step in steps:
            done = subprocess.run(["ip", *step], capture_output=True, text=True)
            self._netns_made = self._netns_made or step[:2] == ["netns", "add"]
            if done.returncode != 0:
                self.skipped["XDP"] = Row("XDP", NOT_CHECKED, "could not make a test veth "
                                          f"pair: `ip {' '.join(step)}`: {done.stderr.strip()}",
                                          _veth_fix(step))
                return

    def send_frame(self) -> None:
        """Send one Ethernet frame from the peer, so XDP sees it arrive on the device."""
        errors: list[BaseException] = []

        def send() -> None:  # setns() changes this thread's namespace only
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.netns}") as ns:
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                    s.bind(("peer", 0))
                    s.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46))
            except BaseException as e:  # reported by the caller's thread
                errors.append(e)

        thread = threading.Thread(target=send, name="doctor-netns", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    def run_usdt_binary(self) -> None:
        subprocess.run([str(self.usdt_binary)], check=False, capture_output=True)

    def close(self) -> list[str]:
        """Remove everything; return what could not be removed."""
        if self._gcc is not None:
            self._gcc.kill()
            self.finish_build()
        left = []
        if Path(f"/sys/class/net/{self.device}").exists():
            subprocess.run(["ip", "link", "del", self.device], capture_output=True)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        if Path(f"/sys/class/net/{self.device}").exists():
            left.append(f"network device {self.device}")
        if Path(f"/run/netns/{self.netns}").exists():
            left.append(f"network namespace {self.netns}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            left.append(str(self.dir))
        return left


class _Prober:
    """Loads the attach checks, as few compilations as failures allow, and watches them fire."""

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.rows: dict[str, Row] = {}
        self.prog_ids: list[int] = []
        self.programs = 0

    def spec(self, check: AttachCheck) -> str:
        spec = check.spec.format(usdt_binary=self.scratch.usdt_binary,
                                 xdp_device=self.scratch.device)
        return f"{spec}={check.function}" if spec else ""

    def run(self, checks: list[AttachCheck]) -> None:
        from ebpf_magic.program import Program

        pending = list(checks)
        while pending:
            try:
                prog = Program(_source(pending), name="doctor",
                               attach=[s for s in map(self.spec, pending) if s])
            except (AttachError, VerifierError) as e:
                culprit = self._blame(e, pending)
                if culprit is None:
                    return self._one_by_one(pending, e)
                self.rows[culprit.check] = Row(culprit.check, UNAVAILABLE, e.message,
                                               e.hint)
                pending.remove(culprit)
                self.programs += 1
                continue
            except (NotPrivilegedError, BCCNotFoundError, HeadersMissingError) as e:
                for c in pending:
                    self.rows[c.check] = Row(c.check, NOT_CHECKED, e.message, e.hint)
                return
            except Exception as e:  # not attributable to one probe
                return self._one_by_one(pending, e)
            self.programs += 1
            try:
                self.prog_ids += prog.prog_ids()
                self._watch(prog, pending)
            except Exception as e:  # attached, but reading the counters failed
                for c in pending:
                    self.rows[c.check] = Row(c.check, FAIL, "attached, but doctor could not "
                                             f"read its counters: {type(e).__name__}: {e}")
            finally:
                prog.stop()
            return

    def _one_by_one(self, pending: list[AttachCheck], error: Exception) -> None:
        if len(pending) == 1:
            c = pending[0]
            hint = error.hint if isinstance(error, BPFError) else ""
            message = error.message if isinstance(error, BPFError) else \
                f"{type(error).__name__}: {error}"
            self.rows[c.check] = Row(c.check, UNAVAILABLE, message, hint)
            self.programs += 1
            return
        for c in pending:
            self.run([c])

    @staticmethod
    def _blame(error: BPFError, pending: list[AttachCheck]) -> AttachCheck | None:
        if isinstance(error, VerifierError):
            function = error.function
        else:
            function = getattr(error, "probe", "").rpartition("=")[2]
        function = function.split(" (pid")[0].replace("vmlinux__", "")
        return next((c for c in pending if c.function == function), None)

    def _watch(self, prog, checks: list[AttachCheck]) -> None:
        """Make every probe fire, and wait until each has (or the time is up)."""
        hits = prog.maps[_COUNTER]
        slots = {c.check: CHECKS.index(c) for c in checks}
        problems: dict[str, str] = {}
        deadline = time.monotonic() + FIRE_TIMEOUT
        fired: set[str] = set()
        rounds = 0
        while True:
            if rounds % 20 == 0:
                self._trigger_external(checks, problems)
            rounds += 1
            os.getppid()
            os.getpid()
            os.getpgrp()
            os.getsid(0)
            with open("/proc/self/stat", "rb") as f:
                f.read()
            fired |= {c.check for c in checks
                      if hits[slots[c.check]] and self._received(prog, c) != 0}
            if len(fired) == len(slots) or time.monotonic() > deadline:
                break
            spin = time.monotonic() + 0.005  # let the CPU clock and cycles run
            while time.monotonic() < spin:
                pass
        for c in checks:
            spec = self.spec(c).rpartition("=")[0] or f"KFUNC_PROBE ({c.function})"
            if c.check in fired:
                self.rows[c.check] = Row(c.check, OK, self._ok_detail(prog, c, spec,
                                                                      hits[slots[c.check]]))
            else:
                self.rows[c.check] = Row(
                    c.check, WARN, f"{spec} attached, but did not fire within "
                    f"{FIRE_TIMEOUT:g} s" + (f" ({problems[c.check]})" if c.check in problems
                                             else ""),
                    "It may still work for real workloads; rerun doctor to confirm.")

    def _trigger_external(self, checks: list[AttachCheck], problems: dict[str, str]) -> None:
        names = {c.check for c in checks}
        if "USDT" in names:
            self.scratch.run_usdt_binary()
        if "XDP" in names:
            try:
                self.scratch.send_frame()
            except OSError as e:
                problems["XDP"] = f"could not send a test frame: {e}"

    @staticmethod
    def _received(prog, check: AttachCheck) -> int | None:
        """Events read back from the check's buffer; None for checks without one."""
        stream = _STREAMS.get(check.check)
        return prog.events[stream].received if stream in prog.events else None

    def _ok_detail(self, prog, check: AttachCheck, spec: str, count: int) -> str:
        detail = f"{spec}: attached and fired ({count}x)"
        received = self._received(prog, check)
        if received is not None:
            stream = _STREAMS[check.check]
            detail += f"; {received} event(s) read back from prog.events[{stream!r}]"
        elif check.check == "XDP":
            detail += f" on veth {spec.split(':', 1)[1]} (its peer in a scratch network namespace)"
        return detail


def _unloaded(prog_ids: list[int], timeout: float = 1.0) -> list[int]:
    """The ids among ``prog_ids`` still loaded after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            loaded = sysbpf.loaded_prog_ids()
        except PermissionError:
            # listing every program needs CAP_SYS_ADMIN (a least-privilege kernel lacks it);
            # the programs were released with their descriptors when they stopped
            return []
        left = sorted(set(prog_ids) & set(loaded))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def check_attach_types(rows: list[Row], prog_ids: list[int] | None = None) -> list[Row]:
    """Rows for every attach type, after loading and attaching tiny programs of each kind.

    The kernel ids of the programs loaded are appended to ``prog_ids``.
    """
    status = {r.check: r for r in rows}
    for gate in ("privileges", "BCC", "kernel headers"):
        row = status.get(gate)
        if row is not None and row.status == FAIL:
            return [Row(c.check, NOT_CHECKED, f"needs {gate} (see its fix above)")
                    for c in CHECKS]
    scratch = Scratch()
    prober = _Prober(scratch)
    try:
        scratch.start_build()
        scratch.make_veth()
        scratch.finish_build()
        prober.rows.update(scratch.skipped)
        for group in (RISKY, [c for c in CHECKS if c not in RISKY]):
            prober.run([c for c in group if c.check not in scratch.skipped])
    finally:
        left = scratch.close()
    if prog_ids is not None:
        prog_ids += prober.prog_ids
    left_progs = _unloaded(prober.prog_ids)
    if left_progs or left:
        what = [f"BPF program ids {left_progs}"] if left_progs else []
        cleanup = Row("cleanup", FAIL, "still present after doctor: " + ", ".join(what + left),
                      "Remove them by hand (`bpftool prog show`, `ip link del`, "
                      "`ip netns del`); please report this.")
    else:
        cleanup = Row("cleanup", OK, f"{prober.programs} test program(s) compiled; all "
                      f"{len(prober.prog_ids)} loaded functions unloaded, the scratch network "
                      "namespace and test binary removed")
    missing = Row("", NOT_CHECKED, "doctor stopped before this check")
    return [prober.rows.get(c.check, replace(missing, check=c.check)) for c in CHECKS] + [cleanup]


def _row(check: Callable[[], backend.Diagnostic]) -> Callable[[], Row]:
    """A backend's check, as a check giving a row of the report."""
    return lambda: Row(**asdict(check()))


# this process and the kernel first, then each backend's prerequisites and the cells it serves
ENVIRONMENT: dict[str, Callable[[], Row]] = {
    "privileges": check_privileges, "process": check_process, "memlock": check_memlock,
    "kernel": check_kernel, "BTF": check_btf, "tracefs": check_tracefs,
    "debugfs": check_debugfs, "stale probe events": check_probe_events,
    "run statistics": check_run_stats,
    **{name: _row(check) for name, check in backend.diagnostics().items()},
    "bpftrace": _row(bpftrace_checks.check_installed)}


def _safely(name: str, check) -> Row:
    try:
        return check()
    except Exception as e:  # a check that cannot run is itself a finding
        return Row(name, FAIL, f"the check failed: {type(e).__name__}: {e}")


def run(attach: bool = True) -> Report:
    """Check this machine; with ``attach``, load a tiny program of each attach type."""
    start = time.monotonic()
    rows = [_safely(name, check) for name, check in ENVIRONMENT.items()]
    prog_ids: list[int] = []
    if attach:
        try:
            rows += check_attach_types(rows, prog_ids)
        except Exception as e:  # report, never crash
            rows.append(Row("attach types", FAIL, f"{type(e).__name__}: {e}"))
        rows.append(_safely("bpftrace cells", _row(bpftrace_checks.check_cells)))
    return Report(rows, time.monotonic() - start, prog_ids)


def main(argv: list[str] | None = None) -> int:
    """``python -m ebpf_magic doctor``: print the report; exit 0 when BPF can be used."""
    parser = argparse.ArgumentParser(prog="python -m ebpf_magic doctor",
                                     description="Check whether and how eBPF works here.")
    parser.add_argument("--no-attach", action="store_true",
                        help="skip loading test programs (environment checks only)")
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        report = run(attach=not args.no_attach)
        print(report)
        return 0 if report.usable else 1
    return 1
