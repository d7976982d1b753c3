"""The BCC backend: the only module that touches BCC.

It compiles C with BCC, loads functions, attaches probes and describes maps
as :class:`~ebpf_magic.backend.MapHandle` objects with numpy dtypes. BCC's
diagnostics (printed by libbcc on file descriptor 2) are captured and turned
into the package's errors.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes as ct
import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import headers, kernel, sysbpf
from ..errors import (
    AttachError,
    BPFError,
    CompileError,
    HeadersMissingError,
    NotPrivilegedError,
    VerifierError,
)
from ..instrument import TYPE_PREFIX, TYPEDEF_PREFIX
from ..probes import Probe
from . import CompiledProgram, MapHandle
from .locate import import_bcc

# BPF program types (enum bpf_prog_type)
_PROG_TYPE = {"kprobe": 2, "kretprobe": 2, "uprobe": 2, "uretprobe": 2, "usdt": 2,
              "tracepoint": 5, "xdp": 6, "profile": 7, "software": 7, "hardware": 7,
              "rawtracepoint": 17}
_BPF_XDP_ATTACH = 37  # enum bpf_attach_type: BPF_XDP
_XDP_FLAGS = {"skb": 2, "drv": 4, "hw": 8}

_DIAG = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|fatal "
                   r"error): (?P<msg>.*)$")


class _Captured:
    text = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Capture what C code writes to file descriptor 2 (libbcc's diagnostics)."""
    out = _Captured()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace")


@functools.cache
def _bcc_class():
    """BCC, and its BPF class made to leave attaching to us; built once per process."""
    bcc = import_bcc()
    # libbcc functions BCC's Python module does not declare
    lib = bcc.libbcc.lib
    lib.bpf_num_tables.restype = ct.c_ulonglong
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_table_name.restype = ct.c_char_p
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_ulonglong]

    class _BPF(bcc.BPF):
        """BCC's BPF without auto-attach: the caller attaches, and can roll back."""

        def __init__(self, **kwargs):
            try:
                super().__init__(**kwargs)
            except BaseException:
                self.cleanup()
                atexit.unregister(self.cleanup)
                raise

        def _trace_autoload(self):
            pass

    return bcc, _BPF


def version() -> str:
    """The version of the BCC Python package in use; raises BCCNotFoundError without one."""
    return str(getattr(import_bcc(), "__version__", "unknown"))


def location() -> str:
    """The directory BCC's Python package was imported from."""
    return str(Path(import_bcc().__file__).parent)


