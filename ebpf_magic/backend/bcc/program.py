"""A program BCC compiled and loaded in the worker, held and attached here by descriptor.

The worker (:mod:`.worker`) compiles and loads; this process receives the
program and map descriptors, describes the maps as
:class:`~ebpf_magic.backend.MapHandle` objects and attaches with
:mod:`ebpf_magic.kernel.link`. A crash of the compiler costs the cell, not the session.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable

import numpy as np

from ebpf_magic import backend as registry
from ebpf_magic import discover
from ebpf_magic.backend.base import ITERATORS, CompiledProgram, MapHandle
from ebpf_magic.backend.bcc import cached, client, headers, instrument, protocol
from ebpf_magic.backend.bcc.diagnostics import compile_failure, load_failure
from ebpf_magic.backend.bcc.locate import import_bcc
from ebpf_magic.errors import AttachError, BPFError, HeadersMissingError, NotPrivilegedError
from ebpf_magic.internal import settings
from ebpf_magic.kernel import host as kernel
from ebpf_magic.kernel import link, perfbuf, tracefs
from ebpf_magic.probes import Probe

# BPF program types (enum bpf_prog_type) by probe kind
_PROG_TYPE = {"kprobe": 2, "kretprobe": 2, "uprobe": 2, "uretprobe": 2, "usdt": 2,
              "tracepoint": 5, "xdp": 6, "profile": 7, "software": 7, "hardware": 7,
              "rawtracepoint": 17, "kfunc": 26, "kretfunc": 26, "lsm": 29, "tc": 3,
              "socket": 1}
_TRAMPOLINES = (26, 29)  # BPF_PROG_TYPE_TRACING, BPF_PROG_TYPE_LSM
RELEASE_WAIT = 1.0  # seconds close() waits for detached links to be released
# Compile against the part of the kernel's types (from BTF) a program needs, as the worker
# finds it; False: against the whole vmlinux.h (for comparison).
CUT_TYPES = True
# compile errors that the distribution's header files may cure where the BTF tree cannot
_NEEDS_HEADERS = re.compile(r"undeclared identifier|unknown type name|file not found|"
                            r"implicit declaration|incomplete (?:definition|type)|no member named")
_DECLARED = re.compile(r"\bBPF_(HISTOGRAM|STACK_TRACE|STACK_TRACE_BUILDID)\s*\(\s*(\w+)")
# BCC attaches functions named PREFIX + target by themselves (TRACEPOINT_PROBE and friends
# expand to such names)
_NAMED = [
    ("kprobe__", "kprobe"), ("kretprobe__", "kretprobe"), ("tracepoint__", "tracepoint"),
    ("raw_tracepoint__", "rawtracepoint"), ("kfunc__", "kfunc"), ("kretfunc__", "kretfunc"),
    ("lsm__", "lsm"),
]


def named_probe(function: str) -> Probe | None:
    """The probe BCC's naming conventions imply for ``function``, if any."""
    for prefix, kind in _NAMED:
        if function.startswith(prefix):
            target = function[len(prefix):]
            if kind == "tracepoint":
                target = target.replace("__", ":", 1)
            if kind in ("kfunc", "kretfunc") and target.startswith("vmlinux__"):
                target = target[len("vmlinux__"):]
            return Probe(kind, target, function)
    return None


def named_probes(functions: list[str]) -> list[Probe]:
    """The probes BCC's naming conventions imply for ``functions``, in their order."""
    return [p for p in map(named_probe, functions) if p is not None]


