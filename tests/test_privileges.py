"""The eBPF kernel started by root runs as its own account: BPF works, root's rights do not.

The kernelspec is installed the way ``scripts/lab.sh`` installs it (into this
virtualenv, ``--sys-prefix``) and started by this (root) process through
jupyter_client, as a root Jupyter server would start it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from test_kernelspec import execute, running_kernel

from ebpf_magic.backend.bcc import headers
from ebpf_magic.internal import cache
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import runstats, sysbpf
from ebpf_magic.setup import kernelspec, launcher

from conftest import ATTEMPTS, loaded_prog_ids, uprobe_events

NAME = "ebpf-privileges-test"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ETH_P_TEST = 0x88B5  # IEEE 802 local experimental ethertype: nothing else sends it


def _account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("only a kernel started by root changes user; these tests run as "
                    f"uid {os.geteuid()}")
    try:
        return launcher.account()
    except launcher.LaunchError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def spec_dir():
    """The test kernelspec in this virtualenv, as ``install-kernel --sys-prefix`` writes it."""
    path = Path(kernelspec.install(NAME, prefix=sys.prefix))
    yield path
    kernelspec.uninstall(NAME, prefix=sys.prefix)


def status_of(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def bpf_mask() -> int:
    return launcher.mask(launcher.wanted())


def assert_confined(pid: int, entry: pwd.struct_passwd) -> None:
    """The kernel process is the account, holds exactly the BPF capabilities, gains nothing."""
    status = status_of(pid)
    assert set(status["Uid"].split()) == {str(entry.pw_uid)}, status["Uid"]
    assert set(status["Gid"].split()) == {str(entry.pw_gid)}, status["Gid"]
    assert status["Groups"].split() == [str(entry.pw_gid)]
    for field in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert kernel.cap_names(int(status[field], 16)) == kernel.cap_names(bpf_mask()), field
    assert status["NoNewPrivs"] == "1"


@pytest.mark.kernel
def test_kernel_runs_as_its_account_with_only_bpf_capabilities(spec_dir):
    entry = _account()
    argv = json.loads((spec_dir / "kernel.json").read_text())["argv"]
    assert argv[1:4] == ["-I", "-m", "ebpf_magic.setup.launcher"]
    with running_kernel(NAME) as (manager, client, pid):
        assert pid == manager.provisioner.pid  # the launcher replaced itself
        assert_confined(pid, entry)
        seen = json.loads(execute(client, """
import json, subprocess, sys
child = subprocess.run([sys.executable, "-c", "print(open('/proc/self/status').read())"],
                       capture_output=True, text=True, check=True).stdout
print(json.dumps({"home": os.environ["HOME"], "child": child,
                  "ipython": get_ipython().profile_dir.location}))"""))
        # The compile worker and commands run from cells keep the same rights.
        child = {ln.split(":")[0]: ln.split()[1] for ln in seen["child"].splitlines() if ":" in ln}
        assert int(child["CapEff"], 16) == bpf_mask()
        assert child["Uid"] == str(entry.pw_uid)
        assert seen["home"] == entry.pw_dir
        assert seen["ipython"].startswith(entry.pw_dir)
        # The notebooks and their recordings stay root's; the kernel saves in its home.
        where = json.loads(execute(client, f"""
paths = [{str(NOTEBOOKS / "recordings")!r}, {str(NOTEBOOKS)!r}, os.path.expanduser("~")]
print(json.dumps([os.access(p, os.W_OK) for p in paths]))"""))
        assert where == [False, False, True]
        detail = execute(client, "from ebpf_magic import features\n"
                                 "print(features.check_process().detail)")
        assert f"uid {entry.pw_uid} ({entry.pw_name})" in detail
        assert "cap_bpf" in detail and "cap_sys_admin" not in detail


ESCAPES = ATTEMPTS + r"""
import json
from ebpf_magic.setup import launcher
def write(path):
    with open(path, "a") as f:
        f.write("")
def kill():
    os.kill(VICTIM, 0)
