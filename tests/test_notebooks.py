"""Every teaching notebook runs headless: live in the least-privilege "Python 3 (eBPF)"
kernel, live as root, and replayed by a user without rights.

Every run must finish without an error and draw every figure (cells tagged
``figure`` must output an image). The eBPF kernel is the one ``./run lab`` gives:
its installed kernelspec started by root through jupyter_client, so that it runs
as the account ``ebpf-kernel`` with only the BPF capabilities. The replay runs as
``nobody`` with no capabilities (when the tests run as root), the way Binder runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nbformat
import pytest

from ebpf_magic.backend.bcc.headers import Headers
from ebpf_magic.backend.libbpf import FLAGS_ZERO_WARNING
from ebpf_magic.backend.libbpf._compile import LICENSE_NOTE
from ebpf_magic.kernel import runstats
from ebpf_magic.magics import cell as cell_magic
from ebpf_magic.magics import save
from ebpf_magic.sessions import RECORD_ENV, RECORDINGS_ENV, recording_path
from ebpf_magic.setup import kernelspec, launcher

from conftest import leaked_programs, loaded_prog_ids, own_bpf_fds, uprobe_events

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BOOKS = sorted(p.name for p in NOTEBOOKS.glob("[0-9]*.ipynb"))
# notebooks whose text discusses the warnings the backend gives for their cells
# argv: notebook, working directory, output [, kernel name: else the notebook's own]
RUNNER = """
import json, sys
import nbformat
from nbclient import NotebookClient
book = nbformat.read(sys.argv[1], as_version=4)
kernel = {"kernel_name": sys.argv[4]} if len(sys.argv) > 4 else {}
client = NotebookClient(book, timeout=300, allow_errors=True,
                        resources={"metadata": {"path": sys.argv[2]}}, **kernel)
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