class BccProgram(CompiledProgram):
    """A C source compiled by BCC in the worker; its descriptors are owned here."""

    def __init__(self, source: str, *, cflags: list[str], usdt: list[Probe],
                 filename: str = "cell", line_offset: int = 0) -> None:
        if not kernel.has_bpf_rights():
            raise NotPrivilegedError("Not allowed to load BPF programs: " +
                                     kernel.rights_summary(), kernel.rights_hint())
        bcc = import_bcc()  # BCCNotFoundError here names the package to install
        # loss counters, type-describing maps, histogram kinds (see .instrument)
        self._prepared = instrument.prepare(source,
                                            count_perf=not perfbuf.lost_format_supported())
        self._source = source = self._prepared.text
        self._line_offset = line_offset
        self._worker = client.worker()
        self._id: int | None = None  # the compiled program waiting in the worker
        self._links: list[link.Link] = []
        self._prog_fds: dict[str, int] = {}
        self._maps: dict[str, MapHandle] = {}
        self._events: dict[str, np.dtype] = {}
        self._uprobes: dict[str, dict] = {}
        self._usdt: list[dict] = []
        self._refused: dict[str, dict] = {}
        self._loaded = False
        self.headers = headers.ensure()
        self.warnings = [self.headers.warning] if self.headers.warning else []
        self.notes: list[str] = []
        if self.headers.path is None:
            raise HeadersMissingError("No kernel headers found to compile BPF C against.",
                                      headers.install_hint())
        tracefs.ensure()
        key = self._worker.next_id()
        specs = [_usdt_spec(p) for p in usdt]
        request = {"op": "compile", "id": key, "source": source, "cflags": list(cflags),
                   "env": dict(os.environ), "usdt": specs}
        if CUT_TYPES and self.headers.source == headers.BTF_SOURCE:
            request["types"] = str(self.headers.path)
        if settings.cache and not specs:  # USDT arguments depend on the binaries
            request["cache"] = cached.key(bcc, source, cflags, request["env"])
        reply = self._compile(request)
        first = next((ln for ln in reply.get("log", "").splitlines() if "error:" in ln), "")
        if not reply["ok"] and reply["stage"] == "compile" and \
                self.headers.source == headers.BTF_SOURCE and _NEEDS_HEADERS.search(first):
            # Some programs need what only the headers have (an inline function, a macro
            # outside the tree's list): the distribution headers, with their warning. Any
            # other error is the cell's own, and shown as the kernel's own types gave it.
            env = {**request["env"], "BCC_KERNEL_SOURCE": str(self.headers.fallback)}
            retry = self._compile({**request, "env": env, "types": None,
                                   "cache": cached.key(bcc, source, cflags, env)
                                   if "cache" in request else None})
            if retry["ok"]:
                reply, self.headers = retry, self.headers.distro()
                self.warnings.append(
                    f"compiled against the {self.headers.release} kernel headers: with this "
                    f"kernel's own types (from BTF) it did not compile "
                    f"({first.split('error:', 1)[-1].strip()}), so its reads of kernel "
                    "structs (task_struct, sock, ...) can be wrong")
        self.log = reply.get("log", "")
        if not reply["ok"]:
            raise self._failure(reply, filename, line_offset)
        self._id = key
        self.cached = bool(reply.get("cached"))  # from the cache, not compiled now
        self.cut = bool(reply.get("cut"))  # against the part of vmlinux.h it needs
        self.functions: list[str] = list(reply["functions"])
        self.warnings += undecoded_warnings(reply.get("undecoded", {}), reply.get("events", {}),
                                            self._prepared)

    def _compile(self, request: dict) -> dict:
        reply, fds = self._worker.request(request)
        _close(fds)
        return reply

    def _failure(self, reply: dict, filename: str, line_offset: int) -> BPFError:
        if reply["stage"] == "usdt":
            return AttachError(f"cannot attach {reply['probe']}: {reply['error']}",
                               "Check the binary path and the probe name (`readelf -n BINARY` "
                               "lists USDT notes); a probe in a shared library may need --pid.",
                               probe=reply["probe"])
        if reply["stage"] == "compile":
            return compile_failure(reply["error"], reply["log"], self._source, filename,
                                   line_offset)
        if reply["stage"] == "load":
            return load_failure(reply["function"], reply["error"], reply["log"], self._source,
                                self.log, self._line_offset)
        return BPFError(f"the compiler refused the request: {reply['error']}",
                        "The compiler may have restarted in between; run the cell again.")

    def load(self, probes: list[Probe]) -> None:
        if self._loaded:
            return
        functions: dict[str, int] = {}
        uprobes: dict[str, list] = {}
        for p in probes:
            if p.function in self.functions and p.kind in _PROG_TYPE:
                functions.setdefault(p.function, _PROG_TYPE[p.kind])
            if p.kind in ("uprobe", "uretprobe"):
                path, sym = p.target.split(":", 1)
                uprobes[str(p)] = [path, sym, p.pid if p.pid else -1]
        key, self._id = self._id, None
        reply, fds = self._worker.request({"op": "load", "id": key,
                                           "functions": list(functions.items()),
                                           "uprobes": uprobes})
        try:
            if not reply["ok"]:
                raise self._failure(reply, "cell", 0)
            self._prog_fds = {name: fds[i] for name, i in reply["programs"].items()}
            self._refused = reply["failed"]
            for name, why in self._refused.items():
                if functions[name] not in _TRAMPOLINES:
                    raise load_failure(name, why["error"], why["log"], self._source, self.log,
                                       self._line_offset)
            declared = {m.group(2): m.group(1).lower() for m in _DECLARED.finditer(self._source)}
            for m in reply["maps"]:
                self._maps[m["name"]] = _handle(m, fds[m["fd"]], declared,
                                                self._prepared.hist_kinds)
        except BaseException:
            _close(fds)
            self._prog_fds.clear()
            self._maps.clear()
            raise
        self._events = {n: protocol.dtype_from_json(d) for n, d in reply["events"].items()}
        self._uprobes = reply["uprobes"]
        self._usdt = reply["usdt"]
        self.cached = bool(reply.get("cached"))
        self._loaded = True

    def implied_probes(self) -> list[Probe]:
        """The probes of functions named ``kprobe__FUNC``, ``tracepoint__CAT__NAME`` and such."""
        return named_probes(self.functions)

    # -- maps ---------------------------------------------------------------

    def maps(self) -> dict[str, MapHandle]:
        self._require_loaded()
        return dict(self._maps)

    def event_dtype(self, map_name: str) -> np.dtype | None:
        self._require_loaded()
        layout = self._events.get(map_name)
        reserved = self._prepared.reserved.get(map_name)
        if layout is None and reserved is not None:  # ringbuf_reserve(sizeof(struct X))
            typed = self._maps.get(self._prepared.type_maps.get(reserved, ""))
            layout = typed.value_dtype if typed is not None else None
        return layout

    def loss_counters(self) -> dict[str, str]:
        return dict(self._prepared.lost_maps)

    def hidden_maps(self) -> set[str]:
        return set(self._prepared.hidden)

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("load() the program's probes first")

    # -- attach -------------------------------------------------------------

    def attach(self, probe: Probe) -> list[str]:
        self._require_loaded()
        if probe.kind == "iter":
            other = registry.alternative(ITERATORS, "bcc")
            raise AttachError(f"cannot attach {probe}: BCC has no BPF iterators",
                              f"{other.offer.how[0].upper()}{other.offer.how[1:]}." if other
                              else "", probe=str(probe))
        fd = self._prog_fds.get(probe.function)
        refused = self._refused.get(probe.function)
        if fd is None and refused is not None:
            # fentry/fexit/LSM programs are checked against their target at load: that
            # refusal is this probe's attach failure.
            reason = (refused["log"].strip().splitlines() or [refused["error"]])[-1]
            raise AttachError(f"cannot attach {probe}: {reason}", probe=str(probe))
        if fd is None:
            raise AttachError(f"no function {probe.function!r} in the program",
                              f"Functions: {', '.join(self.functions)}", probe=str(probe))
        try:
            self._links.extend(self._link(probe, fd))
        except link.LinkError as e:
            # Without kprobes the caller knows better what to try (the syscall's tracepoint).
            hint = "" if probe.kind in ("kprobe", "kretprobe") else e.hint
            raise AttachError(f"cannot attach {probe}: {e.what}: {e.strerror}", hint,
                              probe=str(probe)) from None
        return [str(probe)]

    def _link(self, probe: Probe, fd: int) -> list[link.Link]:
        kind = probe.kind
        if kind == "tracepoint":
            if not probe.wildcard:
                category, name = probe.target.split(":", 1)
                return [link.tracepoint(fd, category, name)]
            found = link.tracepoints(probe.target)
            if not found:
                raise AttachError(f"cannot attach {probe}: no tracepoint matches "
                                  f"{probe.target!r}", probe=str(probe))
            return self._each(link.tracepoint(fd, c, n) for c, n in found)
        if kind in ("kprobe", "kretprobe"):
            retprobe = kind == "kretprobe"
            if not probe.wildcard:
                return [link.kprobe(fd, probe.target, retprobe=retprobe)]
            found = _kernel_functions(probe.target_regex())
            if not found:
                raise AttachError(f"cannot attach {probe}: no kernel function matches "
                                  f"{probe.target!r}", probe=str(probe))
            return self._each(link.kprobe(fd, f, retprobe=retprobe) for f in found)
        if kind == "rawtracepoint":
            return [link.raw_tracepoint(fd, probe.target)]
        if kind in ("kfunc", "kretfunc", "lsm"):
            return [link.raw_tracepoint(fd, None)]  # the target was fixed at load
        if kind in ("uprobe", "uretprobe"):
            where = self._uprobes.get(str(probe), {})
            if "error" in where or "path" not in where:
                reason = where.get("error") or "its address was not resolved"
                raise AttachError(f"cannot attach {probe}: {reason}", probe=str(probe))
            return [link.uprobe(fd, where["path"], where["offset"],
                                retprobe=kind == "uretprobe", pid=probe.pid or -1)]
        if kind == "usdt":
            # A semaphore-guarded probe fires only while its semaphore is non-zero:
            # the kernel counts it up for as long as the link holds (ref_ctr_offset).
            points = [u for u in self._usdt if u["function"] == probe.function]
            return self._each(link.uprobe(fd, u["path"], u["offset"], pid=u["pid"],
                                          ref_ctr_offset=u["ref_ctr_offset"]) for u in points)
        if kind in ("profile", "software", "hardware"):
            ev_type, config, rate = probe.perf_event
            return [link.perf_event(fd, ev_type, config, pid=probe.pid or -1, **rate)]
        if kind == "xdp":
            return [self._xdp(probe, fd)]
        if kind == "tc":
            device, _, direction = probe.target.partition(":")
            if not direction:
                raise AttachError(f"cannot attach {probe}: say which direction",
                                  f"-a tc:{device}:ingress or -a tc:{device}:egress",
                                  probe=str(probe))
            return [link.tc(fd, link.device_index(device), direction, name=probe.function)]
        if kind == "socket":
            return [link.socket_filter(fd, int(probe.target))]
        raise AttachError(f"unknown probe kind {kind!r}", probe=str(probe))

    def _each(self, links: Iterable[link.Link]) -> list[link.Link]:
        """Links made one by one; those made before a failure are closed with it."""
        made: list[link.Link] = []
        try:
            for one in links:
                made.append(one)
        except BaseException:
            link.close_all(made)
            raise
        return made

    def _xdp(self, probe: Probe, fd: int) -> link.Link:
        try:
            return link.xdp(fd, *link.xdp_device(probe.target))
        except link.LinkError as e:
            raise AttachError(f"cannot attach {probe}: {e.what} ({e.strerror})",
                              e.hint or "XDP needs CAP_NET_ADMIN and a kernel >= 5.9 for XDP "
                              "links.", probe=str(probe)) from None

    def program_fds(self) -> dict[str, int]:
        return dict(self._prog_fds)

    def detach(self) -> None:
        links, self._links = self._links, []
        link.close_all(links)

    def close(self) -> None:
        self.detach()
        # Detached perf events are freed one RCU grace period at a time in the background:
        # wait for a few, leave hundreds (a wildcard) to the link layer's releaser.
        link.wait_released(timeout=RELEASE_WAIT)
        _close(list(self._prog_fds.values()) + [m.fd for m in self._maps.values()])
        self._prog_fds.clear()
        self._maps.clear()
        key, self._id = self._id, None
        if key is not None:  # compiled, never loaded: the worker still holds it
            with contextlib.suppress(Exception):
                self._worker.request({"op": "drop", "id": key})