print(json.dumps({
    "write /etc": attempt(lambda: write("/etc/ebpf-magic-escape")),
    "read /etc/shadow": attempt(lambda: open("/etc/shadow").read()),
    "setuid(0)": attempt(lambda: os.setuid(0)),
    "setgid(0)": attempt(lambda: os.setgid(0)),
    "ptrace": attempt(lambda: ptrace(VICTIM)),
    "signal": attempt(kill),
    "read /proc/1/mem": attempt(lambda: open("/proc/1/mem", "rb").read(1)),
    "write launcher": attempt(lambda: write(launcher.__file__)),
    "write package": attempt(lambda: write(os.path.join(os.path.dirname(launcher.__file__),
                                                        "__init__.py"))),
    "write site-packages": attempt(lambda: write(os.path.join(SITE, "escape.pth"))),
    "writable code": [launcher.writable_code_paths(LAUNCHER_PATH),
                      launcher.writable_code_paths([OPEN]),
                      launcher.writable_code_paths(["/var/tmp"]),
                      launcher.writable_code_paths([CLOSED])],
}))
"""


@pytest.mark.kernel
def test_kernel_cannot_act_as_root(spec_dir):
    _account()
    victim = subprocess.Popen(["sleep", "60"])  # a root process the kernel does not own
    opened = Path(tempfile.mkdtemp(prefix="ebpf-magic-open-", dir="/var/tmp"))
    opened.chmod(0o777)  # a directory anyone may write: the launcher must call it unsafe
    closed = Path(tempfile.mkdtemp(prefix="ebpf-magic-closed-", dir="/var/tmp"))
    closed.chmod(0o755)  # root's, below a sticky directory: safe
    site = next(p for p in sys.path if p.endswith("site-packages"))
    planted = Path(site, "escape.pth")
    # What the launcher (python -I) imports from: not the kernel's working directory.
    launcher_path = subprocess.run([sys.executable, "-I", "-c", "import sys; print(sys.path)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    try:
        with running_kernel(NAME) as (_, client, _pid):
            code = (ESCAPES.replace("VICTIM", str(victim.pid))
                    .replace("LAUNCHER_PATH", launcher_path)
                    .replace("SITE", repr(site)).replace("OPEN", repr(str(opened)))
                    .replace("CLOSED", repr(str(closed))))
            seen = json.loads(execute(client, code))
    finally:
        victim.kill()
        victim.wait()
        opened.rmdir()
        closed.rmdir()
        escaped = Path("/etc/ebpf-magic-escape")
        written = [p for p in (escaped, planted) if p.exists()]
        for p in written:
            p.unlink()
    assert not written
    assert seen.pop("writable code") == [[], [str(opened)], ["/var/tmp"], []]
    assert seen == {"write /etc": "PermissionError", "read /etc/shadow": "PermissionError",
                    "setuid(0)": "PermissionError", "setgid(0)": "PermissionError",
                    "ptrace": "PermissionError", "signal": "PermissionError",
                    "read /proc/1/mem": "PermissionError", "write launcher": "PermissionError",
                    "write package": "PermissionError",
                    "write site-packages": "PermissionError"}


REWRITE = r"""
import json, os, sys
spec = SPEC
def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return type(e).__name__
def rewrite():  # the same kernel without the launcher: it would keep every capability
    with open(spec, "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"], "display_name": "x", "language": "python"}, f)
def replace():
    other = os.path.join(os.path.dirname(spec), "kernel.json.new")
    with open(other, "w") as f:
        f.write("{}")
    os.replace(other, spec)
print(json.dumps({"rewrite": attempt(rewrite), "replace": attempt(replace)}))
"""


@pytest.mark.kernel
def test_kernel_cannot_rewrite_its_kernelspec(spec_dir):
    entry = _account()
    spec_file = spec_dir / "kernel.json"
    before = spec_file.read_text()
    with running_kernel(NAME) as (manager, client, pid):
        seen = json.loads(execute(client, REWRITE.replace("SPEC", repr(str(spec_file)))))
        assert seen == {"rewrite": "PermissionError", "replace": "PermissionError"}
        manager.restart_kernel(now=True)
        client.wait_for_ready(timeout=60)
        again = int(execute(client, "import os; print(os.getpid())"))
        assert again != pid
        assert_confined(again, entry)
    assert spec_file.read_text() == before


@pytest.fixture
def veth():
    """A veth pair in this namespace, both ends up; removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"epa{tag}", f"epb{tag}"
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for dev in (a, b):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


