"""Every teaching notebook runs headless: live as root, and replayed by a user without rights.

Both runs must finish without an error and draw every figure (cells tagged
``figure`` must output an image). The replay runs as ``nobody`` with no
capabilities (when the tests run as root), the way Binder runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BOOKS = sorted(p.name for p in NOTEBOOKS.glob("[0-9]*.ipynb"))

RUNNER = """
import json, sys
import nbformat
from nbclient import NotebookClient
book = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(book, timeout=300, kernel_name="python3", allow_errors=True,
                        resources={"metadata": {"path": sys.argv[2]}})
client.execute()
nbformat.write(book, sys.argv[3])
"""

UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all"]


def unprivileged_python() -> tuple[str, str]:
    """An interpreter nobody may run, and the path to this environment's packages.

    A virtualenv's interpreter may live in a home directory other users cannot
    enter; the system's Python of the same version runs the same packages.
    """
    base = Path(os.path.realpath(sys.executable))
    if all(os.stat(p).st_mode & 0o001 for p in [base, *base.parents]):
        python = sys.executable
    else:
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        if not os.path.exists(python):
            pytest.skip(f"no interpreter an unprivileged user may run ({base} is private)")
    packages = [p for p in sys.path if p.endswith("site-packages")]
    return python, os.pathsep.join([str(NOTEBOOKS.parent), *packages])


def execute(notebook: str, home: Path, replay: bool) -> nbformat.NotebookNode:
    """Run ``notebook`` in a fresh kernel; as nobody without capabilities when ``replay``."""
    out = home / "executed.ipynb"
    runner = home / "runner.py"
    runner.write_text(RUNNER)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "LANG": "C.UTF-8",
           "EBPF_MAGIC_RECORDINGS": str(NOTEBOOKS / "recordings")}
    for key in ("BCC_KERNEL_SOURCE", "XDG_CACHE_HOME"):
        if key in os.environ and not replay:
            env[key] = os.environ[key]
    prefix: list[str] = []
    python = sys.executable
    if replay and os.geteuid() == 0:  # nobody without capabilities cannot trace: it replays
        os.chown(home, 65534, 65534)
        prefix = UNPRIVILEGED
        python, env["PYTHONPATH"] = unprivileged_python()
    elif replay:
        env["EBPF_MAGIC_REPLAY"] = "1"  # replays even where this user could trace
    done = subprocess.run(prefix + [python, str(runner), str(NOTEBOOKS / notebook),
                                    str(NOTEBOOKS), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(out, as_version=4)


def check(book: nbformat.NotebookNode, replay: bool) -> None:
    errors, missing = [], []
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        errors += [f"{cell.source[:60]!r}: {o.ename}: {o.evalue}" for o in outputs
                   if o.output_type == "error"]
        if "figure" in cell.metadata.get("tags", []) and not any(
                "image/png" in o.get("data", {}) for o in outputs):
            missing.append(cell.source[:60])
    assert not errors, "\n".join(errors)
    assert not missing, f"cells that drew no figure: {missing}"
    text = json.dumps([c.get("outputs", []) for c in book.cells if c.cell_type == "code"])
    if replay:
        assert "replayed from" in text and ".bpfrec" in text, "a replay must say so"
        assert "no rights to load BPF" in text or "replay was requested" in text
    else:
        assert "live: programs load into this kernel" in text


@pytest.fixture
def home():
    with tempfile.TemporaryDirectory(prefix="ebpf_magic_nb_") as tmp:
        path = Path(tmp)
        path.chmod(0o755)
        yield path


def test_every_notebook_has_its_recordings() -> None:
    assert len(BOOKS) == 9
    recordings = list((NOTEBOOKS / "recordings").glob("*.bpfrec"))
    for name in BOOKS:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        cells = [c.source.split()[1] for c in book.cells
                 if c.cell_type == "code" and c.source.startswith("%%bpf ")]
        assert cells, f"{name} has no %%bpf cell"
        for prog in cells:
            assert (NOTEBOOKS / "recordings" / f"{prog}.bpfrec").is_file(), (name, prog)
    total = sum(p.stat().st_size for p in recordings)
    assert total < 400_000, f"recordings take {total} bytes; keep them small"


@pytest.mark.parametrize("notebook", BOOKS)
def test_notebook_replays_without_privileges(notebook: str, home: Path) -> None:
    check(execute(notebook, home, replay=True), replay=True)


@pytest.mark.kernel
@pytest.mark.parametrize("notebook", BOOKS)
def test_notebook_runs_live(notebook: str, home: Path) -> None:
    before = set(os.listdir(NOTEBOOKS / "recordings"))
    check(execute(notebook, home, replay=False), replay=False)
    assert set(os.listdir(NOTEBOOKS / "recordings")) == before
    if notebook.startswith("06"):
        assert not [n for n in os.listdir("/sys/class/net") if n.startswith("ebpfnb")]
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "ebpf_nb06" not in netns