def undecoded_warnings(undecoded: dict[str, dict[str, str]], learned: dict[str, object],
                       prepared: instrument.Prepared) -> list[str]:
    """What to tell the user of each map or stream read as raw bytes because of its type.

    ``undecoded`` is the worker's ``{"maps": {name: why}, "events": {name: why}}``,
    ``learned`` the streams whose record type is known.
    """
    maps, events = undecoded.get("maps", {}), dict(undecoded.get("events", {}))
    out = [f"map {name!r} is read as raw bytes: its type could not be decoded ({why}). "
           f"Read it as bytes (.peek_raw(), .snapshot()) or declare the type without "
           f"bitfields." for name, why in maps.items() if name not in prepared.hidden]
    for ring, ctype in prepared.reserved.items():
        why = maps.get(prepared.type_maps.get(ctype, ""))
        if why and ring not in learned:
            events.setdefault(ring, f"{ctype}: {why.removeprefix('value: ')}")
    out += [f"stream {name!r} is read as raw bytes: its record type could not be decoded "
            f"({why}). Give its layout with .events[{name!r}].set_dtype(numpy dtype or "
            f"ctypes type)." for name, why in events.items()]
    return out


def _usdt_spec(probe: Probe) -> dict:
    parts = probe.target.split(":")
    return {"path": parts[0], "probe": ":".join(parts[1:]), "pid": probe.pid,
            "function": probe.function, "probe_text": str(probe)}


def _handle(desc: dict, fd: int, declared: dict[str, str],
            hist_kinds: dict[str, str]) -> MapHandle:
    name = desc["name"]
    return MapHandle.of_kernel_map(name, fd, protocol.dtype_from_json(desc["key"]),
                                   protocol.dtype_from_json(desc["value"]), backend="bcc",
                                   declared=declared.get(name, ""),
                                   hist_kind=hist_kinds.get(name, ""))


def _kernel_functions(regex: str) -> list[str]:
    """Kernel functions matching ``regex``: ftrace's attachable list, else kallsyms."""
    pattern = re.compile(regex)
    return [n for n in discover.kernel_functions() if pattern.match(n)]


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
