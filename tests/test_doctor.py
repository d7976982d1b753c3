"""doctor: what it reports, that it serves whichever backends exist, that it cleans up, and
that it never crashes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from ebpf_magic.backend import Diagnostic
from ebpf_magic.backend.bcc import checks as bcc_checks
from ebpf_magic.backend.libbpf import checks as libbpf_checks
from ebpf_magic.bpftrace import diagnose
from ebpf_magic.features import FAIL, OK, AttachProbe, Finding, ProbeSuite
from ebpf_magic.kernel import host
from ebpf_magic.setup import doctor, probing
from ebpf_magic.setup.doctor import Report, Row

from conftest import loaded_prog_ids, own_bpf_fds

REPO = Path(__file__).resolve().parent.parent
# what every kernel with BPF tracing offers, fired by the doctor's own workload
COMMON_KINDS = {"tracepoint", "raw tracepoint", "uprobe", "USDT", "perf sampling",
                "perf buffer", "ring buffer", "XDP"}
SANITY_SECONDS = 30  # a generous bound: doctor takes a few seconds here
# the rows of `%bpf doctor --no-attach`, in order: this process and kernel, then each
# backend's prerequisites, then bpftrace
ENVIRONMENT_ROWS = ["privileges", "process", "memlock", "kernel", "BTF", "tracefs", "debugfs",
                    "stale probe events", "run statistics", "BCC", "kernel headers",
                    "BCC dialect cells", "kernel struct reads", "clang", "libbpf",
                    "vmlinux.h cache", "libbpf-style cells", "bpftrace"]


def _run_cli(*args: str, prefix: tuple[str, ...] = (), code: str | None = None):
    cmd = [*prefix, sys.executable, *(["-c", code] if code else ["-m", "ebpf_magic", "doctor"]),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def observed():
    """One doctor run, with the kernel's view before and after it."""
    fds_before = sorted(own_bpf_fds())
    ids_before = loaded_prog_ids()
    report = doctor.run()
    return report, fds_before, ids_before


def _statuses(report: Report) -> dict[str, str]:
    return {k: report.status(k) for k in report.attach_kinds}


def _missing(name: str) -> Finding:
    return Finding(name, FAIL, f"{name} is not installed here", f"Install {name}.")


@pytest.mark.kernel
def test_common_attach_kinds_attach_and_fire(observed):
    report = observed[0]
    first = next(name for name, b in report.backends.items() if b.status == OK)
    assert report.attach_backend == first
    statuses = _statuses(report)
    assert {k for k in COMMON_KINDS if statuses[k] != "ok"} == set()
    rows = {r.check: r for r in report.rows}
    for kind in COMMON_KINDS:
        assert "attached and fired" in rows[kind].detail, rows[kind]
    assert "read back" in rows["perf buffer"].detail
    assert "read back" in rows["ring buffer"].detail
    assert report.usable and report.verdict == "BPF can be used here."


NO_KPROBES = "this kernel is built without kprobes (no kprobe_events in tracefs)"


@pytest.mark.kernel
@pytest.mark.kernel_feature
@pytest.mark.skipif(not host.kprobes_supported(), reason=NO_KPROBES)
def test_the_kprobe_row_attaches_where_the_kernel_has_kprobes(observed):
    row = next(r for r in observed[0].rows if r.check == "kprobe")
    assert row.status == "ok" and "attached and fired" in row.detail, row


@pytest.mark.kernel
@pytest.mark.kernel_feature
@pytest.mark.skipif(host.kprobes_supported(), reason="this kernel has kprobes")
def test_the_kprobe_row_says_why_not_and_what_instead_where_the_kernel_lacks_them(observed):
    row = next(r for r in observed[0].rows if r.check == "kprobe")
    assert row.status == "unavailable" and row.detail.startswith("cannot attach"), row
    assert "CONFIG_KPROBES" in row.fix and "tracepoint" in row.fix


@pytest.mark.kernel
def test_rows_that_do_not_attach_say_why_and_what_instead(observed):
    rows = {r.check: r for r in observed[0].rows}
    fixes = {"fentry": "fentry", "hardware counters": "Hardware counters", "kprobe": "kprobes"}
    for kind, named in fixes.items():
        if rows[kind].status == "ok":
            assert "attached and fired" in rows[kind].detail, rows[kind]
        else:
            assert rows[kind].status == "unavailable", rows[kind]
            assert named in rows[kind].fix, rows[kind]


