"""Which attach kinds work here, learnt by loading a backend's attach probes and watching
each fire.

All probes share one program when they can: when an attach fails, the error names the
probe, that kind is marked unavailable and the rest are loaded again without it. What a
run loads is unloaded before it returns, and :func:`check_attach_types` verifies that
with the kernel.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ebpf_magic.errors import (
    AttachError,
    BPFError,
    HeadersMissingError,
    NotPrivilegedError,
    VerifierError,
)
from ebpf_magic.features import (
    FAIL,
    NOT_CHECKED,
    OK,
    UNAVAILABLE,
    WARN,
    AttachProbe,
    Finding,
    ProbeSuite,
)
from ebpf_magic.kernel import sysbpf
from ebpf_magic.setup.scratch import Scratch

if TYPE_CHECKING:
    from ebpf_magic.program import Program

FIRE_TIMEOUT = 1.0  # seconds to wait for every attached probe to fire


class Prober:
    """Loads ``suite``'s probes, in as few programs as failures allow, and watches them fire.

    :attr:`findings` holds one finding per kind tried; :attr:`prog_ids` the kernel ids of
    the programs loaded; :attr:`programs` how many programs were compiled.
    """

    def __init__(self, suite: ProbeSuite, scratch: Scratch) -> None:
        self.suite = suite
        self.scratch = scratch
        self.findings: dict[str, Finding] = {}
        self.prog_ids: list[int] = []
        self.programs = 0

    def spec(self, probe: AttachProbe) -> str:
        """The attach spec of ``probe`` with the scratch's binary and device filled in."""
        spec = probe.spec.format(usdt_binary=self.scratch.usdt_binary,
                                 xdp_device=self.scratch.device)
        return f"{spec}={probe.function}" if spec else ""

    def run(self, probes: list[AttachProbe]) -> None:
        """Load ``probes`` together, leaving out each one that fails, and watch the rest."""
        from ebpf_magic.program import Program

        pending = list(probes)
        while pending:
            try:
                prog = Program(self.suite.source(pending), name="doctor",
                               backend=self.suite.backend,
                               attach=[s for s in map(self.spec, pending) if s])
            except (AttachError, VerifierError) as e:
                culprit = self._blame(e, pending)
                if culprit is None:
                    return self._one_by_one(pending, e)
                self.findings[culprit.kind] = Finding(culprit.kind, UNAVAILABLE, e.message,
                                                      e.hint)
                pending.remove(culprit)
                self.programs += 1
                continue
            except (NotPrivilegedError, HeadersMissingError) as e:
                for p in pending:
                    self.findings[p.kind] = Finding(p.kind, NOT_CHECKED, e.message, e.hint)
                return None
            except Exception as e:  # noqa: BLE001 - not attributable to one probe
                return self._one_by_one(pending, e)
            self.programs += 1
            try:
                self.prog_ids += prog.prog_ids()
                self._watch(prog, pending)
            except Exception as e:  # noqa: BLE001 - attached, but reading the counters failed
                for p in pending:
                    self.findings[p.kind] = Finding(p.kind, FAIL, "attached, but doctor could "
                                                    f"not read its counters: "
                                                    f"{type(e).__name__}: {e}")
            finally:
                prog.stop()
            return None
        return None

    def _one_by_one(self, pending: list[AttachProbe], error: Exception) -> None:
        if len(pending) == 1:
            p = pending[0]
            hint = error.hint if isinstance(error, BPFError) else ""
            message = error.message if isinstance(error, BPFError) else \
                f"{type(error).__name__}: {error}"
            self.findings[p.kind] = Finding(p.kind, UNAVAILABLE, message, hint)
            self.programs += 1
            return
        for p in pending:
            self.run([p])

    @staticmethod
    def _blame(error: BPFError, pending: list[AttachProbe]) -> AttachProbe | None:
        """The probe ``error`` names, if it names one of ``pending``."""
        if isinstance(error, VerifierError):
            function = error.function
        else:
            function = getattr(error, "probe", "").rpartition("=")[2]
        function = function.split(" (pid")[0]
        return next((p for p in pending if function in p.names()), None)

    def _watch(self, prog: Program, probes: list[AttachProbe]) -> None:
        """Make every probe fire, and wait until each has (or the time is up)."""
        hits = prog.maps[self.suite.counter]
        slots = {p.kind: self.suite.slot(p) for p in probes}
        problems: dict[str, str] = {}
        deadline = time.monotonic() + FIRE_TIMEOUT
        fired: set[str] = set()
        rounds = 0
        while True:
            if rounds % 20 == 0:
                self._trigger_external(probes, problems)
            rounds += 1
            os.getppid()
            os.getpid()
            os.getpgrp()
            os.getsid(0)
            with open("/proc/self/stat", "rb") as f:
                f.read()
            fired |= {p.kind for p in probes
                      if hits[slots[p.kind]] and self._received(prog, p) != 0}
            if len(fired) == len(slots) or time.monotonic() > deadline:
                break
            spin = time.monotonic() + 0.005  # let the CPU clock and cycles run
            while time.monotonic() < spin:
                pass
        attached = {a.rpartition("=")[2]: a.rpartition("=")[0] for a in prog.attached}
        for p in probes:
            spec = attached.get(p.function) or self.spec(p).rpartition("=")[0] or \
                f"{p.function}()"
            if p.kind in fired:
                self.findings[p.kind] = Finding(p.kind, OK, self._ok_detail(
                    prog, p, spec, hits[slots[p.kind]]))
            else:
                self.findings[p.kind] = Finding(
                    p.kind, WARN, f"{spec} attached, but did not fire within "
                    f"{FIRE_TIMEOUT:g} s" + (f" ({problems[p.kind]})" if p.kind in problems
                                             else ""),
                    "It may still work for real workloads; rerun doctor to confirm.")

    def _trigger_external(self, probes: list[AttachProbe], problems: dict[str, str]) -> None:
        kinds = {p.kind for p in probes}
        if "USDT" in kinds:
            self.scratch.run_usdt_binary()
        if "XDP" in kinds:
            try:
                self.scratch.send_frame()
            except OSError as e:
                problems["XDP"] = f"could not send a test frame: {e}"

    @staticmethod
    def _received(prog: Program, probe: AttachProbe) -> int | None:
        """Events read back from the probe's buffer; None for probes without one."""
        if not probe.stream:
            return None
        return prog.events[probe.stream].received if probe.stream in prog.events else 0

    def _ok_detail(self, prog: Program, probe: AttachProbe, spec: str, count: int) -> str:
        detail = f"{spec}: attached and fired ({count}x)"
        received = self._received(prog, probe)
        if received is not None:
            detail += f"; {received} event(s) read back from prog.events[{probe.stream!r}]"
        elif probe.kind == "XDP":
            detail += f" on veth {spec.split(':', 1)[1]} (its peer in a scratch network namespace)"
        return detail