class BccProgram(CompiledProgram):
    """A C source compiled and loaded by BCC."""

    def __init__(self, source: str, *, cflags: list[str], usdt: list[Probe],
                 filename: str = "cell", line_offset: int = 0) -> None:
        bcc, cls = _bcc_class()
        if not kernel.has_bpf_rights():
            raise NotPrivilegedError("Not allowed to load BPF programs: " +
                                     kernel.rights_summary(), kernel.rights_hint())
        self._bcc = bcc
        self._source = source
        self._xdp_links: dict[str, int] = {}
        # BCC keeps one descriptor per tracepoint name, so a second function on the
        # same tracepoint would overwrite (and leak) the first: we own them instead.
        self._tracepoint_fds: list[int] = []
        self._prog_fds: dict[str, int] = {}
        self.headers = headers.ensure()
        self.warnings = [self.headers.warning] if self.headers.warning else []
        if self.headers.path is None:
            raise HeadersMissingError("No kernel headers found to compile BPF C against.",
                                      headers.install_hint())
        kernel.ensure_tracefs()
        contexts = [self._usdt_context(p) for p in usdt]
        with captured_stderr() as err:
            try:
                self._bpf = cls(text=source.encode(), cflags=list(cflags),
                                usdt_contexts=contexts)
            except Exception as e:
                failure = e
            else:
                failure = None
        self.log = err.text
        if failure is not None:
            raise _compile_failure(failure, err.text, source, filename, line_offset) from None
        self.functions = [self._bcc.libbcc.lib.bpf_function_name(self._bpf.module, i).decode()
                          for i in range(self._bcc.libbcc.lib.bpf_num_functions(self._bpf.module))]
        for p in usdt:
            self._prog_fds[p.function] = self._bpf.funcs[p.function.encode()].fd

    def _usdt_context(self, probe: Probe):
        parts = probe.target.split(":")
        path, name = parts[0], ":".join(parts[1:])
        try:
            ctx = self._bcc.USDT(path=path, pid=probe.pid) if probe.pid else \
                self._bcc.USDT(path=path)
            ctx.enable_probe(probe=name, fn_name=probe.function)
        except Exception as e:
            raise AttachError(f"cannot attach {probe}: {e}",
                              "Check the binary path and the probe name (`readelf -n BINARY` "
                              "lists USDT notes); a probe in a shared library may need --pid.",
                              probe=str(probe)) from None
        return ctx

    # -- maps ---------------------------------------------------------------

    def maps(self) -> dict[str, MapHandle]:
        lib = self._bcc.libbcc.lib
        module = self._bpf.module
        declared = _declared_kinds(self._source)
        out = {}
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i).decode()
            fd = lib.bpf_table_fd(module, name.encode())
            if fd < 0:
                continue
            info = sysbpf.map_info(fd)
            key_dt = self._desc_dtype(lib.bpf_table_key_desc(module, name.encode()))
            val_dt = self._desc_dtype(lib.bpf_table_leaf_desc(module, name.encode()))
            if info.kind in ("queue", "stack", "ringbuf"):
                key_dt = None
            out[name] = MapHandle(name=name, fd=fd, kind=info.kind, key_dtype=key_dt,
                                  value_dtype=val_dt, max_entries=info.max_entries,
                                  key_size=info.key_size, value_size=info.value_size,
                                  declared=declared.get(name, ""), extra={"id": info.id})
        return out

    def _desc_dtype(self, desc: bytes | None) -> np.dtype | None:
        if not desc:
            return None
        try:
            ctype = self._bcc.BPF._decode_table_type(json.loads(desc.decode()))
            return np.dtype(ctype)
        except Exception:
            return None  # bitfields and other layouts numpy cannot express

    def event_dtype(self, map_name: str) -> np.dtype | None:
        lib = self._bcc.libbcc.lib
        module, name = self._bpf.module, map_name.encode()
        fields = []
        for i in range(lib.bpf_perf_event_fields(module, name)):
            text = lib.bpf_perf_event_field(module, name, i).decode()
            fname, _, ftype = text.partition("#")
            ctype = _event_field_ctype(ftype, self._described_ctype)
            if ctype is None:
                return None
            fields.append((fname, ctype))
        if not fields:
            return None
        return np.dtype(type("event", (ct.Structure,), {"_fields_": fields}))

    def _described_ctype(self, type_map: str):
        """The ctypes layout held by a hidden one-entry map describing a type."""
        desc = self._bcc.libbcc.lib.bpf_table_leaf_desc(self._bpf.module, type_map.encode())
        if not desc:
            return None
        try:
            return self._bcc.BPF._decode_table_type(json.loads(desc.decode()))
        except Exception:
            return None

    # -- attach -------------------------------------------------------------

    def _load(self, function: str, kind: str) -> int:
        if function not in self.functions:
            raise AttachError(f"no function {function!r} in the program",
                              f"Functions: {', '.join(self.functions)}")
        with captured_stderr() as err:
            try:
                fn = self._bpf.load_func(function.encode(), _PROG_TYPE[kind])
            except Exception as e:
                failure = e
            else:
                failure = None
        if failure is not None:
            raise _load_failure(function, failure, err.text) from None
        self._prog_fds[function] = fn.fd
        return fn.fd

    def attach(self, probe: Probe) -> list[str]:
        kind, fn = probe.kind, probe.function
        if kind == "usdt":
            return [str(probe)]  # attached at compile time, with the USDT contexts
        if kind in ("kfunc", "kretfunc", "lsm"):
            return self._attach_trampoline(probe)
        if kind == "xdp":
            return self._attach_xdp(probe)
        self._load(fn, kind)
        b, name = self._bpf, fn.encode()

        def do_attach():
            if kind == "tracepoint":
                if probe.wildcard:
                    b.attach_tracepoint(tp_re=probe.target_regex().encode(), fn_name=name)
                else:
                    b.attach_tracepoint(tp=probe.target.encode(), fn_name=name)
            elif kind in ("kprobe", "kretprobe"):
                method = b.attach_kprobe if kind == "kprobe" else b.attach_kretprobe
                if probe.wildcard:
                    method(event_re=probe.target_regex().encode(), fn_name=name)
                else:
                    method(event=probe.target.encode(), fn_name=name)
            elif kind == "rawtracepoint":
                b.attach_raw_tracepoint(tp=probe.target.encode(), fn_name=name)
            elif kind in ("uprobe", "uretprobe"):
                path, sym = probe.target.split(":", 1)
                method = b.attach_uprobe if kind == "uprobe" else b.attach_uretprobe
                method(name=path.encode(), sym=sym.encode(), fn_name=name,
                       pid=probe.pid if probe.pid else -1)
            elif kind in ("profile", "software", "hardware"):
                ev_type, config, rate = probe.perf_event
                b.attach_perf_event(ev_type=ev_type, ev_config=config, fn_name=name, **rate)
            else:
                raise AttachError(f"unknown probe kind {kind!r}")

        self._run_attach(probe, do_attach)
        if kind == "tracepoint":
            self._tracepoint_fds.extend(b.tracepoint_fds.values())
            b.tracepoint_fds.clear()
        return [str(probe)]

    def _attach_trampoline(self, probe: Probe) -> list[str]:
        method = {"kfunc": self._bpf.attach_kfunc, "kretfunc": self._bpf.attach_kretfunc,
                  "lsm": self._bpf.attach_lsm}[probe.kind]
        self._run_attach(probe, lambda: method(fn_name=probe.function.encode()))
        return [str(probe)]

    def _attach_xdp(self, probe: Probe) -> list[str]:
        dev, _, mode = probe.target.partition("@")
        fd = self._load(probe.function, "xdp")
        try:
            ifindex = int(Path(f"/sys/class/net/{dev}/ifindex").read_text())
        except OSError:
            devices = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") \
                else []
            raise AttachError(f"cannot attach {probe}: no network device {dev!r}",
                              f"Devices here: {', '.join(devices)}", probe=str(probe)) from None
        flags = _XDP_FLAGS.get(mode or "skb", 2)
        try:
            link = sysbpf.link_create(fd, ifindex, _BPF_XDP_ATTACH, flags)
        except OSError as e:
            hint = ("Another XDP program is attached to this device; detach it first "
                    f"(`ip link set dev {dev} xdp off`)." if e.errno == 16 else
                    "XDP needs CAP_NET_ADMIN and a kernel >= 5.9 for XDP links.")
            raise AttachError(f"cannot attach {probe}: {e.strerror}", hint,
                              probe=str(probe)) from None
        self._xdp_links[dev] = link
        return [str(probe)]

    def _run_attach(self, probe: Probe, action) -> None:
        with captured_stderr() as err:
            try:
                action()
            except Exception as e:
                failure = e
            else:
                failure = None
        if failure is not None:
            raise AttachError(f"cannot attach {probe}: {_attach_reason(probe, failure, err.text)}",
                              probe=str(probe)) from None

    def program_fds(self) -> dict[str, int]:
        return dict(self._prog_fds)

    def detach(self) -> None:
        for fd in self._tracepoint_fds:
            self._bcc.libbcc.lib.bpf_close_perf_event_fd(fd)
        self._tracepoint_fds.clear()
        for link in self._xdp_links.values():
            with contextlib.suppress(OSError):
                os.close(link)
        self._xdp_links.clear()
        bpf = getattr(self, "_bpf", None)
        if bpf is not None:
            with captured_stderr():
                for fds, undo in ((bpf.kprobe_fds, bpf.detach_kprobe_event),
                                  (bpf.uprobe_fds, bpf.detach_uprobe_event),
                                  (bpf.raw_tracepoint_fds, bpf.detach_raw_tracepoint),
                                  (bpf.kfunc_entry_fds, bpf.detach_kfunc),
                                  (bpf.kfunc_exit_fds, bpf.detach_kretfunc),
                                  (bpf.lsm_fds, bpf.detach_lsm)):
                    for key in list(fds):
                        undo(key)
                for ev_type, ev_config in list(bpf.open_perf_events):
                    bpf.detach_perf_event(ev_type, ev_config)

    def close(self) -> None:
        self.detach()
        bpf = getattr(self, "_bpf", None)
        if bpf is not None:
            with captured_stderr():
                bpf.cleanup()
            atexit.unregister(bpf.cleanup)
            self._bpf = None
        self._prog_fds.clear()