@pytest.mark.kernel
def test_each_backend_probes_in_its_own_dialect_and_sees_the_same_kernel(observed):
    """The libbpf backend's probes (SEC() names) find what the default backend's found."""
    report = doctor.run(backend="libbpf")
    assert report.attach_backend == "libbpf"
    assert _statuses(report) == _statuses(observed[0])
    assert report.status("cleanup") == "ok" and "for the libbpf backend" in \
        next(r.detail for r in report.rows if r.check == "cleanup")
    assert report.prog_ids and not set(report.prog_ids) & loaded_prog_ids()


@pytest.mark.kernel
def test_a_host_with_only_the_libbpf_backend_is_usable(monkeypatch):
    monkeypatch.setattr(bcc_checks, "available", lambda: _missing("bcc"))
    report = doctor.run()
    assert report.backends["bcc"].status == "fail" and report.backends["libbpf"].status == "ok"
    assert report.attach_backend == "libbpf"
    assert {k for k, s in _statuses(report).items() if s == "ok"} >= COMMON_KINDS
    assert report.usable and report.verdict == "BPF can be used here."
    assert not set(report.prog_ids) & loaded_prog_ids()


@pytest.mark.kernel
def test_the_next_backend_is_tried_when_none_of_the_first_ones_probes_attach(monkeypatch):
    nothing = AttachProbe("tracepoint", "tracepoint:ebpf_magic_none:nothing", "doctor_none",
                          "int doctor_none(void *ctx) {{ {hit}; return 0; }}")
    suite = ProbeSuite("bcc", (nothing,), counter="doctor_hits",
                       header="BPF_ARRAY(doctor_hits, u64, {slots});",
                       hit="doctor_hits.increment({slot})")
    monkeypatch.setattr(bcc_checks, "probes", lambda: suite)
    report = doctor.run()
    assert report.attach_backend == "libbpf"
    assert report.attach_kinds == [p.kind for p in libbpf_checks.PROBES]
    assert report.status("tracepoint") == "ok" and report.usable
    cleanup = next(r for r in report.rows if r.check == "cleanup")
    assert cleanup.status == "ok" and "for the bcc and libbpf backend" in cleanup.detail
    assert not set(report.prog_ids) & loaded_prog_ids()


def test_no_backend_means_unusable_and_nothing_is_loaded(monkeypatch):
    monkeypatch.setattr(bcc_checks, "available", lambda: _missing("bcc"))
    monkeypatch.setattr(libbpf_checks, "available", lambda: _missing("clang"))
    monkeypatch.setattr(diagnose, "check_cells", lambda: Diagnostic(
        "bpftrace cells", "not checked", "left out of this test"))
    monkeypatch.setattr(probing, "Scratch", None)  # nothing may be set up to fire on
    report = doctor.run()
    assert not report.usable and report.prog_ids == []
    assert report.verdict == ("BPF cannot be used here yet: no backend can load programs "
                              "(bcc: bcc is not installed here; libbpf: clang is not installed "
                              "here).")
    rows = {r.check: r for r in report.rows}
    for kind in report.attach_kinds:
        assert rows[kind].status == "not checked"
        if rows["privileges"].status == "ok":
            assert rows[kind].detail == ("no backend can load programs here (bcc: bcc is not "
                                         "installed here; libbpf: clang is not installed here)")
            assert rows[kind].fix == "Install bcc. Install clang."
    assert report.attach_kinds == [p.kind for p in bcc_checks.PROBES]