def send_frames(dev: str, count: int) -> None:
    """``count`` Ethernet frames of type ETH_P_TEST out of ``dev`` (they arrive at its peer)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((dev, 0))
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + ETH_P_TEST.to_bytes(2, "big")
        for _ in range(count):
            s.send(frame + b"\x00" * 46)


XDP_CELL = """%%bpf frames -q -a xdp:{dev}=count
#include <uapi/linux/if_ether.h>
BPF_ARRAY(seen, u64, 1);
int count(struct xdp_md *ctx) {{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons({proto})) return XDP_PASS;
    seen.increment(0);
    return XDP_PASS;
}}"""

# Counted per thread: ipykernel's parent poller calls getppid() in its own thread.
PARENTS_CELL = """%%bpf parents -q -a tracepoint:syscalls:sys_enter_getppid -D PID={pid}
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {{
    u64 id = bpf_get_current_pid_tgid();
    if (id >> 32 != PID) return 0;
    calls.increment((u32)id);
    return 0;
}}"""

UPROBE_CELL = """%%bpf getpids -q -a uprobe:c:getpid=count
BPF_HASH(calls, u32, u64);
int count(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}"""


@pytest.mark.kernel
def test_bpf_still_loads_and_attaches(spec_dir, veth):
    _account()
    a, b = veth
    before = loaded_prog_ids()
    with running_kernel(NAME) as (_, client, pid):
        execute(client, "%load_ext ebpf_magic")
        execute(client, PARENTS_CELL.format(pid=pid))
        count = execute(client, """
import threading
for _ in range(123):
    os.getppid()
print(int(parents.maps["calls"][threading.get_native_id()]))""")
        assert int(count) == 123

        execute(client, UPROBE_CELL)
        assert [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e]
        count = execute(client, """
import ctypes, threading
libc, tid = ctypes.CDLL(None), threading.get_native_id()
start = int(getpids.maps["calls"].get(tid, 0))
for _ in range(77):
    libc.getpid()
print(int(getpids.maps["calls"][tid]) - start)""")
        assert int(count) == 77

        execute(client, XDP_CELL.format(dev=a, proto=ETH_P_TEST))
        assert "xdp" in subprocess.run(["ip", "-d", "link", "show", a], capture_output=True,
                                       text=True, check=True).stdout
        send_frames(b, 31)
        assert int(execute(client, "print(int(frames.maps['seen'][0]))")) == 31

        ids = set(json.loads(execute(client, "print(sorted(parents.prog_ids() + "
                                             "getpids.prog_ids() + frames.prog_ids()))")))
        assert len(ids) == 3 and ids <= loaded_prog_ids() - before
        execute(client, "%bpf stop parents\n%bpf stop getpids\n%bpf stop frames")
        assert not ids & loaded_prog_ids()
        assert not [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e]
        assert "xdp" not in subprocess.run(["ip", "-d", "link", "show", a],
                                           capture_output=True, text=True).stdout


@pytest.mark.kernel
def test_killed_kernel_leaves_no_uprobe_event_behind(spec_dir):
    """Without CAP_SYS_ADMIN uprobes are tracefs entries, which a SIGKILL cannot remove:
    the next kernel's first attach removes the dead one's."""
    _account()
    with running_kernel(NAME) as (manager, client, pid):
        execute(client, "%load_ext ebpf_magic")
        execute(client, UPROBE_CELL)
        assert [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while manager.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e], \
        "a killed kernel's entry should outlive it until someone removes it"
    with running_kernel(NAME) as (_, client, second):
        execute(client, "%load_ext ebpf_magic")
        execute(client, UPROBE_CELL)
        assert [e for e in uprobe_events() if f"ebpf_magic_{second}/" in e]
        assert not [e for e in uprobe_events() if f"ebpf_magic_{pid}/" in e]
        execute(client, "%bpf stop getpids")
    assert not [e for e in uprobe_events() if f"ebpf_magic_{second}/" in e]


CORE_CELL = """%%bpf parents_core -q --backend libbpf
struct {
    __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
    __uint(key_size, sizeof(int));
    __uint(value_size, sizeof(int));
} events SEC(".maps");
struct event { u32 tgid; u32 parent; };
SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct event e = {BPF_CORE_READ(task, tgid), BPF_CORE_READ(task, real_parent, tgid)};
    if ((u32)bpf_get_current_pid_tgid() != THREAD) return 0;
    bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &e, sizeof(e));
    return 0;
}"""


@pytest.mark.kernel
def test_libbpf_cells_read_kernel_structs_in_the_confined_kernel(spec_dir):
    """clang, vmlinux.h and libbpf work for the kernel's account: CO-RE rows are exact."""
    _account()
    with running_kernel(NAME) as (_, client, pid):
        execute(client, "%load_ext ebpf_magic")
        # One thread only: ipykernel's parent poller calls getppid() in its own.
        thread = int(execute(client, "import threading; print(threading.get_native_id())"))
        execute(client, CORE_CELL.replace("THREAD", str(thread)))
        rows = execute(client, """
import time
for _ in range(41):
    os.getppid()
stream = parents_core.events["events"]
deadline = time.monotonic() + 10
while stream.stats["received"] < 41 and time.monotonic() < deadline:
    time.sleep(0.05)
df = stream.df
print(len(df), sorted(set(zip(df["tgid"], df["parent"]))), os.getpid(), os.getppid(),
      stream.stats["lost_kernel"])""").split(maxsplit=1)
        assert rows[0] == "41"
        rest = rows[1]
        assert rest.strip().endswith(f"{pid} {status_of(pid)['PPid']} 0")
        assert f"[({pid}, {status_of(pid)['PPid']})]" in rest
        execute(client, "%bpf stop parents_core")


