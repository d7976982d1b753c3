"""ctypes bindings to the system's ``libbpf.so.1``: the calls this backend makes, and its log.

libbpf reports through a process-wide print callback. Other users of the same
library in the process (BCC installs its own on every compile) replace it, so
:func:`logged` installs ours again around every call whose log we want.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import functools
import os
import threading
from collections.abc import Iterator

_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)


class ObjectOpenOpts(ct.Structure):
    """The leading fields of ``struct bpf_object_open_opts``."""

    _fields_ = [("sz", ct.c_size_t), ("object_name", ct.c_char_p)]


class UprobeOpts(ct.Structure):
    """``struct bpf_uprobe_opts`` (libbpf 1.1)."""

    _fields_ = [("sz", ct.c_size_t), ("ref_ctr_offset", ct.c_size_t),
                ("bpf_cookie", ct.c_uint64), ("retprobe", ct.c_bool),
                ("func_name", ct.c_char_p)]


_SIGNATURES = {
    "libbpf_set_print": (ct.c_void_p, [_PRINT_FN]),
    "libbpf_major_version": (ct.c_uint32, []),
    "libbpf_minor_version": (ct.c_uint32, []),
    "bpf_object__open_mem": (ct.c_void_p, [ct.c_void_p, ct.c_size_t, ct.POINTER(ObjectOpenOpts)]),
    "bpf_object__load": (ct.c_int, [ct.c_void_p]),
    "bpf_object__close": (None, [ct.c_void_p]),
    "bpf_object__btf": (ct.c_void_p, [ct.c_void_p]),
    "bpf_object__next_program": (ct.c_void_p, [ct.c_void_p, ct.c_void_p]),
    "bpf_object__next_map": (ct.c_void_p, [ct.c_void_p, ct.c_void_p]),
    "bpf_program__name": (ct.c_char_p, [ct.c_void_p]),
    "bpf_program__section_name": (ct.c_char_p, [ct.c_void_p]),
    "bpf_program__fd": (ct.c_int, [ct.c_void_p]),
    "bpf_program__set_autoload": (ct.c_int, [ct.c_void_p, ct.c_bool]),
    "bpf_program__type": (ct.c_int, [ct.c_void_p]),
    "bpf_program__set_type": (ct.c_int, [ct.c_void_p, ct.c_int]),
    "bpf_program__set_expected_attach_type": (ct.c_int, [ct.c_void_p, ct.c_int]),
    "bpf_program__attach": (ct.c_void_p, [ct.c_void_p]),
    "bpf_program__attach_tracepoint": (ct.c_void_p, [ct.c_void_p, ct.c_char_p, ct.c_char_p]),
    "bpf_program__attach_raw_tracepoint": (ct.c_void_p, [ct.c_void_p, ct.c_char_p]),
    "bpf_program__attach_kprobe": (ct.c_void_p, [ct.c_void_p, ct.c_bool, ct.c_char_p]),
    "bpf_program__attach_uprobe_opts": (ct.c_void_p, [ct.c_void_p, ct.c_int, ct.c_char_p,
                                                      ct.c_size_t, ct.POINTER(UprobeOpts)]),
    "bpf_program__attach_usdt": (ct.c_void_p, [ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_char_p,
                                               ct.c_char_p, ct.c_void_p]),
    "bpf_program__attach_perf_event": (ct.c_void_p, [ct.c_void_p, ct.c_int]),
    "bpf_link__destroy": (ct.c_int, [ct.c_void_p]),
    "bpf_map__name": (ct.c_char_p, [ct.c_void_p]),
    "bpf_map__fd": (ct.c_int, [ct.c_void_p]),
    "bpf_map__type": (ct.c_int, [ct.c_void_p]),
    "bpf_map__is_internal": (ct.c_bool, [ct.c_void_p]),
    "bpf_map__max_entries": (ct.c_uint32, [ct.c_void_p]),
    "bpf_map__set_max_entries": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
    "bpf_map__btf_key_type_id": (ct.c_uint32, [ct.c_void_p]),
    "bpf_map__btf_value_type_id": (ct.c_uint32, [ct.c_void_p]),
    "bpf_map__value_size": (ct.c_uint32, [ct.c_void_p]),
    "bpf_map__key_size": (ct.c_uint32, [ct.c_void_p]),
    "bpf_map__set_value_size": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
    "bpf_map__set_key_size": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
    "bpf_map__set_map_flags": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
    "bpf_map__initial_value": (ct.c_void_p, [ct.c_void_p, ct.POINTER(ct.c_size_t)]),
    "bpf_map__set_initial_value": (ct.c_int, [ct.c_void_p, ct.c_void_p, ct.c_size_t]),
    "btf__raw_data": (ct.c_void_p, [ct.c_void_p, ct.POINTER(ct.c_uint32)]),
}


class LibbpfMissing(OSError):
    """``libbpf.so.1`` cannot be loaded."""


@functools.cache
def lib() -> ct.CDLL:
    """The system's libbpf with the signatures this backend uses; loaded once."""
    try:
        handle = ct.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise LibbpfMissing(str(e)) from None
    for fn, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(handle, fn)
        f.restype, f.argtypes = restype, argtypes
    return handle


def version() -> str:
    """libbpf's version as ``MAJOR.MINOR``."""
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


_libc = ct.CDLL(None, use_errno=True)
_libc.vsnprintf.restype = ct.c_int
_libc.vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]
_log_lock = threading.RLock()
_log: list[str] = []


def _print(_level: int, fmt: bytes, args: int) -> int:
    buf = ct.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode("utf-8", "replace"))
    return 0


_PRINT = _PRINT_FN(_print)  # kept alive for the life of the process


@contextlib.contextmanager
def logged() -> Iterator[list[str]]:
    """Run libbpf calls with our print callback installed; yield the lines they printed."""
    with _log_lock:
        _log.clear()
        lines: list[str] = []
        lib().libbpf_set_print(_PRINT)
        try:
            yield lines
        finally:
            lines += "".join(_log).splitlines()
            _log.clear()


def last_errno() -> int:
    """errno as the last libbpf call of this thread left it (libbpf 1.x sets it on failure)."""
    return ct.get_errno()


def strerror(err: int) -> str:
    return os.strerror(err) if err else "unknown error"