def execute(notebook: str, home: Path, replay: bool,
            extra: Sequence[str] = ()) -> nbformat.NotebookNode:
    """Run ``notebook`` in a fresh kernel; as nobody without capabilities when ``replay``.

    ``extra``: code cells run after the notebook's own, in its namespace (checks of what
    its cells drew). The kernel is this interpreter's plain ipykernel ("python3"), not the
    python3-ebpf kernel the notebooks name: that one's launcher chooses its own
    user and rights, and these runs choose them (root live, nobody replaying).
    """
    out = home / "executed.ipynb"
    source = NOTEBOOKS / notebook
    if extra:
        book = nbformat.read(source, as_version=4)
        book.cells += [nbformat.v4.new_code_cell(code) for code in extra]
        source = home / notebook
        nbformat.write(book, source)
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
    done = subprocess.run(prefix + [python, str(runner), str(source),
                                    str(NOTEBOOKS), str(out), "python3"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(out, as_version=4)


def check(book: nbformat.NotebookNode, replay: bool) -> None:
    """No errors, every figure drawn, nothing on stderr."""
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
        errors += [f"{cell.source[:60]!r} wrote to stderr: {o.text[:300]!r}" for o in outputs
                   if o.output_type == "stream" and o.name == "stderr"]
    assert not errors, "\n".join(errors)
    assert not missing, f"cells that drew no figure: {missing}"
    text = json.dumps([c.get("outputs", []) for c in book.cells if c.cell_type == "code"])
    notes = sum(shown(c).count("kernel headers, not") for c in book.cells
                if c.cell_type == "code")
    assert notes <= 1, "the headers note is shown once per session"
    assert "not recording" not in text
    assert f"{RECORD_ENV}=1" not in text, "a notebook whose recordings exist names them, " \
        "without telling how to record"
    if replay:
        assert "replayed from" in text and ".bpfrec" in text, "a replay must say so"
        assert "no rights to load BPF" in text or "replay was requested" in text
    else:
        assert "live: programs load into this kernel" in text
        # a saved notebook shares its outputs: no kernel address (KASLR's secret) in them
        assert not re.search(r"0x[fF]{4}[0-9a-fA-F]{12}", text)


@pytest.fixture
def home():
    with tempfile.TemporaryDirectory(prefix="ebpf_magic_nb_") as tmp:
        path = Path(tmp)
        path.chmod(0o755)
        yield path


def test_every_notebook_has_its_recordings() -> None:
    assert len(BOOKS) >= 11
    recordings = list((NOTEBOOKS / "recordings").glob("*.bpfrec"))
    for name in BOOKS:
        book = nbformat.read(NOTEBOOKS / name, as_version=4)
        cells = [c.source.split()[1] for c in book.cells if c.cell_type == "code"
                 and re.match(r"%%bpf |%%?bpftrace ", c.source)]
        # `%bpf tool TOOL ... --name VAR` lines replay recordings/VAR.bpfrec too
        cells += re.findall(r"^%bpf tool \w+ .*--name (\w+)", "\n".join(
            c.source for c in book.cells if c.cell_type == "code"), re.M)
        assert cells, f"{name} has no %%bpf or %%bpftrace cell and no %bpf tool line"
        for prog in cells:
            assert (NOTEBOOKS / "recordings" / f"{prog}.bpfrec").is_file(), (name, prog)
    total = sum(p.stat().st_size for p in recordings)
    assert total < 500_000, f"recordings take {total} bytes; keep them small"


@pytest.mark.parametrize("notebook", BOOKS)
def test_notebook_replays_without_privileges(notebook: str, home: Path) -> None:
    check(execute(notebook, home, replay=True), replay=True)


@pytest.mark.kernel
@pytest.mark.parametrize("notebook", BOOKS)
def test_notebook_runs_live(notebook: str, home: Path) -> None:
    before = set(os.listdir(NOTEBOOKS / "recordings"))
    book = execute(notebook, home, replay=False)
    check(book, replay=False)
    assert set(os.listdir(NOTEBOOKS / "recordings")) == before
    if notebook.startswith("09"):
        flags_zero = next(c for c in book.cells if c.source.startswith("%%bpf trace_output0"))
        # the cost line is a display kept empty unless the program turns out costly
        displayed = [o.data for o in flags_zero.outputs
                     if o.output_type == "display_data" and o.data["text/plain"]]
        assert [d["text/plain"] for d in displayed] == [
            f"note: {LICENSE_NOTE}", f"warning: {FLAGS_ZERO_WARNING.format(map='my_map')}"]
        assert ">warning:</b> my_map: bpf_perf_event_output(" in displayed[1]["text/html"]
    if notebook.startswith("06"):
        assert not [n for n in os.listdir("/sys/class/net") if n.startswith("ebpfnb")]
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "ebpf_nb06" not in netns


@pytest.fixture(scope="module")
def ebpf_kernel():
    """The "Python 3 (eBPF)" kernelspec installed in this virtualenv, as ``./run lab`` does."""
    if os.geteuid() != 0:
        pytest.skip("only a kernel started by root runs as the eBPF kernel's account; these "
                    f"tests run as uid {os.geteuid()}")
    try:
        launcher.account()
    except launcher.LaunchError as e:
        pytest.fail(str(e))
    name = "ebpf-notebooks-test"
    kernelspec.install(name, prefix=sys.prefix)
    yield name
    kernelspec.uninstall(name, prefix=sys.prefix)


def processes_of(pid: int) -> set[int]:
    """``pid`` and its descendants (the compile worker, commands run from cells)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def run_in_ebpf_kernel(notebook: str, kernel_name: str) -> tuple[nbformat.NotebookNode, dict]:
    """Run ``notebook`` in the installed eBPF kernel, started by root in the notebooks' folder.

    Returns the executed notebook and what the kernel held after its last cell, read
    from outside while it still ran: ``{"pids", "bpf_fds", "programs", "uprobes"}``.
    """
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    book = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    before = loaded_prog_ids()
    client = NotebookClient(book, timeout=300, allow_errors=True, kernel_name=kernel_name,
                            kernel_manager_class=KernelManager,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    # the environment a root JupyterLab server started from a login shell passes on
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": "/root"}
    try:
        client.execute(cleanup_kc=False, env=env)
        pid = client.km.provisioner.pid
        pids = processes_of(pid)
        fds = {}
        for p in pids:
            with contextlib.suppress(OSError):  # a process that ended meanwhile holds nothing
                fds[p] = own_bpf_fds(p)
        if runstats.STATS_LINK in fds.get(pid, []):  # the launcher's, held for its lifetime
            fds[pid].remove(runstats.STATS_LINK)
        held = {
            "pids": pids,
            "bpf_fds": {p: found for p, found in fds.items() if found},
            "programs": leaked_programs(before, pids),
            "uprobes": [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e],
        }
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        if client.km is not None and client.km.has_kernel:
            client.km.shutdown_kernel(now=True)
    return book, held


@pytest.mark.kernel
@pytest.mark.parametrize("notebook", BOOKS)
def test_notebook_runs_live_in_the_least_privilege_kernel(notebook: str, ebpf_kernel) -> None:
    """Run All in the kernel a newcomer gets: no error, and nothing left in the kernel."""
    listing = sorted(os.listdir(NOTEBOOKS)), sorted(os.listdir(NOTEBOOKS / "recordings"))
    book, held = run_in_ebpf_kernel(notebook, ebpf_kernel)
    check(book, replay=False)
    assert held["programs"] == set(), "programs left loaded after the last cell"
    assert held["bpf_fds"] == {}, "BPF or perf descriptors left open after the last cell"
    assert held["uprobes"] == []
    assert (sorted(os.listdir(NOTEBOOKS)), sorted(os.listdir(NOTEBOOKS / "recordings"))) == \
        listing, "the eBPF kernel wrote into the notebooks' folder"
    if notebook.startswith("04"):  # the text says "about three seconds"
        took = shown(cell_with(book, "the workload took"))
        assert 2.5 <= float(re.search(r"took ([\d.]+) s", took).group(1)) <= 4.5, took


def test_notebooks_open_in_the_least_privilege_kernel() -> None:
    for name in BOOKS:
        spec = nbformat.read(NOTEBOOKS / name, as_version=4).metadata.kernelspec
        assert (spec.name, spec.display_name, spec.language) == (
            kernelspec.KERNEL_NAME, kernelspec.DISPLAY_NAME, "python"), name


def test_headers_note_once_per_session_and_each_cell_its_own_lines(capsys) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.instance()  # display() prints text/plain in a plain shell
    try:
        inexact = Headers(Path("/usr/src/linux-headers-6.1.0-41-amd64"),
                          "nearest distro headers", "6.1.0-41-amd64", exact=False)
        warned: set[str] = set()
        const = "x is const but not volatile"
        cell_magic.report_warnings(warned, [inexact.warning, const], ["GPL was assumed"])
        cell_magic.report_warnings(warned, [inexact.warning, const], ["GPL was assumed"])
        out, err = capsys.readouterr()
        cell = ["note: GPL was assumed", f"warning: {const}"]
        assert out.splitlines() == [cell[0],
            f"note: BCC compiles against 6.1.0-41-amd64 kernel headers, not "
            f"{platform.release()}'s, so its reads of kernel structs may be off "
            "(README, Kernel headers)", cell[1]] + cell
        assert err == ""
    finally:
        InteractiveShell.clear_instance()


def test_warning_is_a_displayed_line_marked_in_html(monkeypatch) -> None:
    shown_data: list[dict] = []
    monkeypatch.setattr(cell_magic, "display", lambda data, raw: shown_data.append(data))
    cell_magic.report_warnings(set(), ["a <b> & c"], ["n"])
    assert shown_data == [
        {"text/plain": "note: n", "text/html": '<small><span style="color:#666">note:</span> '
                                               "n</small>"},
        {"text/plain": "warning: a <b> & c",
         "text/html": '<small><b style="color:#b8860b">warning:</b> a &lt;b&gt; &amp; c</small>'}]


def test_save_without_recording_reads_as_routine(capsys, tmp_path, monkeypatch) -> None:
    """A notebook's closing save names the recording it keeps; how to record is said once,
    and only where there is no recording."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RECORD_ENV, raising=False)
    monkeypatch.delenv(RECORDINGS_ENV, raising=False)
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "lat.bpfrec").write_bytes(b"")

    class Live:
        running, recording = True, None

        def __init__(self, name: str) -> None:
            self.name = name

    class Magics:
        warned: set[str] = set()
        session = type("Session", (), {"get": staticmethod(Live)})()
        shell = type("Shell", (), {"user_ns": {}})()

    for name in ("lat", "x", "y", "lat"):
        save.run(Magics(), name)
    assert capsys.readouterr().out.splitlines() == [
        "lat: recordings/lat.bpfrec is unchanged",
        "x: nothing saved: %bpf save x PATH writes a file, and recordings/x.bpfrec is written "
        f"when recording (%%bpf x --record, or {RECORD_ENV}=1)",
        "y: nothing saved",
        "lat: recordings/lat.bpfrec is unchanged"]
    assert recording_path("lat").resolve() == (tmp_path / "recordings" / "lat.bpfrec").resolve()


def shown(cell: nbformat.NotebookNode) -> str:
    """What a code cell shows: its printed text and the plain text of its results."""
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                   for o in cell.get("outputs", []))