SIDS_CELL = """%%bpf sids -q -p {pid} -a uprobe:c:getsid=count
BPF_HASH(calls, u32, u64);
int count(void *ctx) {{
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}}"""

STATS_SEEN = """
import json, subprocess
from ebpf_magic.kernel import runstats, sysbpf
status, fd = runstats.status(), runstats.held()
child = subprocess.run(["ls", "-l", "/proc/self/fd"], close_fds=False, capture_output=True,
                       text=True).stdout
print(json.dumps({"source": status.source, "detail": status.detail, "fd": fd,
                  "inheritable": fd is not None and os.get_inheritable(fd),
                  "env": os.environ.get(runstats.FD_ENV), "child": child}))"""


def bpf_links(pid: int) -> dict[str, str]:
    """``{fd: target}`` of process ``pid``'s BPF descriptors."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:bpf"):
            out[fd] = target
    return out


def environ_keys(pid: int) -> set[str]:
    """The names of the variables process ``pid`` was started with."""
    return {e.split(b"=", 1)[0].decode() for e in
            Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e}


@pytest.mark.kernel
def test_confined_kernel_counts_run_statistics_with_the_launchers_descriptor(spec_dir,
                                                                            monkeypatch):
    """The launcher enables statistics as root and passes the descriptor, the one thing of
    root's the kernel gets: it counts runs exactly without CAP_SYS_ADMIN, keeps the
    descriptor from its children, and drops it when it exits."""
    entry = _account()
    n = 2345
    with running_kernel(NAME) as (_, client, pid):
        assert_confined(pid, entry)
        # before ebpf_magic is imported: exactly one BPF descriptor, statistics, inherited
        [(fd, target)] = bpf_links(pid).items()
        assert target == runstats.STATS_LINK
        with_stats = environ_keys(pid)
        execute(client, "%load_ext ebpf_magic")
        seen = json.loads(execute(client, STATS_SEEN))
        assert (seen["source"], seen["fd"]) == ("descriptor", int(fd))
        assert "passed on by the launcher" in seen["detail"]
        assert not seen["inheritable"] and seen["env"] is None
        assert "bpf-stats" not in seen["child"]  # not even with close_fds=False
        execute(client, SIDS_CELL.format(pid=pid))
        counts = json.loads(execute(client, f"""
import json, threading
for _ in range({n}):
    os.getsid(0)