_DECLARED = re.compile(r"\bBPF_(HISTOGRAM|STACK_TRACE|STACK_TRACE_BUILDID)\s*\(\s*(\w+)")


def _declared_kinds(source: str) -> dict[str, str]:
    """Map names whose BCC declaration says more than the kernel type."""
    return {m.group(2): m.group(1).lower() for m in _DECLARED.finditer(source)}


_EVENT_CTYPES = {
    "char": ct.c_char, "s8": ct.c_int8, "signed char": ct.c_int8, "unsigned char": ct.c_uint8,
    "u8": ct.c_uint8, "short": ct.c_int16, "s16": ct.c_int16, "unsigned short": ct.c_uint16,
    "u16": ct.c_uint16, "int": ct.c_int32, "s32": ct.c_int32, "enum": ct.c_int32,
    "unsigned int": ct.c_uint32, "u32": ct.c_uint32, "long": ct.c_int64,
    "unsigned long": ct.c_uint64, "long long": ct.c_int64, "s64": ct.c_int64,
    "unsigned long long": ct.c_uint64, "u64": ct.c_uint64, "_Bool": ct.c_bool,
    "bool": ct.c_bool, "float": ct.c_float, "double": ct.c_double,
    "void *": ct.c_uint64, "char *": ct.c_uint64, "u8 *": ct.c_uint64,
    "__int128": ct.c_int64 * 2, "unsigned __int128": ct.c_uint64 * 2,
    "pid_t": ct.c_int32, "uid_t": ct.c_uint32, "gid_t": ct.c_uint32, "size_t": ct.c_uint64,
    "__u8": ct.c_uint8, "__u16": ct.c_uint16, "__u32": ct.c_uint32, "__u64": ct.c_uint64,
    "__s8": ct.c_int8, "__s16": ct.c_int16, "__s32": ct.c_int32, "__s64": ct.c_int64,
}
_ARRAY = re.compile(r"^(.*?) ?((?:\[\d+\])+)$")