def still_loaded(prog_ids: list[int], timeout: float = 1.0) -> list[int]:
    """The ids among ``prog_ids`` still loaded after waiting up to ``timeout`` seconds
    (none where this process may not list every program)."""
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


@dataclass
class AttachReport:
    """What :func:`check_attach_types` found: one finding per attach kind, in ``kinds``
    order, then ``cleanup``; ``backend`` is whose probes gave them ("" when none ran)."""

    findings: list[Finding]
    kinds: list[str]
    backend: str = ""
    prog_ids: list[int] = field(default_factory=list)


def _kinds(suites: dict[str, ProbeSuite]) -> list[str]:
    return list(dict.fromkeys(p.kind for s in suites.values() for p in s.probes))


def _not_checked(kinds: list[str], why: str, fix: str = "") -> AttachReport:
    return AttachReport([Finding(k, NOT_CHECKED, why, fix) for k in kinds], kinds)


def check_attach_types(privileges: Finding, available: dict[str, Finding],
                       suites: dict[str, ProbeSuite], backend: str | None = None) -> AttachReport:
    """Load and fire each attach kind's probe, with the first backend of ``available``
    (by name, in preference order) that can load programs here, or with ``backend``.

    When none of that backend's probes attaches, the next available backend's are tried:
    the findings are those of the first backend that attached something (else the first
    tried). Nothing is loaded without ``privileges`` or without an available backend.
    """
    kinds = _kinds(suites)
    if privileges.status == FAIL:
        return _not_checked(kinds, "needs privileges (see its fix above)")
    names = [backend] if backend is not None else list(available)
    usable = [n for n in names if n in available and available[n].status == OK]
    if not usable:
        why = "; ".join(f"{n}: {available[n].detail}" for n in names if n in available)
        fixes = " ".join(dict.fromkeys(available[n].fix for n in names
                                       if n in available and available[n].fix))
        what = f"the {backend} backend cannot" if backend is not None else "no backend can"
        return _not_checked(kinds, f"{what} load programs here" + (f" ({why})" if why else ""),
                            fixes)
    scratch = Scratch()
    tried: list[Prober] = []
    try:
        scratch.start_build()
        scratch.make_veth()
        scratch.finish_build()
        for name in usable:
            prober = Prober(suites[name], scratch)
            tried.append(prober)
            prober.findings.update(scratch.skipped)
            todo = [p for p in suites[name].probes if p.kind not in scratch.skipped]
            for group in ([p for p in todo if p.risky], [p for p in todo if not p.risky]):
                prober.run(group)
            if any(f.ok for f in prober.findings.values()):
                break
    finally:
        left = scratch.close()
    shown = next((p for p in tried if any(f.ok for f in p.findings.values())), tried[0])
    prog_ids = [i for p in tried for i in p.prog_ids]
    left_progs = still_loaded(prog_ids)
    if left_progs or left:
        what = [f"BPF program ids {left_progs}"] if left_progs else []
        cleanup = Finding("cleanup", FAIL, "still present after doctor: " +
                          ", ".join(what + left),
                          "Remove them by hand (`bpftool prog show`, `ip link del`, "
                          "`ip netns del`); please report this.")
    else:
        compiled = sum(p.programs for p in tried)
        backends = " and ".join(p.suite.backend for p in tried)
        cleanup = Finding("cleanup", OK, f"{compiled} test program(s) compiled for the "
                          f"{backends} backend; all {len(prog_ids)} loaded functions "
                          "unloaded, the scratch network namespace and test binary removed")
    missing = "doctor stopped before this check"
    kinds = [p.kind for p in shown.suite.probes]
    findings = [shown.findings.get(k, Finding(k, NOT_CHECKED, missing)) for k in kinds]
    return AttachReport([*findings, cleanup], kinds, shown.suite.backend, prog_ids)