df = sids.overhead
print(json.dumps([{{int(k): int(v) for k, v in sids.maps["calls"].items()}},
                  threading.get_native_id(), df["runs"].tolist(), df.unmeasured]))"""))
        per_thread, tid, runs, unmeasured = counts
        assert per_thread == {str(tid): n} and runs == [n] and unmeasured == ""
        tree = {pid, *runstats.descendants(pid)}
        assert [p for p in runstats.holders() if p in tree] == [pid]
        execute(client, "%bpf stop sids")
    assert not set(runstats.holders()) & tree, "the kernel's descriptor outlived it"
    assert not os.path.exists(f"/proc/{pid}")
    # where nothing else enables them (this process lets go of its own), the kernel is back
    # to not counting: a program run once shows no run
    had = runstats.release()
    try:
        if not runstats.holders() and not runstats.sysctl_enabled():
            probe = sysbpf.load_return_zero()
            try:
                sysbpf.test_run(probe)
                assert runstats.of_fd(probe).run_cnt == 0
            finally:
                os.close(probe)
    finally:
        if had:
            runstats.acquire()

    # turned off: the launcher takes none, and nothing else of root's differs
    monkeypatch.setenv(runstats.SETTING_ENV, "off")
    with running_kernel(NAME) as (_, client, pid):
        assert bpf_links(pid) == {}
        assert with_stats ^ environ_keys(pid) == {runstats.FD_ENV, runstats.SETTING_ENV}
        execute(client, "%load_ext ebpf_magic")
        seen = json.loads(execute(client, STATS_SEEN))
        assert seen["fd"] is None and seen["source"] != "descriptor"


def launch(tmp_path: Path, setup: str) -> subprocess.CompletedProcess:
    """Run the launcher as the kernelspec does, after ``setup`` (Python) has run."""
    connection = tmp_path / "connection.json"
    connection.write_text("{}")
    code = (f"import sys\nfrom ebpf_magic.setup import launcher\n{setup}\n"
            f"sys.exit(launcher.main(['-f', {str(connection)!r}]))")
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=20)


def test_launcher_refuses_to_run_as_root_without_the_account(tmp_path):
    _account()
    done = launch(tmp_path, "launcher.ACCOUNT = 'ebpf-magic-no-such-user'")
    assert done.returncode == 1
    assert "no user 'ebpf-magic-no-such-user'" in done.stderr
    assert "scripts/setup.sh" in done.stderr


def test_launcher_refuses_when_its_account_could_change_its_code(tmp_path):
    _account()
    opened = Path(tempfile.mkdtemp(prefix="ebpf-magic-open-", dir="/var/tmp"))
    try:
        opened.chmod(0o777)
        done = launch(tmp_path, f"sys.path.append({str(opened)!r})")
    finally:
        opened.rmdir()
    assert done.returncode == 1
    assert f"may write to {opened}" in done.stderr


def test_launcher_refuses_when_its_account_could_change_a_file_it_runs(tmp_path):
    """Files root's next launcher runs, in directories only root may change, are checked too."""
    entry = _account()
    code = Path(tempfile.mkdtemp(prefix="ebpf-magic-code-", dir="/var/tmp"))
    prefix = Path(tempfile.mkdtemp(prefix="ebpf-magic-prefix-", dir="/var/tmp"))
    try:
        for d in (code, prefix):
            d.chmod(0o755)
        (code / "pkg" / "__pycache__").mkdir(parents=True)
        (code / "site-packages").mkdir()
        (code / "open").mkdir()
        theirs = ["escape.pth", "fast.so", "pkg/__pycache__/mod.cpython-311.pyc",
                  "site-packages/other.py", "open/inside.py"]
        for name in (*theirs, "pkg/__init__.py", "root.py"):
            (code / name).write_text("")
        for name in (*theirs, "open"):
            os.chown(code / name, entry.pw_uid, entry.pw_gid)
        (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
        os.chown(prefix / "pyvenv.cfg", entry.pw_uid, entry.pw_gid)
        done = launch(tmp_path, f"sys.path.append({str(code)!r})\nsys.prefix = {str(prefix)!r}")
    finally:
        shutil.rmtree(code)
        shutil.rmtree(prefix)
    assert done.returncode == 1
    named = done.stderr.split("may write to ", 1)[1].split(", which holds code")[0]
    # A writable directory is named, not entered; a site directory below a sys.path entry
    # is not imported from through it.
    assert named == (f"{code}/escape.pth, {code}/fast.so, {code}/open, "
                     f"{code}/pkg/__pycache__/mod.cpython-311.pyc, {prefix}/pyvenv.cfg")


def test_launcher_refuses_when_its_account_owns_read_only_code(tmp_path):
    """A file (0444) or directory (0555) the account owns is its to make writable again."""
    entry = _account()
    code = Path(tempfile.mkdtemp(prefix="ebpf-magic-code-", dir="/var/tmp"))
    try:
        code.chmod(0o755)
        (code / "sealed").mkdir()
        for name in ("readonly.py", "sealed/mod.py", "root.py"):
            (code / name).write_text("")
        for name in ("readonly.py", "sealed"):
            os.chown(code / name, entry.pw_uid, entry.pw_gid)
        (code / "readonly.py").chmod(0o444)
        (code / "sealed").chmod(0o555)
        done = launch(tmp_path, f"sys.path.append({str(code)!r})")
    finally:
        shutil.rmtree(code)
    assert done.returncode == 1
    named = done.stderr.split("may write to ", 1)[1].split(", which holds code")[0]
    assert named == f"{code}/readonly.py, {code}/sealed"


def test_writable_code_lists_every_writable_file_below_root_owned_directories(tmp_path):
    entry = _account()
    code = Path(tempfile.mkdtemp(prefix="ebpf-magic-code-", dir="/var/tmp"))
    try:
        code.chmod(0o755)
        (code / "pkg" / "__pycache__").mkdir(parents=True)
        for name in ("pkg/__pycache__/mod.cpython-311.pyc", "pkg/mod.py", "root.py"):
            (code / name).write_text("")
        os.chown(code / "pkg/__pycache__/mod.cpython-311.pyc", entry.pw_uid, entry.pw_gid)
        seen = subprocess.run(
            [sys.executable, "-I", "-c", "import json, sys\n"
             "from ebpf_magic.setup import launcher\n"
             "launcher.become(launcher.account(), launcher.wanted())\n"
             f"print(json.dumps(launcher.writable_code_paths([{str(code)!r}])))"],
            capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        shutil.rmtree(code)
    assert json.loads(seen) == [f"{code}/pkg/__pycache__/mod.cpython-311.pyc"]


@pytest.mark.kernel
def test_root_server_still_interrupts_the_kernel(spec_dir):
    _account()
    with running_kernel(NAME) as (manager, client, _pid):
        msg_id = client.execute("import time\ntime.sleep(60)")
        time.sleep(1)
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=20)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"


def test_connection_file_is_handed_over_privately(tmp_path):
    text = b'{"key": "secret"}'
    for argv, flag in ((["-f", str(tmp_path / "c.json")], ""),
                       ([f"-f={tmp_path / 'c.json'}"], "-f=")):
        out = launcher.hand_over_connection(argv, text)
        path = out[-1][len(flag):]
        assert out[-1].startswith(flag + "/proc/self/fd/")
        fd = int(path.rsplit("/", 1)[1])
        try:
            assert os.get_inheritable(fd)
            assert Path(path).read_bytes() == text
            assert os.stat(path).st_mode & 0o777 == 0o600
        finally:
            os.close(fd)
    assert launcher.hand_over_connection(["--debug"], text) == ["--debug"]


def test_missing_account_is_a_clear_error():
    with pytest.raises(launcher.LaunchError, match="scripts/setup.sh"):
        launcher.account("ebpf-magic-no-such-user")


def test_account_env_keeps_only_the_allowlist_and_points_home_at_the_account():
    entry = pwd.struct_passwd(("ebpf-kernel", "x", 999, 999, "", "/var/lib/ebpf-kernel",
                               "/usr/sbin/nologin"))
    root = {"HOME": "/root", "MPLCONFIGDIR": "/root/.mpl", "XDG_CACHE_HOME": "/root/.cache",
            "PATH": "/bin:.:sbin:/usr/bin:", "LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm",
            "JUPYTER_TOKEN": "t", "JPY_API_TOKEN": "t", "JUPYTERHUB_API_TOKEN": "t",
            "PYTHONPATH": "/root/lib", "PYTHONSTARTUP": "/root/x.py",
            "LD_PRELOAD": "/root/x.so", "LD_LIBRARY_PATH": "/root/lib",
            "AWS_SECRET_ACCESS_KEY": "s", "https_proxy": "http://u:p@proxy", "TMPDIR": "/root/t",
            "EBPF_MAGIC_REPLAY": "1", "EBPF_MAGIC_CACHE": "/root/.cache/e",
            "JPY_PARENT_PID": "12", "IPP_CONNECTION_INFO": "{}"}
    home = "/var/lib/ebpf-kernel"
    kept = {"PATH": "/bin:/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm",
            "EBPF_MAGIC_REPLAY": "1", "JPY_PARENT_PID": "12",
            "HOME": home, "USER": "ebpf-kernel", "LOGNAME": "ebpf-kernel",
            "XDG_CACHE_HOME": f"{home}/.cache", "XDG_CONFIG_HOME": f"{home}/.config",
            "XDG_DATA_HOME": f"{home}/.local/share", "XDG_STATE_HOME": f"{home}/.local/state"}
    assert launcher.account_env(entry, root) == kept
    from ebpf_magic.setup import engine_launcher

    assert launcher.account_env(entry, root, keep=engine_launcher.ENV_KEPT) == {
        **kept, "IPP_CONNECTION_INFO": "{}"}
    assert launcher.account_env(entry, {})["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_ipc_lock_only_where_locked_memory_stays_limited():
    assert launcher.CAP_IPC_LOCK not in launcher.wanted((6, 1), memlock_unlimited=True)
    assert launcher.CAP_IPC_LOCK in launcher.wanted((6, 1), memlock_unlimited=False)
    assert launcher.CAP_IPC_LOCK not in launcher.wanted((5, 10), memlock_unlimited=False)


SIGNAL_CELL = """%%bpf killer -q -a tracepoint:syscalls:sys_enter_getppid=on -D VICTIM={pid}
int on(void *ctx) {{
    if (bpf_get_current_pid_tgid() >> 32 == VICTIM)
        bpf_send_signal(9);
    return 0;
}}"""


@pytest.mark.kernel
def test_bpf_still_signals_processes_the_kernel_may_not(spec_dir):
    """What docs/privileges.md warns of: bpf_send_signal reaches a process os.kill cannot."""
    _account()
    victim = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
         "read line; exec python3 -c 'import os, time\nwhile True: os.getppid(); "
         "time.sleep(0.01)'"], stdin=subprocess.PIPE)
    try:
        with running_kernel(NAME) as (_, client, _pid):
            refused = execute(client, f"""
try:
    os.kill({victim.pid}, 9)
    print("allowed")
except PermissionError:
    print("refused")""")
            assert refused.strip() == "refused"
            execute(client, "%load_ext ebpf_magic")
            execute(client, SIGNAL_CELL.format(pid=victim.pid))
            victim.stdin.close()  # now it starts calling getppid()
            assert victim.wait(timeout=10) == -9
            execute(client, "%bpf stop killer")
    finally:
        victim.kill()
        victim.wait()


