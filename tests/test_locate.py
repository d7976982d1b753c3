"""Finding the system's BCC from a virtualenv, and the error when it is absent."""

import subprocess
import sys
import textwrap

import pytest

from ebpf_magic.backend.bcc import locate
from ebpf_magic.errors import BCCNotFoundError


def test_candidates_include_env_dir(tmp_path, monkeypatch):
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text("BPF = object\n")
    monkeypatch.setenv(locate.ENV_VAR, str(tmp_path))
    assert locate.candidates()[0] == tmp_path


def _run_isolated(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (no sys.modules from this test process)."""
    import os
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=60)


def _need_bcc(r: subprocess.CompletedProcess) -> None:
    """Skip where BCC is not installed (a kernel test: under CI=true that skip fails)."""
    if "BCC's Python package was not found" in r.stderr:
        pytest.skip("BCC not installed")


@pytest.mark.kernel
def test_imports_system_bcc_alone():
    """From this venv, `import bcc` fails, yet BCC is found without site-packages on the path."""
    r = _run_isolated("""
        import sys
        from ebpf_magic.backend.bcc.locate import import_bcc
        before = list(sys.path)
        bcc = import_bcc()
        assert sys.path == before, "sys.path was changed"
        assert hasattr(bcc, "BPF") and hasattr(bcc, "USDT")
        print(bcc.__file__)
        import netaddr  # a dist-packages module BCC does not need must stay invisible
    """, {})
    _need_bcc(r)
    assert "/bcc/__init__.py" in r.stdout
    assert "No module named 'netaddr'" in r.stderr


@pytest.mark.kernel
def test_unrelated_pypi_bcc_is_ignored(tmp_path):
    fake = tmp_path / "site" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("LATTICE = True\n")
    r = _run_isolated("""
        from ebpf_magic.backend.bcc.locate import import_bcc
        print(hasattr(import_bcc(), "BPF"))
    """, {"PYTHONPATH": str(tmp_path / "site")})
    _need_bcc(r)
    assert r.stdout.strip() == "True", r.stderr


def test_missing_bcc_names_the_package(monkeypatch):
    monkeypatch.setattr(locate, "_SEARCH", [])
    monkeypatch.delenv(locate.ENV_VAR, raising=False)
    monkeypatch.setitem(sys.modules, "bcc", None)  # make `import bcc` fail
    monkeypatch.setattr(locate, "os_release", lambda: {"ID": "debian"})
    with pytest.raises(BCCNotFoundError) as info:
        locate.import_bcc()
    text = str(info.value)
    assert "apt-get install python3-bpfcc" in text and "pip install bcc" in text
    monkeypatch.setattr(locate, "os_release", lambda: {"ID": "fedora"})
    assert "dnf install python3-bcc" in locate.install_hint()
