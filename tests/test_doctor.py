"""doctor: what it reports on this kernel, that it cleans up, and that it never crashes."""

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

from ebpf_magic.setup import doctor
from ebpf_magic.setup.doctor import Report, Row

from conftest import loaded_prog_ids, own_bpf_fds

REPO = Path(__file__).resolve().parent.parent
UNAVAILABLE_HERE = {"kprobe", "fentry", "hardware counters"}
AVAILABLE_HERE = {"tracepoint", "raw tracepoint", "uprobe", "USDT", "perf sampling",
                  "perf buffer", "ring buffer", "XDP"}
SANITY_SECONDS = 30  # a generous bound: doctor takes about 2 s here


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


@pytest.mark.kernel
def test_reports_exactly_what_works_on_this_kernel(observed):
    report = observed[0]
    statuses = {c.check: report.status(c.check) for c in doctor.CHECKS}
    assert {c for c, s in statuses.items() if s == "unavailable"} == UNAVAILABLE_HERE
    assert {c for c, s in statuses.items() if s == "ok"} == AVAILABLE_HERE
    assert report.usable
    rows = {r.check: r for r in report.rows}
    assert "CONFIG_KPROBES" in rows["kprobe"].fix and "tracepoint" in rows["kprobe"].fix
    assert "fentry" in rows["fentry"].fix
    assert "Hardware counters" in rows["hardware counters"].fix
    for name in UNAVAILABLE_HERE:
        assert rows[name].detail.startswith("cannot attach"), rows[name]
    assert "read back" in rows["perf buffer"].detail
    assert "read back" in rows["ring buffer"].detail


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
    text = (REPO / "ebpf_magic" / "setup" / "doctor.py").read_text()
    assert "backend.bcc" not in text and "backend.libbpf" not in text
    assert "from .backend" not in text
    assert "import _" not in text
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
    assert len(report.prog_ids) >= len(doctor.CHECKS) - len(UNAVAILABLE_HERE)
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
    assert table["kprobe"][0] == "unavailable"
    assert table["tracepoint"][0] == "ok"
    assert table["cleanup"][0] == "ok"
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


def test_without_bcc_reports_how_to_install_it():
    code = ("import json, sys; import ebpf_magic.backend.bcc.locate as locate; "
            "locate.candidates = lambda: []; from ebpf_magic.setup import doctor; "
            "r = doctor.run(); print(json.dumps({'usable': r.usable, "
            "'rows': r.df.to_dict('records')}))")
    done = _run_cli(code=code)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    rows = {r["check"]: r for r in result["rows"]}
    assert rows["BCC"]["status"] == "fail"
    assert "python3-bpfcc" in rows["BCC"]["fix"] and "Not `pip install bcc`" in rows["BCC"]["fix"]
    assert not result["usable"]
    if rows["privileges"]["status"] == "ok":
        assert rows["tracepoint"] == {"check": "tracepoint", "status": "not checked",
                                      "detail": "needs BCC (see its fix above)", "fix": ""}


def test_report_renders_for_terminals_and_notebooks():
    report = Report([Row("privileges", "ok", "root"), Row("BCC", "ok", "BCC 0.26.0"),
                     Row("kprobe", "unavailable", "cannot attach <kprobe>", "Use a tracepoint."),
                     Row("tracepoint", "ok", "attached")], elapsed=1.25)
    assert report.usable
    text = str(report)
    assert "kprobe      unavailable  cannot attach <kprobe>" in text.splitlines()
    assert "fix: Use a tracepoint." in text
    assert text.splitlines()[-1] == "BPF can be used here."
    html = report._repr_html_()
    assert html.count("<tr>") == 1 + len(report.rows)
    assert "cannot attach &lt;kprobe&gt;" in html and "fix:</i> Use a tracepoint." in html
    failing = Report([Row("privileges", "fail", "uid 1000", "Run as root.")])
    assert not failing.usable
    # without attach checks, usability rests on rights and BCC
    assert not Report([Row("privileges", "ok", ""), Row("BCC", "fail", "")]).usable
    unprobed = Report([Row("privileges", "ok", ""), Row("BCC", "ok", "")])
    assert unprobed.usable and "attach types were not checked" in unprobed.verdict
    assert not Report(report.rows[:3]).usable  # the only attach type tried is unavailable


def test_magic_subcommand(shell):
    report = shell.run_line_magic("bpf", "doctor --no-attach")
    assert isinstance(report, Report)
    assert [r.check for r in report.rows] == list(doctor.ENVIRONMENT)
    assert "%bpf doctor" in shell.find_line_magic("bpf").__doc__
    with pytest.raises(UsageError, match="usage: %bpf doctor"):
        shell.run_line_magic("bpf", "doctor --bogus")