def test_headers_root_builds_for_everyone_and_users_reuse_it(tmp_path, monkeypatch):
    arch = tmp_path / "src" / "linux-headers-6.1.0-9-amd64"
    common = tmp_path / "src" / "linux-headers-6.1.0-9-common"
    (arch / "include" / "generated").mkdir(parents=True)
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "sched.h").write_text("/* common */\n")
    system = tmp_path / "system"
    monkeypatch.setattr(cache, "SYSTEM_CACHE", system)
    monkeypatch.delenv("EBPF_MAGIC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    old_umask = os.umask(0o077)  # root's tree must not inherit a private umask
    try:
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert cache.cache_dir() == system
        built = headers.merged_tree(arch, common)
    finally:
        os.umask(old_umask)
    assert built == system / "headers" / arch.name
    for d in (system, system / "headers", built, built / "include", built / "include" / "linux"):
        assert d.stat().st_mode & 0o755 == 0o755, d
    assert (built / "include" / "linux" / "sched.h").read_text() == "/* common */\n"

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cache.cache_dir() == tmp_path / "user" / "ebpf_magic"
    assert headers.merged_tree(arch, common) == built  # reused, not rebuilt
    assert not (tmp_path / "user").exists()


def test_a_kernel_started_in_a_folder_its_account_may_not_enter_still_starts(tmp_path):
    """``sys.path`` may hold names that are no paths (an editable install's hook): from a
    root-only working directory the account cannot even look them up, nor plant them."""
    _account()
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    seen = subprocess.run(
        [sys.executable, "-I", "-c", "import json, sys\n"
         "from ebpf_magic.setup import launcher\n"
         "launcher.become(launcher.account(), launcher.wanted())\n"
         "print(json.dumps(launcher.writable_code_paths(['__editable__.x.__path_hook__'])))"],
        cwd=closed, capture_output=True, text=True, timeout=30)
    assert (seen.returncode, seen.stderr, json.loads(seen.stdout or "null")) == (0, "", [])