def _event_field_ctype(ftype: str, described=None):
    ftype = ftype.strip()
    if ftype.startswith("enum "):
        ftype = "enum"
    m = _ARRAY.match(ftype)
    if m:
        base = _event_field_ctype(m.group(1), described)
        if base is None:
            return None
        for n in reversed([int(x) for x in re.findall(r"\d+", m.group(2))]):
            base = base * n
        return base
    if ftype in _EVENT_CTYPES or described is None:
        return _EVENT_CTYPES.get(ftype)
    if ftype.startswith("struct "):
        return described(TYPE_PREFIX + ftype[len("struct "):].strip())
    return described(TYPEDEF_PREFIX + ftype) if ftype.isidentifier() else None


def _compile_failure(exc: Exception, log: str, source: str, filename: str,
                     line_offset: int) -> BPFError:
    text = str(exc)
    if "privilege" in text.lower() or "Operation not permitted" in log:
        if not kernel.has_bpf_rights():
            return NotPrivilegedError("Not allowed to load BPF programs: " +
                                      kernel.rights_summary(), kernel.rights_hint())
    if "Unable to find kernel headers" in log or re.search(
            r"fatal error: '[^']*(linux|asm|kconfig)[^']*' file not found", log):
        return HeadersMissingError("Kernel headers are missing or incomplete for BCC.",
                                   headers.install_hint())
    if "Failed to compile" in text:
        diags = format_diagnostics(log, source, filename, line_offset)
        message = ("The C code did not compile:\n" + "\n".join(diags) if diags
                   else "The C code did not compile (the compiler printed nothing).")
        return CompileError(message, diagnostics=diags)
    if "Failed to load" in text or "bpf: Failed" in log:
        fn = re.search(r"program b?'?(\w+)", text)
        return _load_failure(fn.group(1) if fn else "?", exc, log)
    return BPFError(f"BCC failed: {text}", log.strip()[-2000:])