def test_attach_checks_need_privileges_and_an_available_backend():
    suites = {"a": ProbeSuite("a", (AttachProbe("tracepoint", "", "f", ""),), "c", "", "")}
    ok, missing = Finding("a", OK, "here"), Finding("a", FAIL, "gone", "Get it.")
    denied = probing.check_attach_types(Finding("privileges", FAIL, "uid 1000"), {"a": ok},
                                        suites)
    assert [(f.check, f.status, f.detail) for f in denied.findings] == [
        ("tracepoint", "not checked", "needs privileges (see its fix above)")]
    none = probing.check_attach_types(Finding("privileges", OK, "root"), {"a": missing}, suites)
    assert [(f.check, f.status, f.detail, f.fix) for f in none.findings] == [
        ("tracepoint", "not checked", "no backend can load programs here (a: gone)", "Get it.")]
    assert none.backend == "" and none.prog_ids == []
    chosen = probing.check_attach_types(Finding("privileges", OK, "root"), {"a": missing},
                                        suites, backend="a")
    assert chosen.findings[0].detail == "the a backend cannot load programs here (a: gone)"


def test_usable_needs_rights_a_backend_and_one_attach_type_that_works():
    rights, bad_rights = Row("privileges", "ok", "root"), Row("privileges", "fail", "uid 1")
    here, gone = {"a": Finding("a", OK, "")}, {"a": Finding("a", FAIL, "missing")}
    attach = [Row("kprobe", "unavailable", "no"), Row("tracepoint", "ok", "fired")]
    kinds = ["kprobe", "tracepoint"]
    assert Report([rights, *attach], backends=here, attach_kinds=kinds).usable
    assert not Report([bad_rights, *attach], backends=here, attach_kinds=kinds).usable
    assert not Report([rights, *attach], backends=gone, attach_kinds=kinds).usable
    assert not Report([rights, *attach], backends={}, attach_kinds=kinds).usable
    none_fire = Report([rights, attach[0]], backends=here, attach_kinds=kinds)
    assert not none_fire.usable
    assert none_fire.verdict == "BPF cannot be used here yet: see the fixes above."
    warned = Report([rights, Row("tracepoint", "warn", "did not fire")], backends=here,
                    attach_kinds=["tracepoint"])
    assert warned.usable
    unprobed = Report([rights], backends=here)
    assert unprobed.usable and "attach types were not checked" in unprobed.verdict
    # any backend's name will do: the verdict does not look for one
    assert Report([rights, *attach], backends={"zz": Finding("zz", OK, "")},
                  attach_kinds=kinds).usable


@pytest.mark.kernel
def test_environment_rows(observed):
    report = observed[0]
    rows = {r.check: r for r in report.rows}
    assert rows["privileges"].status == "ok" and "CAP_BPF" in rows["privileges"].detail
    assert rows["BCC"].status == "ok" and "0.26" in rows["BCC"].detail
    assert rows["kernel"].detail.startswith(f"Linux {os.uname().release}")
    assert rows["BTF"].status == "ok"
    # no headers for this kernel: the nearest Debian headers, with the warning and a fix
    assert rows["kernel headers"].status == "warn"
    assert "kernel-internal structs" in rows["kernel headers"].detail
    assert "linux-headers" in rows["kernel headers"].fix
    assert rows["tracefs"].status == "ok" and "/sys/kernel/tracing" in rows["tracefs"].detail
    assert list(report.df.columns) == ["check", "status", "detail", "fix"]
    assert len(report.df) == len(report.rows)


@pytest.mark.kernel
def test_backend_rows(observed):
    from ebpf_magic import backend

    rows = {r.check: r for r in observed[0].rows}
    assert rows["clang"].status == "ok" and "clang version" in rows["clang"].detail
    assert rows["libbpf"].status == "ok"
    assert f"version {backend.version('libbpf')}" in rows["libbpf"].detail
    assert rows["vmlinux.h cache"].status == "ok" and "BTF" in rows["vmlinux.h cache"].detail
    assert rows["BCC dialect cells"].status == "ok"
    assert rows["BCC dialect cells"].detail.startswith("served by the BCC backend")
    assert rows["libbpf-style cells"].status == "ok"
    assert rows["libbpf-style cells"].detail.startswith("served by the libbpf backend")
    # this kernel's headers are not installed: BCC compiles against its BTF types instead
    structs = rows["kernel struct reads"]
    assert structs.status == "ok"
    assert structs.detail.startswith("both backends: BCC compiles against this kernel's own "
                                     "types, from its BTF")
    assert "CO-RE reads (BPF_CORE_READ) are relocated to this kernel's BTF and are right" \
        in structs.detail


