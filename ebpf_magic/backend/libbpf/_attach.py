"""Attaching the libbpf backend's programs: each way returns a link whose close() detaches.

A program's SEC() name, tracepoints, raw tracepoints, kprobes, uprobes and USDT attach with
libbpf's own functions (:func:`attach_with_libbpf`: a :class:`LibbpfLink`); perf events, XDP,
tc, socket filters and iterators by descriptor, through :mod:`ebpf_magic.kernel.link`.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import subprocess

from ebpf_magic.backend.libbpf import _failures, _lib, _source
from ebpf_magic.errors import AttachError
from ebpf_magic.kernel import link as links
from ebpf_magic.probes import Probe

_FD_HOOK_HINTS = {"tc": "tc programs need CAP_NET_ADMIN and SEC(\"tc\") (or tcx/ingress, "
                        "tcx/egress).",
                  "socket": "A socket filter is a SEC(\"socket\") program; give the socket's "
                            "fileno().",
                  "iter": "An iterator is a SEC(\"iter/TARGET\") program (task, task_file, tcp, "
                          "udp, bpf_map...)."}
# probe kinds attached by descriptor, not by libbpf
PERF_EVENT_KINDS = ("profile", "software", "hardware")
BY_FD_KINDS = ("tc", "socket", "iter")


class LibbpfLink:
    """One attachment (a ``struct bpf_link``); ``close()`` detaches it and is idempotent."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr = ptr
        self.description = description

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            with _lib.logged():
                _lib.lib().bpf_link__destroy(ptr)


def attach_with_libbpf(prog: int, probe: Probe, section: str) -> LibbpfLink:
    """Attach ``prog`` (a ``struct bpf_program *``, SEC(``section``)) to ``probe`` with
    libbpf's attach function for its kind; the probe its SEC() name implies as libbpf-based
    tools do. Raises :class:`~ebpf_magic.errors.AttachError` with libbpf's reason."""
    lib = _lib.lib()
    implied = probe == _source.section_probe(section, probe.function)
    with _lib.logged() as log:
        if implied:
            link = lib.bpf_program__attach(prog)
        elif probe.kind == "tracepoint":
            category, _, name = probe.target.partition(":")
            link = lib.bpf_program__attach_tracepoint(prog, category.encode(), name.encode())
        elif probe.kind == "rawtracepoint":
            link = lib.bpf_program__attach_raw_tracepoint(prog, probe.target.encode())
        elif probe.kind in ("kprobe", "kretprobe"):
            link = lib.bpf_program__attach_kprobe(prog, probe.kind == "kretprobe",
                                                  probe.target.encode())
        elif probe.kind in ("uprobe", "uretprobe"):
            path, _, sym = probe.target.partition(":")
            opts = _lib.UprobeOpts(sz=ct.sizeof(_lib.UprobeOpts),
                                   retprobe=probe.kind == "uretprobe", func_name=sym.encode())
            link = lib.bpf_program__attach_uprobe_opts(
                prog, probe.pid if probe.pid else -1, library(path).encode(), 0, ct.byref(opts))
        elif probe.kind == "usdt":
            parts = probe.target.split(":")
            path, provider, name = parts[0], parts[-2] if len(parts) == 3 else "", parts[-1]
            link = lib.bpf_program__attach_usdt(prog, probe.pid if probe.pid else -1,
                                                library(path).encode(), provider.encode(),
                                                name.encode(), None)
        else:
            link = lib.bpf_program__attach(prog)
        err = _lib.last_errno() if not link else 0
    if not link:
        where = f'SEC("{section}") {probe.function}' if implied else str(probe)
        raise _failures.attach_failure(probe, where, err, log)
    return LibbpfLink(link, str(probe))


def attach_perf_event(probe: Probe, fd: int) -> links.Link:
    """Sampling and counting events: one perf event per CPU, through ebpf_magic.kernel.link."""
    ev_type, config, rate = probe.perf_event
    try:
        return links.perf_event(fd, ev_type, config, pid=probe.pid or -1, **rate)
    except links.LinkError as e:
        raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})", e.hint,
                          probe=str(probe)) from None


def attach_xdp(probe: Probe, fd: int) -> links.Link:
    """XDP by BPF link in the mode ``xdp:DEV@skb|drv|hw`` names (libbpf 1.1 takes no mode)."""
    try:
        return links.xdp(fd, *links.xdp_device(probe.target))
    except links.LinkError as e:
        raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})",
                          e.hint or "XDP needs CAP_NET_ADMIN.", probe=str(probe)) from None


def attach_by_fd(probe: Probe, fd: int, section: str, map_fd: int | None = None) -> links.Link:
    """tc, socket filters and iterators (over map ``map_fd`` where given), through
    ebpf_magic.kernel.link (libbpf 1.1 has no tcx links, and iterators are read by
    descriptor)."""
    try:
        if probe.kind == "tc":
            device, _, direction = probe.target.partition(":")
            direction = direction or _source.tc_direction(section)
            if not direction:
                raise AttachError(f"cannot attach {probe}: say which direction",
                                  f"-a tc:{device}:ingress or -a tc:{device}:egress",
                                  probe=str(probe))
            return links.tc(fd, links.device_index(device), direction, name=probe.function)
        if probe.kind == "socket":
            return links.socket_filter(fd, int(probe.target))
        target = probe.target.partition(":")[0]
        return links.iterator(fd, target, map_fd=map_fd, pid=probe.pid or 0)
    except links.LinkError as e:
        raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})",
                          e.hint or _FD_HOOK_HINTS.get(probe.kind, ""),
                          probe=str(probe)) from None


def library(path: str) -> str:
    """A uprobe target as a path: ``c`` names libc, like bpftrace's ``uprobe:c:malloc``."""
    if "/" in path:
        return path
    name = f"lib{path}.so" if not path.startswith("lib") else path
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listing = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True,
                                 timeout=10).stdout
        for line in listing.splitlines():
            soname, arrow, where = line.partition("=>")
            if arrow and soname.strip().split(" ")[0].startswith(name):
                return where.strip()
    return path
