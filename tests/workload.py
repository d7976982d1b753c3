"""Workloads whose answers the tool tests know: gated child processes, a loop device, and
a veth pair between two network namespaces with a TCP server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GATE = "import sys\nsys.stdin.readline()\n"
READ_NR = {"x86_64": 0, "aarch64": 63}.get(os.uname().machine, 0)  # read(2)


class Gated:
    """A Python child that waits for :meth:`release` before running ``code``.

    Its pid is known before it does anything, so a tool can be started for it first.
    With ``hold``, it waits again after ``code`` until :meth:`finish`, so its /proc files
    and its memory (for symbolizing its stacks) are still there to read.
    """

    def __init__(self, code: str, *, hold: bool = False, cpu: int | None = None,
                 netns: str | None = None, args: tuple[str, ...] = ()) -> None:
        body = GATE + textwrap.dedent(code) + ("\nsys.stdin.readline()\n" if hold else "")
        cmd = [sys.executable, "-c", body, *args]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid  # taskset and ip netns exec exec the Python in place
        self._wait_at_gate()

    def _wait_at_gate(self, timeout: float = 30.0) -> None:
        """Return once the child sleeps in its read of stdin: a tool started after this sees
        every turn on a CPU of ``code`` from its start (a child still starting Python when
        the tool attaches, then released, would run on in a turn whose start it missed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[0]
                call = Path(f"/proc/{self.pid}/syscall").read_text().split()
            except OSError:
                call, state = [], ""
            # read(0, ...): the syscall's number differs by architecture, its first argument not
            if state == "S" and len(call) > 1 and call[0] == str(READ_NR) and call[1] == "0x0":
                return
            if self.proc.poll() is not None:
                return
            time.sleep(0.005)
        raise TimeoutError(f"child {self.pid} did not reach its gate in {timeout} s")

    def release(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Let a holding child exit; its exit status."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write("done\n")
            self.proc.stdin.flush()
        return self.proc.wait(timeout)

    def wait_output(self, timeout: float = 30.0) -> str:
        """The first line the child prints (a child prints when it is done)."""
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if time.monotonic() > deadline:
            raise TimeoutError("the child said nothing in time")
        return line.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Gated:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def schedstat(pid: int) -> tuple[int, int, int]:
    """``(on-CPU ns, run-queue wait ns, times run)`` of a task, as the scheduler counts."""
    on_cpu, waited, runs = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu), int(waited), int(runs)


@contextlib.contextmanager
def loop_device(size_mb: int = 64):
    """A loop device over a sparse file; yields its name (``loop3``)."""
    tmp = tempfile.mkdtemp(prefix="ebpf_magic_disk")
    image = os.path.join(tmp, "disk.img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    dev = subprocess.run(["losetup", "-f", "--show", image], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield os.path.basename(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def dd(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["dd", *args], capture_output=True, check=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetLab:
    """Two network namespaces joined by a veth pair: ``client`` (10.231.N.1) and ``server``
    (10.231.N.2), each with its own TCP counters (/proc/net/snmp)."""

    def __init__(self, tag: str, subnet: int = 7) -> None:
        self.client, self.server = f"emc{tag}", f"ems{tag}"
        self.client_if, self.server_if = f"emc{tag}", f"ems{tag}"
        self.client_ip, self.server_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"

    def __enter__(self) -> NetLab:
        try:
            for ns in (self.client, self.server):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", self.client_if, "netns", self.client, "type", "veth", "peer",
                "name", self.server_if, "netns", self.server)
            for ns, dev, addr in ((self.client, self.client_if, self.client_ip),
                                  (self.server, self.server_if, self.server_ip)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.client, self.server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    @contextlib.contextmanager
    def dropping(self):
        """The server's end drops every packet that arrives (an XDP program that ``ip``
        loads), until the block ends; the client's kernel sees its segments lost."""
        tmp = tempfile.mkdtemp(prefix="ebpf_magic_xdp")
        src, obj = os.path.join(tmp, "drop.c"), os.path.join(tmp, "drop.o")
        Path(src).write_text('__attribute__((section("xdp"), used)) int drop(void *ctx) '
                             '{ return 1; }\nchar LICENSE[] __attribute__((section("license"), '
                             'used)) = "GPL";\n')
        subprocess.run(["clang", "-O2", "-target", "bpf", "-c", src, "-o", obj], check=True)
        link = ["ip", "-n", self.server, "link", "set", "dev", self.server_if, "xdpgeneric"]
        subprocess.run([*link, "obj", obj, "sec", "xdp"], check=True)
        try:
            yield
        finally:
            subprocess.run([*link, "off"], check=True)
            shutil.rmtree(tmp, ignore_errors=True)

    def retransmits(self, ns: str) -> int:
        """RetransSegs of namespace ``ns``: the kernel's own count of its TCP retransmits."""
        text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                              capture_output=True, text=True, check=True).stdout
        head, values = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")]
        return int(values[head.index("RetransSegs")])


# A server that accepts N connections; from each it reads RX bytes, then sends TX bytes and
# closes. argv: N RX TX PORT. It prints "ready" once listening.
SERVER = """
import socket
n, rx, tx, port = map(int, sys.argv[1:5])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
print("ready", flush=True)
for _ in range(n):
    c, _ = s.accept()
    got = 0
    while got < rx:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    c.sendall(b"y" * tx)
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()
print("served", flush=True)
"""

# A client that makes N connections to HOST:PORT, sending RX bytes and reading what comes
# back on each. argv: N RX HOST PORT. It prints the bytes it received in all.
CLIENT = """
import socket
n, rx, host, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
total = 0
for _ in range(n):
    c = socket.create_connection((host, port))
    c.sendall(b"x" * rx)
    c.shutdown(socket.SHUT_WR)
    while True:
        d = c.recv(65536)
        if not d:
            break
        total += len(d)
    c.close()
print(total, flush=True)
"""


# A process busy on the CPU for {seconds} (format it in)
SPIN = """
import time
t = time.monotonic()
while time.monotonic() - t < {seconds}:
    pass
"""

# A C program that waits for a line on stdin, spins in spin_here() for {seconds}, waits for
# another line, and exits (format it in; built by compile_c)
SPINNER = r"""
#include <stdio.h>
#include <time.h>
static volatile unsigned long sink;
__attribute__((noinline)) void spin_here(double seconds) {{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do {{
        for (int i = 0; i < 100000; i++) sink += i;
        clock_gettime(CLOCK_MONOTONIC, &b);
    }} while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < seconds);
}}
int main(void) {{ getchar(); spin_here({seconds}); getchar(); return 0; }}
"""


def compile_c(source: str, name: str, where: Path) -> str:
    """``source`` built with gcc in ``where`` (frame pointers kept, so its stacks unwind);
    the program's path."""
    src = os.path.join(where, f"{name}.c")
    Path(src).write_text(source)
    out = os.path.join(where, name)
    subprocess.run(["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", out, src], check=True)
    return out
