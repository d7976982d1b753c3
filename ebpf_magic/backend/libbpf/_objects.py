"""The maps and data sections of a libbpf object (a ``struct bpf_object *``, as an int).

Before load: map sizes (:func:`size_maps`, :func:`one_slot_per_cpu`), the global variables
of the data sections (:func:`data_sections`) and their initial values
(:func:`set_initial`). After load: the maps' handles (:func:`map_handles`).
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ebpf_magic.backend.base import GlobalVar, MapHandle, encode_globals
from ebpf_magic.backend.libbpf import _lib, _mapsizes
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import btf, mapkinds, sysbpf

_LIBBPF_OWN = ("__bpf_usdt_",)  # maps <bpf/usdt.bpf.h> declares for libbpf's bookkeeping
_DATA_SECTIONS = (".rodata", ".data", ".bss")  # and named ones: .data.NAME, .rodata.NAME
_PERF_EVENT_ARRAY = mapkinds.KINDS["perf_event_array"].type


def each_map(obj: int) -> Iterator[int]:
    """Every map of ``obj`` (``struct bpf_map *``), internal ones (data sections) too."""
    lib = _lib.lib()
    m = lib.bpf_object__next_map(obj, None)
    while m:
        yield m
        m = lib.bpf_object__next_map(obj, m)


def user_maps(obj: int) -> dict[str, int]:
    """The maps the source declares, by name (not the data sections' maps)."""
    lib = _lib.lib()
    return {lib.bpf_map__name(m).decode(): m for m in each_map(obj)
            if not lib.bpf_map__is_internal(m)}


def object_btf(obj: int) -> btf.Spec | None:
    """The object's BTF as libbpf holds it (after loading: with its fix-ups)."""
    lib = _lib.lib()
    handle = lib.bpf_object__btf(obj)
    if not handle:
        return None
    size = ct.c_uint32()
    raw = lib.btf__raw_data(handle, ct.byref(size))
    return btf.Spec.parse(ct.string_at(raw, size.value)) if raw else None


def btf_dtype(spec: btf.Spec | None, type_id: int, size: int | None) -> np.dtype | None:
    """The dtype of ``type_id`` if known and (when ``size`` is given) of that size."""
    if spec is None or not type_id:
        return None
    try:
        dt = btf.dtype(spec, type_id)
    except BPFError:
        return None
    return dt if size is None or dt.itemsize == size else None


def size_maps(obj: int, requested: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Set map attributes before load: those asked, then defaults (see :mod:`._mapsizes`);
    return notes on the defaults set."""
    lib = _lib.lib()
    found = user_maps(obj)
    decls = [_mapsizes.MapDecl(name, lib.bpf_map__type(m), lib.bpf_map__key_size(m),
                               lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m))
             for name, m in found.items()]
    changes, notes = _mapsizes.sizes(decls, requested)
    setters = {"max_entries": lib.bpf_map__set_max_entries,
               "value_size": lib.bpf_map__set_value_size,
               "key_size": lib.bpf_map__set_key_size, "map_flags": lib.bpf_map__set_map_flags}
    for name, attrs in changes.items():
        for attr, value in attrs.items():
            with _lib.logged() as log:
                rc = setters[attr](found[name], value)
            if rc:
                raise BPFError(f"libbpf could not set {name}.{attr} to {value}: "
                               f"{_lib.strerror(-rc)}", "\n".join(log[-4:]))
    return notes


def one_slot_per_cpu(obj: int) -> list[str]:
    """Give every perf event array a slot per possible CPU, before loading; return notes.

    A CPU without a slot cannot deliver (``bpf_perf_event_output`` fails there), and
    nothing would count what it drops.
    """
    lib, cpus = _lib.lib(), sysbpf.possible_cpus()
    notes = []
    for m in each_map(obj):
        size = lib.bpf_map__max_entries(m)
        if lib.bpf_map__type(m) == _PERF_EVENT_ARRAY and 0 < size < cpus:
            lib.bpf_map__set_max_entries(m, cpus)
            name = lib.bpf_map__name(m).decode()
            notes.append(f"{name}: max_entries {size} raised to {cpus}, one per CPU, "
                         "so that events on every CPU reach the buffer")
    return notes


def data_sections(obj: int) -> tuple[dict[str, int], list[GlobalVar]]:
    """The data sections' maps by section name, and the variables in them, from the
    object's BTF (descriptors not yet known: ``fd`` -1).

    Function-local statics (named ``function.variable``, e.g. bpf_printk's format) are the
    compiler's, not the program's globals.
    """
    lib, spec = _lib.lib(), object_btf(obj)
    sections: dict[str, int] = {}
    variables: list[GlobalVar] = []
    for m in each_map(obj) if spec is not None else ():
        type_id = lib.bpf_map__btf_value_type_id(m)
        sec = spec.type(type_id) if lib.bpf_map__is_internal(m) and type_id else None
        if sec is not None and sec.kind == "datasec" and sec.name.startswith(_DATA_SECTIONS):
            sections[sec.name] = m
            for info in sec.secinfo:
                var = spec.type(info.type)
                dt = btf_dtype(spec, var.type, None) if var.kind == "var" else None
                if dt is not None and "." not in var.name:
                    variables.append(GlobalVar(var.name, sec.name, info.offset, dt,
                                               btf.c_decl(spec, var.type)))
    return sections, variables


def set_initial(sections: Mapping[str, int], variables: list[GlobalVar],
                values: Mapping[str, Any]) -> list[str]:
    """Write ``values`` into their sections' initial images (before load only); return
    warnings on variables the compiler may have built into the code."""
    lib = _lib.lib()
    warnings = []
    images: dict[str, bytearray] = {}
    for var, raw in encode_globals(values, variables):
        if not var.writable and "volatile" not in var.c_type.split():
            warnings.append(f"{var.name} is const but not volatile, so clang may have built "
                            "its initial value into the code and setting it may change "
                            "nothing; declare it const volatile")
        image = images.get(var.section)
        if image is None:
            size = ct.c_size_t()
            data = lib.bpf_map__initial_value(sections[var.section], ct.byref(size))
            if not data:
                raise BPFError(f"libbpf holds no initial value for {var.section}",
                               f"{var.name} cannot be set before load.")
            image = images[var.section] = bytearray(ct.string_at(data, size.value))
        image[var.offset:var.offset + len(raw)] = raw
    for section, image in images.items():
        buf = (ct.c_char * len(image)).from_buffer(image)
        with _lib.logged() as log:
            rc = lib.bpf_map__set_initial_value(sections[section], buf, len(image))
        if rc:
            raise BPFError(f"libbpf could not set the initial value of {section}: "
                           f"{_lib.strerror(-rc)}", "\n".join(log[-4:]))
    return warnings


def map_handles(obj: int) -> dict[str, MapHandle]:
    """The handles of the loaded maps the source declares, by name."""
    lib, spec = _lib.lib(), object_btf(obj)
    out = {}
    for name, m in user_maps(obj).items():
        fd = lib.bpf_map__fd(m)
        if fd >= 0 and not name.startswith(_LIBBPF_OWN):
            key_dt = btf_dtype(spec, lib.bpf_map__btf_key_type_id(m), lib.bpf_map__key_size(m))
            val_dt = btf_dtype(spec, lib.bpf_map__btf_value_type_id(m),
                               lib.bpf_map__value_size(m))
            out[name] = MapHandle.of_kernel_map(name, fd, key_dt, val_dt, backend="libbpf")
    return out