@pytest.mark.kernel
def test_struct_reads_row_without_btf_types(monkeypatch):
    """With the distribution's headers alone, BCC's struct reads are called out, libbpf's not."""
    from ebpf_magic.backend import bcc
    from ebpf_magic.backend.bcc import headers

    monkeypatch.setattr(headers, "USE_BTF", False)
    structs = bcc.diagnostics()["kernel struct reads"]()
    assert structs.status == "warn" and structs.detail.startswith("libbpf backend: ")
    assert "BCC's reads of kernel structs (task_struct, sock, ...) can be wrong" in structs.detail
    assert "--backend libbpf" in structs.fix


def _headers(exact: bool):
    from ebpf_magic.backend.bcc.headers import Headers

    return Headers(Path("/usr/src/linux-headers-x"), "running kernel" if exact else
                   "nearest distro headers", "6.1.0-99-amd64", exact=exact)


def test_backend_rows_where_headers_match(monkeypatch):
    from ebpf_magic.backend import libbpf
    from ebpf_magic.backend.bcc import headers

    monkeypatch.setattr(headers, "ensure", lambda: _headers(True))
    monkeypatch.setattr(libbpf, "available", lambda: (True, ""))
    row = doctor.ENVIRONMENT["kernel struct reads"]()
    assert row.status == "ok" and row.detail.startswith("both backends: BCC compiles against "
                                                        "this kernel's headers (running kernel)")


def test_backend_rows_without_clang_and_libbpf(monkeypatch):
    from ebpf_magic.backend import libbpf
    from ebpf_magic.backend.bcc import headers

    def missing():
        raise OSError("libbpf.so.1: cannot open shared object file")

    monkeypatch.setattr(headers, "ensure", lambda: _headers(False))
    monkeypatch.setattr(libbpf, "compiler_version", lambda: None)
    monkeypatch.setattr(libbpf, "version", missing)
    monkeypatch.setattr(libbpf, "available", lambda: (False, "clang is not installed"))
    rows = {name: doctor.ENVIRONMENT[name]() for name in
            ("clang", "libbpf", "libbpf-style cells", "kernel struct reads")}
    assert {n: r.status for n, r in rows.items()} == {
        "clang": "warn", "libbpf": "warn", "libbpf-style cells": "warn",
        "kernel struct reads": "warn"}
    assert all("apt-get install clang libbpf-dev" in r.fix for r in rows.values())
    assert rows["libbpf-style cells"].detail == "no backend: clang is not installed"
    assert rows["kernel struct reads"].detail.startswith(
        "no backend reads them right: BCC compiles against 6.1.0-99-amd64 headers")


def test_doctor_asks_the_backends_only_through_the_registry():
    package = REPO / "ebpf_magic"
    for path in [package / "setup" / "doctor.py", package / "setup" / "probing.py",
                 package / "setup" / "scratch.py", *(package / "features").glob("*.py")]:
        text = path.read_text()
        assert "bcc" not in text.lower() and "libbpf" not in text.lower(), path
        assert "from .backend" not in text and "import _" not in text, path
    rows = {name: check() for name, check in doctor.ENVIRONMENT.items()}
    assert {"BCC", "kernel headers", "clang", "libbpf", "vmlinux.h cache", "BCC dialect cells",
            "libbpf-style cells", "kernel struct reads"} <= set(rows)
    assert all(isinstance(r, Row) and r.check == name for name, r in rows.items())


@pytest.mark.kernel
def test_finishes_in_bounded_time(observed):
    assert observed[0].elapsed < SANITY_SECONDS


@pytest.mark.kernel
def test_leaves_nothing_loaded(observed):
    report, fds_before, _ = observed
    assert len(report.prog_ids) >= sum(report.status(k) == "ok" for k in report.attach_kinds)
    assert not set(report.prog_ids) & loaded_prog_ids(), "doctor's programs still loaded"
    assert sorted(own_bpf_fds()) == fds_before, "BPF/perf descriptors left open"
    assert report.status("cleanup") == "ok"
    pid = os.getpid()
    assert not Path(f"/run/netns/ebpf-magic-doctor-{pid}").exists()
    assert not Path(f"/sys/class/net/emdoc{pid}").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"ebpf-magic-doctor-{pid}-*"))


