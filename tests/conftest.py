"""Shared fixtures: BPF rights, the kernel's own view of loaded objects, and CI rules.

Tests marked ``kernel`` need BPF rights on a real kernel. Without them they
skip, except under ``CI=true``, where such a skip fails the run: CI machines
can load BPF, so a skip there means something is broken. A test also marked
``kernel_feature`` needs a facility some kernels are built without (kprobes,
say); its skip names that facility and stands under CI too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import runstats, tracefs

IN_CI = os.environ.get("CI", "").lower() == "true"
ETH_P_TEST = 0x88B5  # IEEE local experimental ethertype

# A %%bpf cell counting getppid() calls of one process, per pid; format name= and pid=.
COUNT_CELL = """%%bpf {name} -a tracepoint:syscalls:sys_enter_getppid -D PID={pid}
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    calls.increment(pid);
    return 0;
}}
"""


# Child-side helpers for tests of what a confined process may not do: attempt(f) gives
# "allowed" or the class name of the OSError f raised; ptrace(pid) attaches and detaches.
ATTEMPTS = r"""
import ctypes, os
def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return type(e).__name__
def ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
"""

def bpf_unavailable_reason() -> str | None:
    if not kernel.has_bpf_rights():
        return "no BPF rights (" + kernel.rights_summary() + ")"
    try:
        from ebpf_magic.backend.bcc.locate import import_bcc

        import_bcc()
    except Exception as e:  # noqa: BLE001 - any failure means "cannot run here"
        return f"BCC unavailable: {e}"
    return None


_REASON = bpf_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    if _REASON is None:
        return
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(pytest.mark.skip(reason=f"kernel test: {_REASON}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("kernel") \
            and not item.get_closest_marker("kernel_feature"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"kernel test skipped under CI=true, which must not happen: {reason}"


def bpftool_json(*args: str):
    """Parsed JSON from ``bpftool --json``."""
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([tool, "--json", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def loaded_prog_ids() -> set[int]:
    """Ids of every BPF program loaded in the kernel, as bpftool lists them."""
    return {p["id"] for p in bpftool_json("prog", "show")}


def loaded_map_ids() -> set[int]:
    return {m["id"] for m in bpftool_json("map", "show")}


def own_bpf_fds(pid: int | str = "self") -> list[str]:
    """Link targets of this process's fds that are BPF objects or perf events.

    The run-statistics descriptor this process holds for its lifetime is not one of them.
    """
    held = runstats.held() if pid == "self" else None
    fds = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        if held is not None and fd.name == str(held):
            continue
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("anon_inode:") and any(
                k in target for k in ("bpf", "perf_event")):
            fds.append(target)
    return fds


def uprobe_events() -> list[str]:
    """Text uprobe entries in tracefs (BCC falls back to them on old kernels)."""
    root = tracefs.root()
    if root is None:
        return []
    return [ln for ln in (root / "uprobe_events").read_text().splitlines() if ln.strip()]


def bpf_holders() -> dict[int, set[int]]:
    """Which processes hold a descriptor of each loaded BPF program: ``{prog id: {pid}}``.

    Read from every process's fdinfo, since bpftool here is built without the
    pid iterator that would list them.
    """
    held: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # a process may exit, and a descriptor close, while they are read
            fdinfos = list((proc / "fdinfo").iterdir())
        except OSError:
            continue
        for fdinfo in fdinfos:
            try:
                text = fdinfo.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("prog_id:"):
                    held.setdefault(int(line.split()[1]), set()).add(int(proc.name))
    return held


def leaked_programs(before: set[int], owners: set[int]) -> set[int]:
    """Programs loaded since ``before`` that ``owners`` hold, or that nobody holds.

    A program nobody holds by descriptor is attached somewhere that keeps it
    (or still being freed, so this waits a little for it to go). Programs that
    other processes hold are theirs, not a leak.
    """
    deadline = time.monotonic() + 2.0
    while True:
        new = loaded_prog_ids() - before
        held = bpf_holders()
        leaked = {p for p in new if p not in held or held[p] & owners}
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.05)


def own_processes() -> set[int]:
    """This process and its children (a compile worker among them)."""
    pids = {os.getpid()}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            pids |= {int(c) for c in (task / "children").read_text().split()}
    return pids


@pytest.fixture
def no_leaks():
    """Assert that a test leaves no BPF program, map or perf fd of its own behind."""
    before_fds = sorted(own_bpf_fds())
    before_progs = loaded_prog_ids()
    yield
    assert sorted(own_bpf_fds()) == before_fds, "BPF/perf descriptors left open"
    leaked = leaked_programs(before_progs, own_processes())
    assert not leaked, f"programs left loaded: {sorted(leaked)}"


@pytest.fixture
def shell():
    """A real IPython shell with the extension loaded; unloading it stops every program."""
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "ebpf_magic")
    yield sh
    sh.run_line_magic("unload_ext", "ebpf_magic")
    InteractiveShell.clear_instance()


# a loop in a function with a frame pointer, called from another: the sampled user stacks
SPINNER = r"""
volatile unsigned long em_sink;
__attribute__((noinline)) void em_spin_leaf(unsigned long n)
{ for (unsigned long i = 0; i < n; i++) em_sink += i; }
__attribute__((noinline)) void em_spin_outer(unsigned long n) { em_spin_leaf(n); em_sink++; }
"""


@pytest.fixture
def spinner(tmp_path):
    import ctypes

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the sampled library")
    lib = tmp_path / "libspin.so"
    subprocess.run([cc, "-O0", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-x", "c", "-",
                    "-o", str(lib)], input=SPINNER, text=True, check=True)
    spin = ctypes.CDLL(str(lib)).em_spin_outer
    spin.argtypes = [ctypes.c_ulong]
    return spin


@pytest.fixture
def veth():
    """A veth pair made for the test; yields (sending end, receiving end), then removes it."""
    tag = os.getpid() % 100000
    a, b = f"elk{tag}a", f"elk{tag}b"
    made = subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot make a veth pair: {made.stderr.strip()}")
    try:
        for dev in (a, b):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], check=False)


def send_test_frames(dev: str, n: int) -> None:
    """Send ``n`` broadcast Ethernet frames of type :data:`ETH_P_TEST` out of ``dev``."""
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETH_P_TEST) + bytes(46)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((dev, 0))
        for _ in range(n):
            s.send(frame)


def settle(read, want: int, timeout: float = 2.0) -> int:
    """``read()`` once it reaches ``want`` (or ``timeout`` passed), and a moment later: any
    count beyond ``want`` shows up too."""
    deadline = time.monotonic() + timeout
    while read() < want and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    return read()
