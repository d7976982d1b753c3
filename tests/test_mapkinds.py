"""The one table of map-kind traits, checked against maps the kernel makes of each kind."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

import ebpf_magic
from ebpf_magic.kernel import mapkinds, sysbpf

# kind: (key size, value size, max_entries, flags) the kernel accepts for a map of it
NO_PREALLOC = 1
CREATABLE = {
    "hash": (4, 8, 4, 0), "array": (4, 8, 4, 0), "percpu_hash": (4, 8, 4, 0),
    "percpu_array": (4, 8, 4, 0), "lru_hash": (4, 8, 4, 0), "lru_percpu_hash": (4, 8, 4, 0),
    "stack_trace": (4, 8 * 4, 4, 0), "lpm_trie": (8, 8, 4, NO_PREALLOC),
    "queue": (0, 8, 4, 0), "stack": (0, 8, 4, 0), "bloom_filter": (0, 8, 16, 0),
    "ringbuf": (0, 0, 4096, 0), "user_ringbuf": (0, 0, 4096, 0),
}


def _create(name: str, key_size: int | None = None) -> int:
    ksize, vsize, entries, flags = CREATABLE[name]
    return sysbpf.map_create(mapkinds.KINDS[name].type, ksize if key_size is None else key_size,
                             vsize, entries, flags)


def _lookup(fd: int, key: np.ndarray, size: int) -> tuple[bool, bytes]:
    """A lookup into a buffer of ``size`` 0xff bytes: whether it found the key, the buffer."""
    buf = np.full(size, 0xFF, np.uint8)
    try:
        return sysbpf.map_lookup(fd, key, buf), buf.tobytes()
    except OSError:
        return False, buf.tobytes()


def test_every_kernel_map_type_has_one_name():
    assert sorted(mapkinds.BY_TYPE) == list(range(1, 34))
    assert len(set(mapkinds.BY_TYPE.values())) == len(mapkinds.BY_TYPE)
    assert sysbpf.MapInfo(type=27).kind == "ringbuf" and mapkinds.type_name(99) == "type99"


def test_a_kind_the_table_lacks_has_plain_traits():
    traits = mapkinds.kind("type99")
    assert not (traits.keyless or traits.percpu or traits.array or traits.metadata_only)


def test_no_module_keeps_its_own_list_of_map_kinds():
    """Lists of kind names (``("queue", "stack", ...)``) live in kernel/mapkinds.py only."""
    root = Path(ebpf_magic.__file__).parent
    names = "|".join(sorted(mapkinds.KINDS, key=len, reverse=True))
    listing = re.compile(rf"[({{\[]\s*\"(?:{names})\"\s*,\s*\"(?:{names})\"")
    found = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py")
             if p.name != "mapkinds.py" for m in listing.finditer(p.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(CREATABLE))
def test_traits_are_what_the_kernel_does_with_a_map_of_that_kind(name):
    traits = mapkinds.kind(name)
    ksize, vsize, _, _ = CREATABLE[name]
    # the kernel refuses a keyless kind a key, and any other kind no key
    with pytest.raises(OSError) as refused:
        os.close(_create(name, key_size=4 if traits.keyless else 0))
    assert refused.value.errno == errno.EINVAL
    fd = _create(name)
    try:
        info = sysbpf.map_info(fd)
        assert (info.kind, info.key_size) == (name, ksize)
        if traits.keyless:
            return
        key = np.zeros(ksize, np.uint8)
        ncpus = sysbpf.possible_cpus()
        slot = -(-vsize // 8) * 8
        # arrays hold every index from creation; other maps hold nothing yet
        found, _ = _lookup(fd, key, slot * ncpus)
        assert found == traits.array
        updated = True
        try:
            sysbpf.map_update(fd, key, np.zeros(slot * ncpus, np.uint8))
        except OSError:
            updated = False
        assert updated == traits.updatable
        if updated:
            # per-CPU maps fill one 8-byte aligned slot per possible CPU, others one value
            _, buf = _lookup(fd, key, slot * ncpus + 8)
            written = len(buf) - len(buf.lstrip(b"\0")) if buf[0] == 0 else 0
            assert written == (slot * ncpus if traits.percpu else vsize)
        keys, values = np.zeros(8 * ksize, np.uint8), np.zeros(8 * slot * ncpus, np.uint8)
        out = ctypes.c_uint64()
        try:
            sysbpf.map_lookup_batch(fd, None, out, keys, values, 8)
            batch = True
        except OSError as e:
            batch = e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, 524)
        assert batch == traits.batch
    finally:
        os.close(fd)