def format_diagnostics(log: str, source: str, filename: str, line_offset: int = 0) -> list[str]:
    """Compiler diagnostics with line numbers of the cell and the offending line.

    ``line_offset`` is added to the reported numbers (1 in a notebook, where the
    ``%%bpf`` line is the cell's first).

    BCC inserts generated code (tracepoint structs, USDT arguments) into the
    text it compiles, so the compiler's line numbers are mapped back to the
    cell by finding the quoted source line there.
    """
    cell = source.splitlines()
    lines = log.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        m = _DIAG.match(line)
        if not m or m.group("sev") == "warning":
            continue
        quoted = lines[i + 1] if i + 1 < len(lines) else ""
        number = _cell_line(quoted, int(m.group("line")), cell)
        if number is None:
            continue  # a diagnostic inside BCC's own headers
        out.append(f"{filename}, line {number + line_offset}: {m.group('sev')}: "
                   f"{m.group('msg')}")
        out.append(f"    {cell[number - 1].strip()}")
    if not out:
        errors = [ln for ln in lines if "error" in ln]
        out = errors[:10]
    return out


def _cell_line(quoted: str, reported: int, cell: list[str]) -> int | None:
    if quoted.strip():
        matches = [i + 1 for i, text in enumerate(cell) if text.rstrip() == quoted.rstrip()]
        if matches:
            return min(matches, key=lambda n: abs(n - reported))
        return None
    return reported if 1 <= reported <= len(cell) else None


def _load_failure(function: str, exc: Exception, log: str) -> BPFError:
    if not kernel.has_bpf_rights():
        return NotPrivilegedError("Not allowed to load BPF programs: " + kernel.rights_summary(),
                                  kernel.rights_hint())
    vlog = log.split("bpf: Failed to load program:", 1)[-1].strip()
    reason = str(exc).split(":")[-1].strip()
    tail = [ln for ln in vlog.splitlines() if ln.strip() and not ln.startswith("processed ")]
    decisive = "\n".join("    " + ln for ln in tail[-12:])
    return VerifierError(
        f"The kernel's verifier rejected {function}() ({reason}). The end of its log:\n"
        f"{decisive}",
        "The last lines name the instruction it refused; a common cause is reading memory "
        "without bpf_probe_read*() or a pointer that was not checked against NULL.",
        log=vlog, function=function)


def _attach_reason(probe: Probe, exc: Exception, log: str) -> str:
    text = (log.strip().splitlines() or [""])[-1] if log.strip() else ""
    return text or str(exc)


def symbolize_user(pid: int, addrs: list[int]) -> list[str | None]:
    """Function names of user-space addresses in process ``pid`` (None where unknown)."""
    bcc = import_bcc()
    names = []
    for addr in addrs:
        name = bcc.BPF.sym(addr, pid).decode("utf-8", "replace")
        names.append(None if name == "[unknown]" else name)
    return names