@pytest.mark.kernel
def test_command_line_prints_the_table():
    done = _run_cli()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["check", "status", "detail"]
    table = {ln.split("  ")[0]: ln.split()[1:] for ln in lines if ln and not ln[0].isspace()}
    assert table["tracepoint"][0] == "ok"
    assert table["cleanup"][0] == "ok"
    if host.kprobes_supported():
        assert table["kprobe"][0] == "ok"
    else:
        assert table["kprobe"][0] == "unavailable"
        assert "fix: This kernel is built without kprobes" in " ".join(done.stdout.split())
    assert lines[-1] == "BPF can be used here."
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run doctor as another user")
def test_unprivileged_run_reports_privileges_with_a_fix():
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
    done = _run_cli(prefix=nobody)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    words = " ".join(done.stdout.split())
    assert "privileges fail not allowed to load BPF programs: running as uid 65534 with no " \
           "BPF capabilities fix: Loading BPF needs CAP_BPF and CAP_PERFMON" in words
    assert "tracepoint not checked needs privileges" in words
    assert done.stdout.splitlines()[-1].startswith("BPF cannot be used here yet")


def test_without_bcc_reports_how_to_install_it_and_uses_libbpf():
    code = ("import json, sys; import ebpf_magic.backend.bcc.locate as locate; "
            "locate.candidates = lambda: []; from ebpf_magic.setup import doctor; "
            "r = doctor.run(); print(json.dumps({'usable': r.usable, 'by': r.attach_backend, "
            "'rows': r.df.to_dict('records')}))")
    done = _run_cli(code=code)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    rows = {r["check"]: r for r in result["rows"]}
    assert rows["BCC"]["status"] == "fail"
    assert "python3-bpfcc" in rows["BCC"]["fix"] and "Not `pip install bcc`" in rows["BCC"]["fix"]
    if rows["privileges"]["status"] == "ok":
        assert result["by"] == "libbpf" and result["usable"]
        assert rows["tracepoint"]["status"] == "ok"
    else:
        assert not result["usable"]
        assert rows["tracepoint"] == {"check": "tracepoint", "status": "not checked",
                                      "detail": "needs privileges (see its fix above)",
                                      "fix": ""}


def test_report_renders_for_terminals_and_notebooks():
    report = Report([Row("privileges", "ok", "root"),
                     Row("kprobe", "unavailable", "cannot attach <kprobe>", "Use a tracepoint."),
                     Row("tracepoint", "ok", "attached")], elapsed=1.25,
                    backends={"a": Finding("a", OK, "")}, attach_kinds=["kprobe", "tracepoint"])
    text = str(report)
    assert "kprobe      unavailable  cannot attach <kprobe>" in text.splitlines()
    assert "fix: Use a tracepoint." in text
    assert text.splitlines()[-1] == "BPF can be used here."
    html = report._repr_html_()
    assert html.count("<tr>") == 1 + len(report.rows)
    assert "cannot attach &lt;kprobe&gt;" in html and "fix:</i> Use a tracepoint." in html
    assert list(report.df.columns) == ["check", "status", "detail", "fix"]
    assert report.df.values.tolist() == [
        ["privileges", "ok", "root", ""],
        ["kprobe", "unavailable", "cannot attach <kprobe>", "Use a tracepoint."],
        ["tracepoint", "ok", "attached", ""]]


def test_magic_subcommand(shell):
    report = shell.run_line_magic("bpf", "doctor --no-attach")
    assert isinstance(report, Report)
    assert [r.check for r in report.rows] == ENVIRONMENT_ROWS
    assert report.attach_kinds == [] and report.prog_ids == []
    assert set(report.backends) == {"bcc", "libbpf"}
    assert "%bpf doctor" in shell.find_line_magic("bpf").__doc__
    assert "--backend NAME" in shell.find_line_magic("bpf").__doc__
    with pytest.raises(UsageError, match="usage: %bpf doctor"):
        shell.run_line_magic("bpf", "doctor --bogus")
    with pytest.raises(UsageError, match="invalid choice: 'nope'"):
        shell.run_line_magic("bpf", "doctor --backend nope")
