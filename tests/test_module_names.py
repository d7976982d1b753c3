"""One name per module: every module imports by the path of its file, and nothing else.

The one exception is what kernelspecs installed before the package was laid out in layers
run: ``python -I -m ebpf_magic.launcher``, a real module that runs the launcher.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from test_kernelspec import NAME, decode, execute, running_kernel

import ebpf_magic
from ebpf_magic.kernel import host as kernel
from ebpf_magic.setup import kernelspec, launcher

ROOT = Path(ebpf_magic.__file__).resolve().parent

IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import ebpf_magic
    failed = {}
    for info in pkgutil.walk_packages(ebpf_magic.__path__, "ebpf_magic."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # a backend's library missing here: its modules still count
            failed[info.name] = str(e)
    print(json.dumps({"modules": {n: getattr(m, "__file__", None) for n, m in sys.modules.items()
                                  if n == "ebpf_magic" or n.startswith("ebpf_magic.")},
                      "failed": failed}))
""")


def test_every_module_is_known_by_the_path_of_its_file():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True,
                          text=True, timeout=300, check=True)
    found = json.loads(done.stdout)
    assert not found["failed"], found["failed"]
    modules = found["modules"]
    wrong = {}
    for name, file in modules.items():
        parts = name.split(".")[1:]
        expected = ROOT.joinpath(*parts, "__init__.py") if ROOT.joinpath(*parts).is_dir() \
            else ROOT.joinpath(*parts[:-1], parts[-1] + ".py") if parts else ROOT / "__init__.py"
        if file is None or Path(file).resolve() != expected:
            wrong[name] = file
    assert not wrong, f"modules under a name that is not their file's: {wrong}"
    assert len(modules) == len(list(ROOT.rglob("*.py")))  # every file imported, once


@pytest.mark.parametrize("old", ["replay", "recording", "plots", "widgets", "doctor",
                                 "kernelspec", "sysbpf", "link", "streams", "histograms"])
def test_names_from_before_the_layers_are_gone(old):
    with pytest.raises(ModuleNotFoundError, match=f"ebpf_magic.{old}"):
        importlib.import_module(f"ebpf_magic.{old}")


def test_host_facts_are_read_from_the_host_module_only():
    from ebpf_magic import kernel as package

    assert kernel.has_bpf_rights  # the module ebpf_magic.kernel.host
    with pytest.raises(AttributeError):
        package.has_bpf_rights  # noqa: B018


def test_the_old_launcher_path_runs_the_launcher():
    """What ``python -I -m ebpf_magic.launcher --show`` prints is the launcher's own set."""
    old, new = (subprocess.run([sys.executable, "-I", "-m", module, "--show"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
                for module in ("ebpf_magic.launcher", "ebpf_magic.setup.launcher"))
    assert old == new == ",".join(kernel.cap_names(launcher.mask(launcher.wanted()))) + "\n"


@pytest.mark.kernel
def test_a_kernelspec_installed_before_the_layers_still_starts(tmp_path, monkeypatch):
    """A kernel.json naming ``ebpf_magic.launcher`` starts a confined kernel that runs BPF."""
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    old = kernelspec.spec()  # as installed before: python -I -m ebpf_magic.launcher -f ...
    old["argv"][old["argv"].index("ebpf_magic.setup.launcher")] = "ebpf_magic.launcher"
    kernelspec.install(NAME, prefix=str(tmp_path), contents=old)
    assert KernelSpecManager().get_kernel_spec(NAME).argv[1:4] == [
        "-I", "-m", "ebpf_magic.launcher"]

    with running_kernel() as (manager, client, pid):
        assert pid == manager.provisioner.pid  # the launcher replaced itself with the kernel
        status = Path(f"/proc/{pid}/status").read_text()
        chosen = launcher.mask(launcher.wanted()) & decode(
            Path("/proc/self/status").read_text(), "CapPrm")
        assert kernel.cap_names(decode(status, "CapBnd")) == kernel.cap_names(chosen)
        execute(client, "%load_ext ebpf_magic")
        out = execute(client, """%%bpf counter -q
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }""")
        assert out == ""
        assert execute(client, "print(counter.running)").strip() == "True"
        execute(client, "%bpf stop counter")
    kernelspec.uninstall(NAME, prefix=str(tmp_path))
