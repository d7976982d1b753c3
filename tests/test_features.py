"""features: checks of what this kernel and process can do, callable without rendering."""

from __future__ import annotations

import errno

import pytest

from ebpf_magic import backend, features
from ebpf_magic.features import programs, rights
from ebpf_magic.kernel import sysbpf

from conftest import own_bpf_fds


@pytest.mark.kernel
def test_program_types_every_tracing_kernel_has_load_and_are_closed_again():
    before = sorted(own_bpf_fds())
    found = features.program_types()
    assert list(found) == list(programs.PROBED_TYPES)
    for name in ("socket_filter", "tracepoint", "xdp", "perf_event", "raw_tracepoint"):
        assert (found[name].check, found[name].status, found[name].detail) == (
            f"{name} programs", "ok", f"a {name} program loads")
    assert sorted(own_bpf_fds()) == before, "a probe's program was left open"


def _refusing(code: int):
    def prog_load(*args, **kwargs):
        raise OSError(code, errno.errorcode[code])
    return prog_load


def test_a_type_the_kernel_refuses_is_unavailable_and_no_rights_is_not_checked(monkeypatch):
    monkeypatch.setattr(sysbpf, "prog_load", _refusing(errno.EINVAL))
    refused = features.check_program_type("xdp")
    assert (refused.status, refused.detail) == ("unavailable", "the kernel refused a xdp "
                                                "program: EINVAL")
    assert not refused.ok
    monkeypatch.setattr(sysbpf, "prog_load", _refusing(errno.EPERM))
    denied = features.check_program_type("xdp")
    assert denied.status == "not checked" and "privileges" in denied.fix


def test_only_the_types_it_knows_how_to_probe():
    with pytest.raises(ValueError, match="no probe of program type 'tracing'"):
        features.check_program_type("tracing")


def test_privileges_follow_the_process_rights(monkeypatch):
    monkeypatch.setattr(rights.host, "has_bpf_rights", lambda: False)
    row = features.check_privileges()
    assert row.status == "fail" and row.detail.startswith("not allowed to load BPF programs")
    assert "CAP_BPF" in row.fix
    monkeypatch.setattr(rights.host, "has_bpf_rights", lambda: True)
    assert features.check_privileges().status == "ok"


def test_host_checks_return_findings_named_as_listed():
    found = {name: features.safely(name, check) for name, check in features.host().items()}
    assert list(found) == ["privileges", "process", "memlock", "kernel", "BTF", "tracefs",
                           "debugfs", "stale probe events", "run statistics"]
    assert all(isinstance(f, features.Finding) and f.check == name for name, f in found.items())
    assert all(f.status in features.STATUSES for f in found.values())


def test_a_check_that_raises_is_a_failed_finding():
    def broken() -> features.Finding:
        raise RuntimeError("no /proc")
    assert features.safely("kernel", broken) == features.Finding(
        "kernel", "fail", "the check failed: RuntimeError: no /proc")


def test_every_backend_supplies_its_checks_through_the_registry():
    found = backend.checks()
    assert list(found) == list(backend.BACKENDS)
    for name, checks in found.items():
        suite = checks.probes()
        assert suite.backend == name
        kinds = [p.kind for p in suite.probes]
        assert len(set(kinds)) == len(kinds) and "tracepoint" in kinds
        assert len({p.function for p in suite.probes}) == len(kinds)
        source = suite.source(list(suite.probes))
        assert all(suite.hit.format(slot=suite.slot(p)) in source for p in suite.probes)
        assert checks.available().check == name
