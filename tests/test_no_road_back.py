"""No road from the eBPF kernel's account back to root, through a real root Jupyter server.

The server is this environment's JupyterLab started as root the way ``scripts/lab.sh``
starts it, configured as ``scripts/setup.sh`` leaves it, with its token in its
environment (as ``JUPYTER_TOKEN`` puts it there) and root's usual secrets beside it.
Cells run in kernels the server started, reached through the connection files it wrote.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from test_kernelspec import execute

import ebpf_magic
from ebpf_magic.kernel import tracefs
from ebpf_magic.setup import kernelspec, launcher, workspace

from conftest import ATTEMPTS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RECORDINGS = NOTEBOOKS / "recordings"


def _account():
    if os.geteuid() != 0:
        pytest.skip(f"a root Jupyter server needs root; these tests run as uid {os.geteuid()}")
    try:
        return launcher.account()
    except launcher.LaunchError as e:
        pytest.fail(str(e))


class Server:
    """A root JupyterLab server on 127.0.0.1, and what it was started with."""

    def __init__(self, tmp: Path) -> None:
        self.token = secrets.token_hex(24)
        self.runtime = tmp / "runtime"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        empty = tmp / "empty"
        empty.mkdir()
        # Root's environment, as a root shell might have it.
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:bin",
            "LANG": "C.UTF-8", "TERM": "xterm", "HOME": "/root", "USER": "root",
            "JUPYTER_TOKEN": self.token, "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
            "PYTHONPATH": str(empty), "LD_LIBRARY_PATH": str(empty),
            "AWS_SECRET_ACCESS_KEY": "root-cloud-secret", "SSH_AUTH_SOCK": "/root/agent",
            "https_proxy": "http://root:proxy-secret@127.0.0.1:9", "no_proxy": "127.0.0.1",
            "EBPF_MAGIC_HOSTNAME": "0", "EBPF_MAGIC_CACHE": "/root/.cache/ebpf_magic",
            "LC_TIME": "C.UTF-8",
        }
        self.log = (tmp / "server.log").open("w")
        # scripts/lab.sh serves a working copy of the notebooks, in a folder of root's
        holder = Path(tempfile.mkdtemp(prefix="ebpf-magic-lab-", dir="/var/tmp"))
        holder.chmod(0o755)
        self.workspace = workspace.prepare(NOTEBOOKS, holder / "lab")
        # scripts/lab.sh: jupyter lab --ip=127.0.0.1 --no-browser --allow-root WORKSPACE
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", "--no-browser",
             "--allow-root", f"--port={self.port}", "--ServerApp.port_retries=0",
             "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             str(self.workspace)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=NOTEBOOKS.parent)
        deadline = time.monotonic() + 90
        while self.api("GET", "/api/status")[0] != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("JupyterLab did not start:\n" +
                                     (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.3)

    def api(self, method: str, path: str, body: dict | None = None,
            token: str | None = "") -> tuple[int, object]:
        """(HTTP status, decoded reply) of a request with the token (or ``token``)."""
        token = self.token if token == "" else token
        headers = {"Authorization": f"token {token}"} if token else {}
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                text = reply.read()
                status = reply.status
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return 0, None
        try:
            return status, json.loads(text or b"null")
        except ValueError:
            return status, text

    def session(self, path: str, kind: str = "notebook", kernel: str | None = None):
        """A session the server starts (its default kernel unless ``kernel``); its client."""
        body = {"path": path, "type": kind, "name": Path(path).name}
        if kernel:
            body["kernel"] = {"name": kernel}
        status, model = self.api("POST", "/api/sessions", body)
        assert status == 201, (status, model)
        client = BlockingKernelClient(
            connection_file=str(self.runtime / f"kernel-{model['kernel']['id']}.json"))
        client.load_connection_file()
        client.start_channels(hb=False)  # the server watches the kernel's heartbeat
        client.wait_for_ready(timeout=60)
        return model, client

    def end(self, model, client) -> None:
        client.stop_channels()
        self.api("DELETE", f"/api/sessions/{model['id']}")

    def stop(self) -> None:
        self.api("POST", "/api/shutdown")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.workspace.parent)


@pytest.fixture(scope="module")
def server():
    _account()
    tmp = Path(tempfile.mkdtemp(prefix="ebpf-magic-server-"))  # 0700, root's
    lab = Server(tmp)
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(tmp)


def test_lab_offers_only_the_ebpf_kernel_and_no_terminals(server):
    status, specs = server.api("GET", "/api/kernelspecs")
    assert status == 200
    assert (specs["default"], set(specs["kernelspecs"])) == (kernelspec.KERNEL_NAME,
                                                            {kernelspec.KERNEL_NAME})
    # Listed or not, ipykernel's own "python3" would run as root: the server refuses it.
    for body in ({"name": "python3"}, {"name": "python3", "path": "recordings"}):
        assert server.api("POST", "/api/kernels", body)[0] >= 400
    assert server.api("GET", "/api/kernels") == (200, [])
    assert server.api("POST", "/api/terminals")[0] == 404
    assert server.api("GET", "/clusters")[0] == 404  # ipyparallel's cluster starter
    # Root's own tools (nbclient, jupyter console) get an isolated plain kernel.
    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert kernelspec.is_isolated(argv) and argv[argv.index("-m") + 1] == "ipykernel_launcher"


def test_lab_serves_a_copy_of_the_notebooks_and_installs_nothing(server):
    """What the lab's user (or a cell that became them) writes lands in the lab's copy,
    never in the checkout, whose notebooks root runs; no package is installed on request."""
    checkout = {p.name: p.read_bytes() for p in NOTEBOOKS.glob("*.ipynb")}
    name = sorted(checkout)[0]
    status, model = server.api("GET", f"/api/contents/{name}")
    assert status == 200 and model["type"] == "notebook"
    model["content"]["cells"].insert(0, {"cell_type": "code", "source": "import os",
                                         "metadata": {}, "outputs": [],
                                         "execution_count": None})
    assert server.api("PUT", f"/api/contents/{name}", {
        "type": "notebook", "format": "json", "content": model["content"]})[0] == 200
    assert server.api("PUT", "/api/contents/refresh_recordings.py", {
        "type": "file", "format": "text", "content": "print('planted by the lab')\n"})[0] == 201
    assert "import os" in (server.workspace / name).read_text()
    assert {p.name: p.read_bytes() for p in NOTEBOOKS.glob("*.ipynb")} == checkout
    assert "planted by the lab" not in (NOTEBOOKS / "refresh_recordings.py").read_text()
    # JupyterLab's extension manager is read-only: it would pip-install as root
    status, page = server.api("GET", "/lab")
    assert status == 200
    config = json.loads(page.decode().split('id="jupyter-config-data" type="application/json">'
                                            )[1].split("</script>")[0])
    assert config["extensionManager"]["name"] == "read-only"
    assert config["extensionManager"]["can_install"] is False
    (server.workspace / "refresh_recordings.py").unlink()


ENVIRON = """import json
print(json.dumps(dict(v.split("=", 1) for v in
                      open("/proc/self/environ").read().split("\\0") if v)))"""


def test_kernel_environment_is_the_allowlist(server):
    entry = _account()
    model, client = server.session("environment.ipynb")
    try:
        env = json.loads(execute(client, ENVIRON))
    finally:
        server.end(model, client)
    home = entry.pw_dir
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8", "LC_TIME": "C.UTF-8", "TERM": "xterm",
        "EBPF_MAGIC_HOSTNAME": "0",
        "HOME": home, "USER": entry.pw_name, "LOGNAME": entry.pw_name,
        "XDG_CACHE_HOME": f"{home}/.cache", "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share", "XDG_STATE_HOME": f"{home}/.local/state",
        "JPY_PARENT_PID": str(server.process.pid), "JPY_SESSION_NAME": env["JPY_SESSION_NAME"],
        # the run statistics descriptor the launcher took as root (the one thing of root's)
        "EBPF_MAGIC_STATS_FD": env["EBPF_MAGIC_STATS_FD"],
    }
    assert env["JPY_SESSION_NAME"].endswith("environment.ipynb")
    assert env["EBPF_MAGIC_STATS_FD"].isdigit()


# Looks for the token (given reversed, so that the cell's own text, kept in IPython's
# history, does not hold it) everywhere the kernel can read, then tries the server's API.
SEARCH = r"""
import json, os, stat, urllib.error, urllib.request
needle = "".join(reversed(REVERSED)).encode()
found = []
def look(path, limit=4 << 20):
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size <= limit:
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(path)
    except OSError:
        pass
