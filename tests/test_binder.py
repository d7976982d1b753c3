"""The Binder configuration builds an environment that imports ebpf_magic and replays notebooks.

A fresh virtualenv (no system packages) is built from binder/ alone, the way
repo2docker does: ``pip install -r binder/requirements.txt``, then
``binder/postBuild`` in a copy of the repository. A notebook then runs in it
in replay mode. This installs from the package index, so it takes a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_notebooks import RUNNER, check

from ebpf_magic.setup.kernelspec import DISPLAY_NAME, KERNEL_NAME

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def test_binder_files_name_what_repo2docker_reads() -> None:
    names = {p.name for p in BINDER.iterdir()}
    assert {"requirements.txt", "postBuild", "runtime.txt"} <= names
    assert os.access(BINDER / "postBuild", os.X_OK)
    requirements = [ln.split(">")[0].split("=")[0].strip().lower()
                    for ln in (BINDER / "requirements.txt").read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
    assert "pyarrow" in requirements and "jupyterlab" in requirements
    assert "bcc" not in requirements  # PyPI's "bcc" is an unrelated project
    # postBuild installs the package without its dependencies: requirements.txt names them all
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(),
                      re.S | re.M)
    needed = re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)
    missing = {re.split(r"[<>=!~ \[;]", d)[0].lower() for d in needed} - set(requirements)
    assert not missing, f"binder/requirements.txt lacks {sorted(missing)}"
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-3.")


def repository_copy(dest: Path) -> Path:
    """The files git would publish (tracked and untracked, not ignored), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("binder")
    repo = repository_copy(base / "repo")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                          "binder/requirements.txt"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    post = subprocess.run(["bash", "binder/postBuild"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert post.returncode == 0, post.stderr[-3000:]
    return python, repo


def test_binder_environment_imports_the_package(binder_env, tmp_path: Path) -> None:
    python, _ = binder_env
    done = subprocess.run([str(python), "-c", "import ebpf_magic, sys; "
                           "print(ebpf_magic.__file__); print(sys.flags.no_site)"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    where = done.stdout.splitlines()[0]
    assert "site-packages" in where, f"imported from {where}, not from the environment"
    probe = subprocess.run([str(python), "-c", "import bcc"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the Binder environment must not depend on BCC"


@pytest.mark.parametrize("notebook", ["04_latency_histograms.ipynb", "10_bpftrace.ipynb"])
def test_binder_environment_replays_a_notebook(binder_env, tmp_path: Path, notebook: str
                                                ) -> None:
    python, repo = binder_env
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    out = tmp_path / "executed.ipynb"
    env = {"PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "MPLCONFIGDIR": str(tmp_path / "mpl"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "EBPF_MAGIC_REPLAY": "1", "LANG": "C.UTF-8"}
    notebooks = repo / "notebooks"
    book = notebooks / notebook
    assert nbformat.read(book, as_version=4).metadata.kernelspec.name == KERNEL_NAME
    done = subprocess.run([str(python), str(runner), str(book), str(notebooks), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]  # it started the kernel the notebook names
    check(nbformat.read(out, as_version=4), replay=True)


def test_binder_kernel_named_by_the_notebooks_is_a_plain_ipykernel(binder_env) -> None:
    python, _ = binder_env
    listed = subprocess.run([str(python), "-m", "jupyter", "kernelspec", "list", "--json"],
                            capture_output=True, text=True, check=True)
    spec = json.loads(listed.stdout)["kernelspecs"][KERNEL_NAME]["spec"]
    assert spec["display_name"] == DISPLAY_NAME
    assert "ipykernel_launcher" in spec["argv"] and "ebpf_magic.setup.launcher" not in spec["argv"]
