"""The "Python 3 (eBPF)" kernelspec: install, run BPF in it with only the chosen rights, remove."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from ebpf_magic.backend.bcc import headers
from ebpf_magic.kernel import host as kernel
from ebpf_magic.setup import kernelspec, launcher

from conftest import loaded_prog_ids

NAME = "ebpf-test"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebpf_magic", *args],
                          capture_output=True, text=True, timeout=60)


def decode(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"{field} missing")


def execute(client, code: str) -> str:
    """Run ``code`` in the kernel; return its printed text, raising on an error."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "execute_result":
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))

    reply = client.execute_interactive(code, timeout=120, output_hook=hook)
    assert reply["content"]["status"] == "ok" and not errors, "\n".join(errors) or reply
    return "".join(out)

@contextlib.contextmanager
def running_kernel(name: str = NAME):
    """Start the installed kernel; yield (manager, client, kernel pid); always shut it down."""
    manager = KernelManager(kernel_name=name)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield manager, client, int(execute(client, "import os; print(os.getpid())"))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)



def test_wanted_capabilities_follow_kernel_version():
    assert launcher.wanted((6, 1), memlock_unlimited=True) == {
        launcher.CAP_BPF, launcher.CAP_PERFMON, launcher.CAP_NET_ADMIN, launcher.CAP_SYSLOG}
    assert launcher.CAP_SYS_RESOURCE in launcher.wanted((5, 10))
    old = launcher.wanted((5, 4))
    assert launcher.CAP_SYS_ADMIN in old and launcher.CAP_BPF not in old
    for unlimited in (True, False):  # tracefs is reached through its group instead
        assert kernel.CAP_DAC_OVERRIDE not in launcher.wanted((6, 1), unlimited)


def test_cli_installs_and_uninstalls_into_a_prefix(tmp_path):
    done = cli("install-kernel", "--prefix", str(tmp_path), "--name", NAME,
               "--display-name", "BPF here")
    assert done.returncode == 0, done.stderr
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / NAME
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-I", "-m", "ebpf_magic.setup.launcher", "-f",
                            "{connection_file}"]
    assert spec["display_name"] == "BPF here"
    done = cli("uninstall-kernel", "--prefix", str(tmp_path), "--name", NAME)
    assert done.returncode == 0, done.stderr
    assert not spec_dir.exists()
    missing = cli("uninstall-kernel", "--prefix", str(tmp_path), "--name", NAME)
    assert missing.returncode != 0 and "no kernel" in missing.stderr