if needle in open("/proc/self/environ", "rb").read():
    found.append("own environment")
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for what in ("cmdline", "environ", "comm"):
            look(f"/proc/{pid}/{what}")
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                look(os.path.realpath(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
for top in ROOTS:
    for here, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__")]
        for name in names:
            look(os.path.join(here, name))
candidates = [None] + [v for k, v in os.environ.items() if "TOKEN" in k]
api = {}
for token in candidates:
    for method, path in (("GET", "/api/kernels"), ("POST", "/api/kernels"),
                         ("GET", "/api/contents"), ("POST", "/api/terminals")):
        headers = {"Authorization": f"token {token}"} if token else {}
        request = urllib.request.Request(BASE + path, method=method, headers=headers,
                                         data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                api[f"{method} {path} {bool(token)}"] = reply.status
        except urllib.error.HTTPError as e:
            api[f"{method} {path} {bool(token)}"] = e.code
print(json.dumps({"found": found, "api": api}))
"""

SEARCHED = ["/tmp", "/var/tmp", "/dev/shm", "/run", "/var/lib", "/var/cache", "/var/log",
            "/etc", "/root", "/home", "/opt", "/srv", str(NOTEBOOKS.parent)]


def test_kernel_finds_no_token_and_cannot_use_the_api(server):
    _account()
    needle = server.token.encode()
    # It is there to be found: in the server's environment and its runtime files.
    assert needle in Path(f"/proc/{server.process.pid}/environ").read_bytes()
    assert any(needle in p.read_bytes() for p in server.runtime.glob("jpserver-*.json"))
    model, client = server.session("search.ipynb")
    try:
        code = (SEARCH.replace("REVERSED", repr(server.token[::-1]))
                .replace("BASE", repr(server.base))
                .replace("ROOTS", repr(SEARCHED + [str(server.runtime.parent)])))
        seen = json.loads(execute(client, code))
    finally:
        server.end(model, client)
    assert seen["found"] == []
    assert set(seen["api"].values()) == {403}, seen["api"]


def test_kernel_output_stays_out_of_roots_terminal(server):
    """What the kernel writes to its stdout and stderr (terminal escapes that set the
    clipboard, here) reaches neither the root server's terminal nor its log."""
    entry = _account()
    marker = secrets.token_hex(8)
    model, client = server.session("output.ipynb")
    try:
        execute(client, f"import os\nos.write(1, b'\\x1b]52;c;cm0gLXJmIH4K\\x07{marker}-1')\n"
                        f"os.write(2, b'{marker}-2')")
    finally:
        server.end(model, client)
    server.log.flush()
    assert marker not in Path(server.log.name).read_text(errors="replace")
    # The account's own file: read without following a link it may have put there.
    fd = os.open(Path(entry.pw_dir, ".local", "state", "ebpf_magic", "kernel.log"),
                 os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as log:
        assert os.fstat(log.fileno()).st_uid == entry.pw_uid
        logged = f"{marker}-1".encode() in log.read()
    assert logged, "the kernel's output is not in its log"


PLANTED = """import os, runpy, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran"), "a") as f:
    f.write(f"{os.getuid()}\\n")
# then start the real kernel, so that whoever started this one notices nothing
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd(), os.path.dirname(__file__))]
runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
"""

PLANT = ATTEMPTS + r"""
import json
def plant(path):
    with open(path, "w") as f:
        f.write(PLANTED)
print(json.dumps({
    "link in recordings": attempt(lambda: os.symlink(VICTIM, RECORDINGS + "/hello.bpfrec.tmp")),
    "code in recordings": attempt(lambda: plant(RECORDINGS + "/ipykernel_launcher.py")),
    "code in notebooks": attempt(lambda: plant(NOTEBOOKS + "/ipykernel_launcher.py")),
    "code in the lab": attempt(lambda: plant(LAB + "/ipykernel_launcher.py")),
    "link in the lab's recordings": attempt(lambda: os.symlink(VICTIM, LAB + "/recordings/x")),
    "link in shared": attempt(lambda: os.symlink(VICTIM, SHARED + "/hello.bpfrec.tmp")),
    "link at name in shared": attempt(lambda: os.symlink(VICTIM, SHARED + "/hello.bpfrec")),
    "code in shared": attempt(lambda: plant(SHARED + "/ipykernel_launcher.py")),
}))
"""


def test_nothing_the_account_plants_is_run_or_written_through_by_root(server):
    """The account plants links and an ``ipykernel_launcher.py`` where root saves recordings
    and opens consoles; root then saves and opens consoles: nothing of root's changes, and
    the planted code never runs."""
    entry = _account()
    victim = Path(tempfile.mkstemp(prefix="ebpf-magic-victim-", dir="/root")[1])
    victim.write_text("root's own\n")
    # A folder the account may write, inside the server's tree (as a user might make one).
    shared = server.workspace / f"shared-{secrets.token_hex(4)}"
    shared.mkdir(mode=0o755)
    os.chown(shared, entry.pw_uid, entry.pw_gid)
    planted_here = [RECORDINGS / "hello.bpfrec.tmp", RECORDINGS / "ipykernel_launcher.py",
                    NOTEBOOKS / "ipykernel_launcher.py"]
    consoles = []
    try:
        model, client = server.session("plant.ipynb")
        try:
            code = (PLANT.replace("PLANTED", repr(PLANTED)).replace("VICTIM", repr(str(victim)))
                    .replace("RECORDINGS", repr(str(RECORDINGS)))
                    .replace("NOTEBOOKS", repr(str(NOTEBOOKS)))
                    .replace("LAB", repr(str(server.workspace)))
                    .replace("SHARED", repr(str(shared))))
            seen = json.loads(execute(client, code))
        finally:
            server.end(model, client)
        assert seen == {"link in recordings": "PermissionError",
                        "code in recordings": "PermissionError",
                        "code in notebooks": "PermissionError",
                        "code in the lab": "PermissionError",
                        "link in the lab's recordings": "PermissionError",
                        "link in shared": "allowed",
                        "link at name in shared": "allowed", "code in shared": "allowed"}

        # Root saves a recording where the account planted links.
        saved = ebpf_magic.load(RECORDINGS / "hello.bpfrec").save(shared / "hello.bpfrec")
        assert not saved.is_symlink() and saved.stat().st_uid == 0
        # Root opens consoles there: the lab's default kernel, the plain one by name (refused)
        # and, outside the server, the environment's "python3" kernel (jupyter console).
        consoles.append(server.session(f"{shared.name}/console-1", "console"))
        status, _ = server.api("POST", "/api/sessions", {
            "path": f"{shared.name}/console-2", "type": "console", "name": "console-2",
            "kernel": {"name": "python3"}})
        assert status >= 400
        plain = KernelManager(kernel_name="python3")
        plain.start_kernel(cwd=str(shared))
        try:
            plain_client = plain.client()
            plain_client.start_channels()
            plain_client.wait_for_ready(timeout=60)
            assert execute(plain_client, "import os; print(os.getuid())").strip() == "0"
            plain_client.stop_channels()
        finally:
            plain.shutdown_kernel(now=True)
        assert victim.read_text() == "root's own\n"
        ran = shared / "ran"
        assert not (ran.exists() or ran.is_symlink()), \
            f"planted code ran as uid {_read_nofollow(ran).split()}"
    finally:
        for model, client in consoles:
            server.end(model, client)
        for p in planted_here:
            if p.is_symlink() or p.exists():
                p.unlink()
        shutil.rmtree(shared)
        victim.unlink()


SAVES = """
import os
%load_ext ebpf_magic
%bpf load hello RECORDING
try:
    %bpf save hello recordings/hello.bpfrec
except Exception as e:
    print(type(e).__name__, e.message, "|", e.hint)
%bpf save hello ~/hello-copy.bpfrec
print(os.path.getsize(os.path.expanduser("~/hello-copy.bpfrec")) > 0)
os.unlink(os.path.expanduser("~/hello-copy.bpfrec"))
"""


def test_the_kernel_saves_in_its_home_and_is_told_so_elsewhere(server):
    entry = _account()
    before = (RECORDINGS / "hello.bpfrec").read_bytes()
    model, client = server.session("saves.ipynb")
    try:
        shown = execute(client, SAVES.replace("RECORDING", str(RECORDINGS / "hello.bpfrec")))
    finally:
        server.end(model, client)
    assert shown.splitlines()[1:] == [
        f"BPFError cannot save hello to recordings/hello.bpfrec: Permission denied (this "
        f"process runs as user {entry.pw_name}) | Save where this user may write, e.g. "
        "%bpf save hello ~/hello.bpfrec. The eBPF kernel of ./run lab may write only its "
        "home: the notebooks' folders are root's, and their recordings are refreshed by "
        "notebooks/refresh_recordings.py run as root.",
        f"hello: saved to {entry.pw_dir}/hello-copy.bpfrec", "True"]
    assert (RECORDINGS / "hello.bpfrec").read_bytes() == before


def test_refresh_recordings_refuses_a_kernel_that_imports_from_where_it_starts(monkeypatch):
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import refresh_recordings
    finally:
        sys.path.remove(str(NOTEBOOKS))
    refresh_recordings.check()  # as scripts/setup.sh leaves things
    stock = KernelSpecManager().get_kernel_spec("python3")
    stock.argv = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: stock)
    with pytest.raises(SystemExit, match="imports from the working directory"):
        refresh_recordings.check()


def _read_nofollow(path: Path) -> str:
    """A file the account may have replaced by a link, read without following it."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            return f.read(4096).decode(errors="replace")
    except OSError as e:
        return f"({e.strerror})"


@pytest.mark.kernel
def test_tracefs_lets_the_group_write_probe_definitions_only():
    entry = _account()
    top = tracefs.root()
    assert top is not None
    writable = sorted(os.path.relpath(os.path.join(here, name), top)
                      for here, dirs, names in os.walk(top) for name in dirs + names
                      if (st := os.lstat(os.path.join(here, name))).st_mode & 0o002
                      or st.st_mode & 0o020 and st.st_gid == entry.pw_gid)
    assert writable == [f for f in ("kprobe_events", "uprobe_events") if (top / f).exists()]
