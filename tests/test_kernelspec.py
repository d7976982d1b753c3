"""The "Python 3 (eBPF)" kernelspec: install, run BPF in it with only the chosen rights, remove."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from ebpf_magic import kernelspec, launcher

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


def test_wanted_capabilities_follow_kernel_version_and_user():
    assert launcher.wanted((6, 1), uid=0) == {launcher.CAP_BPF, launcher.CAP_PERFMON,
                                              launcher.CAP_NET_ADMIN, launcher.CAP_SYSLOG}
    assert launcher.CAP_SYS_RESOURCE in launcher.wanted((5, 10), uid=0)
    old = launcher.wanted((5, 4), uid=0)
    assert launcher.CAP_SYS_ADMIN in old and launcher.CAP_BPF not in old
    assert launcher.CAP_DAC_OVERRIDE in launcher.wanted((6, 1), uid=1000)


def test_cli_installs_and_uninstalls_into_a_prefix(tmp_path):
    done = cli("install-kernel", "--prefix", str(tmp_path), "--name", NAME,
               "--display-name", "BPF here")
    assert done.returncode == 0, done.stderr
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / NAME
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"] == [sys.executable, "-m", "ebpf_magic.launcher", "-f",
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

    manager = KernelManager(kernel_name=NAME)
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        pid = int(execute(client, "import os; print(os.getpid())"))
        assert pid == manager.provisioner.pid  # the launcher replaced itself
        status = Path(f"/proc/{pid}/status").read_text()
        chosen = launcher.mask(launcher.wanted()) & decode(
            Path("/proc/self/status").read_text(), "CapPrm")
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert launcher.names(decode(status, field)) == launcher.names(chosen), field

        rights = execute(client, "from ebpf_magic import kernel; print(kernel.capabilities())")
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
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert not os.path.exists(f"/proc/{pid}")

    kernelspec.uninstall(NAME, prefix=str(tmp_path))
    assert NAME not in KernelSpecManager().find_kernel_specs()