@pytest.mark.kernel
def test_kernel_runs_bpf_with_only_the_chosen_capabilities(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    kernelspec.install(NAME, prefix=str(tmp_path))
    assert NAME in KernelSpecManager().find_kernel_specs()

    with running_kernel() as (manager, client, pid):
        assert pid == manager.provisioner.pid  # the launcher replaced itself
        status = Path(f"/proc/{pid}/status").read_text()
        chosen = launcher.mask(launcher.wanted()) & decode(
            Path("/proc/self/status").read_text(), "CapPrm")
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert kernel.cap_names(decode(status, field)) == kernel.cap_names(chosen), field

        rights = execute(client, "from ebpf_magic.kernel import host; print(host.capabilities())")
        assert "CAP_BPF" in rights and "CAP_SYS_ADMIN" not in rights
        denied = execute(client, f"""
try:
    os.chown({str(tmp_path)!r}, 1, 1)
    print("chown allowed")
except PermissionError:
    print("chown denied")""")
        assert denied.strip() == "chown denied"  # CAP_CHOWN is gone

        before = loaded_prog_ids()
        execute(client, "%load_ext ebpf_magic")
        execute(client, """%%bpf counter -q
BPF_HASH(calls, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}""")
        ids = set(json.loads(execute(client, "print(counter.prog_ids())")))
        assert ids and ids <= loaded_prog_ids() - before
        count = execute(client, """
import threading
for _ in range(250):
    os.getppid()
print(int(counter.maps["calls"][threading.get_native_id()]))""")
        assert int(count) == 250
        execute(client, "%bpf stop counter")
        assert not ids & loaded_prog_ids()
    assert not os.path.exists(f"/proc/{pid}")

    kernelspec.uninstall(NAME, prefix=str(tmp_path))
    assert NAME not in KernelSpecManager().find_kernel_specs()


NOBODY = 65534
FILE_CAPS = ",".join(kernel.cap_names(launcher.mask(launcher.wanted()))) + "+ep"


@pytest.fixture
def capable_python(tmp_path):
    """A copy of this venv's interpreter granted file capabilities, as docs/privileges.md says.

    It lives in a world-readable directory beside a copy of ``pyvenv.cfg`` and a link
    to the venv's ``lib``, so it runs with the venv's packages. It is granted what the
    launcher wants here, which never includes CAP_DAC_OVERRIDE.
    """
    setcap = shutil.which("setcap")
    if setcap is None:
        pytest.skip("setcap is missing (Debian package libcap2-bin)")
    venv = Path(sys.prefix)
    home = Path(tempfile.mkdtemp(prefix="ebpf-magic-nonroot-"))
    try:
        home.chmod(0o755)
        (home / "bin").mkdir()
        shutil.copy(venv / "pyvenv.cfg", home)
        (home / "lib").symlink_to(venv / "lib")
        python = home / "bin" / "python-bpf"
        shutil.copy(os.path.realpath(sys.executable), python)
        os.chown(python, 0, NOBODY)
        python.chmod(0o750)
        subprocess.run([setcap, FILE_CAPS, str(python)], check=True)
        data = home / "user"
        data.mkdir()
        os.chown(data, NOBODY, NOBODY)
        yield python, data
    finally:
        shutil.rmtree(home)


@pytest.mark.kernel
def test_unprivileged_user_gets_bpf_rights_through_a_capable_interpreter(
        tmp_path, monkeypatch, capable_python):
    python, data = capable_python
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    spec_file = Path(kernelspec.install(NAME, prefix=str(tmp_path), python=str(python)),
                     "kernel.json")
    spec = json.loads(spec_file.read_text())
    assert spec["argv"][0] == str(python)
    # The server would run as the user and write the connection file as them; here
    # only the kernel does, so the file is handed to the user first. The user is in
    # the group scripts/setup.sh gives tracefs to, as docs/privileges.md tells.
    runtime = data / "runtime"
    runtime.mkdir()
    os.chown(runtime, NOBODY, NOBODY)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    tracing = grp.getgrnam(launcher.ACCOUNT).gr_gid
    as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={tracing}"]
    spec["argv"] = ["sh", "-c", f'chown {NOBODY}:{NOBODY} "$0" && exec "$@"',
                    "{connection_file}", *as_user, *spec["argv"]]
    # The merged kernel headers root built are shared (building them takes seconds).
    assert headers.ensure().path is not None
    spec["env"] = {"HOME": str(data)}
    spec_file.write_text(json.dumps(spec))
    with running_kernel() as (_, client, pid):
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        assert set(map(int, uids)) == {NOBODY}
        assert kernel.cap_names(decode(status, "CapEff")) == kernel.cap_names(
            launcher.mask(launcher.wanted()))
        assert "NoNewPrivs:\t1" in status
        execute(client, "%load_ext ebpf_magic")
        execute(client, """%%bpf getpids -q -a uprobe:c:getpid=count
BPF_HASH(calls, u32, u64);
int count(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}""")
        count = execute(client, """
import ctypes, threading
libc, tid = ctypes.CDLL(None), threading.get_native_id()
before = int(getpids.maps["calls"].get(tid, 0))
for _ in range(40):
    libc.getpid()
print(int(getpids.maps["calls"][tid]) - before)""")
        assert int(count) == 40
        execute(client, "%bpf stop getpids")


def test_launcher_says_confinement_does_not_hold_before_5_8(monkeypatch, capsys):
    monkeypatch.setattr(kernel, "version_tuple", lambda: (5, 4))
    monkeypatch.setattr(launcher, "_start_as_account", lambda argv: (_ for _ in ()).throw(
        launcher.LaunchError("stop here")))
    monkeypatch.setattr(launcher, "restrict", lambda caps: (_ for _ in ()).throw(
        launcher.LaunchError("stop here")))
    assert launcher.main(["-f", "x.json"]) == 1
    err = capsys.readouterr().err
    assert "keeps CAP_SYS_ADMIN, which is nearly all of root" in err
