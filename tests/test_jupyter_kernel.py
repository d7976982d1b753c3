"""The magic in a real Jupyter kernel: results come back, and kernel exit releases all."""

import os
import signal
import time

import pytest
from jupyter_client.manager import start_new_kernel

from conftest import loaded_prog_ids, uprobe_events

pytestmark = pytest.mark.kernel

# Counted per thread: ipykernel's parent poller calls getppid() in its own thread.
CELL = """%%bpf counter -a tracepoint:syscalls:sys_enter_getppid
BPF_HASH(calls, u32, u64);
int on(void *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    calls.increment(tid);
    return 0;
}"""


def execute(client, code: str, timeout: float = 60) -> dict:
    """Run code; return {'status', 'stdout', 'stderr', 'data', 'error'} from the iopub stream."""
    msg_id = client.execute(code)
    out = {"stdout": "", "stderr": "", "data": [], "error": None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out[content["name"]] += content["text"]
        elif kind in ("execute_result", "display_data"):
            out["data"].append(content["data"])
        elif kind == "error":
            out["error"] = content
        elif kind == "status" and content["execution_state"] == "idle":
            break
    out["status"] = shell_reply(client, msg_id, timeout)["content"]["status"]
    return out


def shell_reply(client, msg_id: str, timeout: float = 60) -> dict:
    """The shell channel's reply to ``msg_id``, past any earlier reply still queued there
    (``start_new_kernel`` leaves its kernel_info reply behind)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = client.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


@pytest.fixture
def kernel():
    km, kc = start_new_kernel(kernel_name="python3", cwd=os.getcwd())
    yield km, kc
    kc.stop_channels()
    if km.is_alive():
        km.shutdown_kernel(now=True)


def kernel_pid(km) -> int:
    return km.provisioner.process.pid


def test_counts_in_jupyter_kernel_and_release_on_exit(kernel):
    km, kc = kernel
    assert execute(kc, "%load_ext ebpf_magic")["status"] == "ok"
    r = execute(kc, CELL)
    assert r["status"] == "ok", r
    assert "counter: attached tracepoint:syscalls:sys_enter_getppid=on" in r["stdout"]
    r = execute(kc, "import os, threading\nfor _ in range(77): os.getppid()\n"
                    "counter.maps['calls'][threading.get_native_id()]")
    assert r["data"][0]["text/plain"] == "77"
    r = execute(kc, "counter.maps['calls'].df.query('key == @threading.get_native_id()')")
    assert "text/html" in r["data"][0] and "77" in r["data"][0]["text/plain"]
    ids = set(eval(execute(kc, "counter.prog_ids()")["data"][0]["text/plain"]))
    assert ids and ids <= loaded_prog_ids()
    # a failing cell shows a short error, no traceback
    r = execute(kc, "%%bpf bad\nint f(void *c) { return nope; }")
    assert r["status"] == "error"
    assert r["error"]["ename"] == "CompileError"
    assert "\n".join(r["error"]["traceback"]).count("File ") == 0
    # the kernel dies hard: the kernel (the OS one) must still release everything
    os.kill(kernel_pid(km), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while ids & loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ids & loaded_prog_ids()
    assert not [e for e in uprobe_events() if "ebpf" in e]


def test_clean_shutdown_releases(kernel):
    km, kc = kernel
    execute(kc, "%load_ext ebpf_magic")
    execute(kc, CELL)
    ids = set(eval(execute(kc, "counter.prog_ids()")["data"][0]["text/plain"]))
    assert ids <= loaded_prog_ids()
    km.shutdown_kernel(now=False)
    assert not ids & loaded_prog_ids()


def test_cells_that_crash_the_compiler_leave_the_kernel_alive(kernel):
    """A segfault, an LLVM fatal error and a 5 MB cell each cost only their cell."""
    from test_isolation import CRASHERS, NOTHING_LOST

    km, kc = kernel
    execute(kc, "%load_ext ebpf_magic")
    assert execute(kc, CELL)["status"] == "ok"
    pid = kernel_pid(km)
    for case, (source, said) in CRASHERS.items():
        r = execute(kc, f"%%bpf crash\n{source}", timeout=120)
        assert r["status"] == "error", case
        assert r["error"]["ename"] == "CompileError", case
        shown = "\n".join(r["error"]["traceback"])
        assert said in shown and NOTHING_LOST in shown, case
        assert "File " not in shown, case
        assert km.is_alive() and kernel_pid(km) == pid, case
        r = execute(kc, "import os, threading\ntid = threading.get_native_id()\n"
                        "before = counter.maps['calls'].get(tid, 0)\n"
                        "for _ in range(31): os.getppid()\n"
                        "counter.maps['calls'][tid] - before")
        assert r["data"][0]["text/plain"] == "31", case