def cell_with(book: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    return next(c for c in book.cells if c.cell_type == "code" and text in c.source)


# The flags-0 chart of notebook 09: how many drawn bars its legend covers, on the figure as
# it was saved (the inline backend draws it whole, legend included).
LEGEND_COVERS = """
import json
from matplotlib.backends.backend_agg import FigureCanvasAgg
canvas = FigureCanvasAgg(ax.figure)  # the inline backend closed the figure it showed
canvas.draw()
renderer = canvas.get_renderer()
legend = ax.get_legend().get_window_extent(renderer)
bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_height() > 0]
drawn = ax.figure.get_tightbbox(renderer).transformed(ax.figure.dpi_scale_trans)
print(json.dumps({"bars": len(bars), "covered": sum(bool(legend.overlaps(b)) for b in bars),
                  "legend inside": bool(drawn.contains(legend.x0, legend.y0)
                                        and drawn.contains(legend.x1, legend.y1))}))
"""


def test_charts_and_their_text_show_what_they_are_for(home: Path) -> None:
    book = execute("09_bpf_syscall_and_libbpf.ipynb", home, replay=True, extra=[LEGEND_COVERS])
    seen = json.loads(shown(book.cells[-1]))
    assert seen["bars"] >= 2 and seen["covered"] == 0 and seen["legend inside"], seen

    # notebook 04: "about three seconds" of workload, snapshotted every half second
    book = execute("04_latency_histograms.ipynb", home, replay=True)
    prose = " ".join(c.source for c in book.cells if c.cell_type == "markdown")
    assert "about three seconds" in prose and "every half second" in prose
    snapshots = int(shown(cell_with(book, 'snaps.history("usecs")')).split()[0])
    assert snapshots >= 6, f"{snapshots} heatmap columns for about three seconds of workload"
    assert 'per_interval=True' in cell_with(book, "plots.heatmap(").source


def test_notebook_statements_are_computed_from_the_data(home: Path) -> None:
    import ebpf_magic

    recordings = NOTEBOOKS / "recordings"
    book = execute("07_investigation.ipynb", home, replay=True)
    prose = " ".join(c.source for c in book.cells if c.cell_type == "markdown")
    assert not re.search(r"\d\s*(ns|µs|us)\b|(nano|micro|milli)seconds?\b", prose), \
        "latencies are stated by cells that compute them"
    df = ebpf_magic.load(recordings / "inv.bpfrec").events["events"].df
    small = df[df["bytes"] < 512]
    writes = small.groupby("comm").size()
    leader = writes.idxmax()
    mine = small[small["comm"] == leader]
    assert f"{leader} issued {writes[leader]:,} of the {len(small):,} small writes " \
           f"({writes[leader] / len(small):.0%}), each a system call with a median of " \
           f"{mine['ns'].median():,.0f} ns" in shown(cell_with(book, "median_ns ="))

    book = execute("03_perf_events.ipynb", home, replay=True)
    df = ebpf_magic.load(recordings / "writes.bpfrec").events["events"].df
    first = df.drop_duplicates(["comm", "pid", "fd", "bytes"])
    dd, python = (set(first.loc[first["comm"] == c, "bytes"]) for c in ("dd", "python"))
    assert {512, 65536} <= dd and 6 in python  # both dd runs and the notebook's 6-byte lines
    assert repr(first) in shown(cell_with(book, 'writes.events["events"].df'))
