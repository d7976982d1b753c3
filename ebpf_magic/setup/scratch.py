"""What the doctor's USDT and XDP probes fire on: a binary with a USDT note, and a veth
pair whose peer sits in a fresh network namespace. :meth:`Scratch.close` removes it all."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from ebpf_magic.features import NOT_CHECKED, Finding
from ebpf_magic.kernel import host

_CLONE_NEWNET = 0x40000000
_USDT_SOURCE = ("#include <sys/sdt.h>\n"
                "int main(void) { DTRACE_PROBE(ebpf_magic, doctor); return 0; }\n")
SDT_PACKAGE = "systemtap-sdt-dev (Debian/Ubuntu) or systemtap-sdt-devel (Fedora)"


def veth_fix(step: list[str]) -> str:
    """What the failed ``ip`` step ``step`` of making the veth pair needs that this
    process lacks."""
    caps = host.effective_caps()
    if step[:2] == ["netns", "add"] and not caps >> host.CAP_SYS_ADMIN & 1:
        has = " (it has CAP_NET_ADMIN, enough for XDP itself)" \
            if caps >> host.CAP_NET_ADMIN & 1 else ""
        return ("Making the scratch network namespace needs CAP_SYS_ADMIN, which this process "
                f"lacks{has}: run doctor as root (`sudo python -m ebpf_magic doctor`) to check "
                "XDP; cells can still attach XDP to existing devices (-a xdp:DEV).")
    if not caps >> host.CAP_NET_ADMIN & 1:
        return "Making the test veth pair and attaching XDP need CAP_NET_ADMIN."
    return "The test veth pair needs veth support in the kernel (CONFIG_VETH)."


class Scratch:
    """A USDT test binary and a veth pair in a scratch network namespace, named after this
    process. What could not be made is in :attr:`skipped`, by attach kind (``USDT``, ``XDP``),
    as a ``not checked`` finding that says why."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.netns = f"ebpf-magic-doctor-{tag}"
        self.device = f"emdoc{tag}"[:15]
        self.dir = Path(tempfile.mkdtemp(prefix=f"ebpf-magic-doctor-{tag}-"))
        self.usdt_binary = self.dir / "usdt_probe"
        self.skipped: dict[str, Finding] = {}
        self._gcc: subprocess.Popen | None = None
        self._netns_made = False

    def start_build(self) -> None:
        """Compile the USDT test binary in the background (``finish_build`` waits)."""
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            self.skipped["USDT"] = Finding("USDT", NOT_CHECKED, "no C compiler to build a test "
                                           "binary with a USDT probe (this libc has none)",
                                           f"Install gcc and {SDT_PACKAGE} to check USDT.")
            return
        self._gcc = subprocess.Popen([cc, "-x", "c", "-", "-o", str(self.usdt_binary)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._gcc.stdin.write(_USDT_SOURCE)
        self._gcc.stdin.close()

    def finish_build(self) -> None:
        """Wait for the USDT test binary; note in :attr:`skipped` why it is missing."""
        if self._gcc is None:
            return
        out = self._gcc.stdout.read()
        if self._gcc.wait() != 0:
            why = ("sys/sdt.h is missing" if "sdt.h" in out else
                   "the test binary did not compile: " + out.strip().splitlines()[-1]
                   if out.strip() else "the test binary did not compile")
            self.skipped["USDT"] = Finding("USDT", NOT_CHECKED, why + ", so no binary with a "
                                           "USDT probe could be built",
                                           f"Install {SDT_PACKAGE}.")
        self._gcc.stdout.close()
        self._gcc = None

    def make_veth(self) -> None:
        """A veth pair: one end here for XDP, its peer in a fresh network namespace."""
        if shutil.which("ip") is None:
            self.skipped["XDP"] = Finding("XDP", NOT_CHECKED, "the `ip` command is missing, so "
                                          "no test device could be made",
                                          "Install iproute2 to check XDP.")
            return
        steps = [["netns", "add", self.netns],
                 ["link", "add", self.device, "type", "veth", "peer", "name", "peer",
                  "netns", self.netns],
                 ["link", "set", self.device, "up"],
                 ["-n", self.netns, "link", "set", "peer", "up"]]
        for step in steps:
            done = subprocess.run(["ip", *step], capture_output=True, text=True)
            self._netns_made = self._netns_made or step[:2] == ["netns", "add"]
            if done.returncode != 0:
                self.skipped["XDP"] = Finding("XDP", NOT_CHECKED, "could not make a test veth "
                                              f"pair: `ip {' '.join(step)}`: "
                                              f"{done.stderr.strip()}", veth_fix(step))
                return

    def send_frame(self) -> None:
        """Send one Ethernet frame from the peer, so XDP sees it arrive on the device."""
        errors: list[BaseException] = []

        def send() -> None:  # setns() changes this thread's namespace only
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.netns}") as ns:
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                    s.bind(("peer", 0))
                    s.send(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(46))
            except BaseException as e:  # noqa: BLE001 - reported by the caller's thread
                errors.append(e)

        thread = threading.Thread(target=send, name="doctor-netns", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]

    def run_usdt_binary(self) -> None:
        """Run the USDT test binary once (its probe fires once)."""
        subprocess.run([str(self.usdt_binary)], check=False, capture_output=True)

    def close(self) -> list[str]:
        """Remove everything; return what could not be removed."""
        if self._gcc is not None:
            self._gcc.kill()
            self.finish_build()
        left = []
        if Path(f"/sys/class/net/{self.device}").exists():
            subprocess.run(["ip", "link", "del", self.device], capture_output=True)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        if Path(f"/sys/class/net/{self.device}").exists():
            left.append(f"network device {self.device}")
        if Path(f"/run/netns/{self.netns}").exists():
            left.append(f"network namespace {self.netns}")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            left.append(str(self.dir))
        return left
