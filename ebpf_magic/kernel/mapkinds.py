"""What each kind of BPF map is, as the kernel defines it: the one table of map-kind traits.

Every part of the package that asks "has this map keys?", "one value per CPU?", "can a
histogram live in it?" asks :func:`kind`; nothing keeps its own list of map types.
``tests/test_mapkinds.py`` checks the traits against maps the kernel makes of each kind.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapKind:
    """The traits of one map type (``enum bpf_map_type``).

    ``keyless``: created with key size 0, its values are pushed and popped or streamed,
    never looked up by key (queue, stack, bloom filter, ring buffers).
    ``percpu``: a lookup returns one value per possible CPU, each in an 8-byte aligned slot.
    ``array``: keys are the indexes 0..max_entries-1, every one present from creation.
    ``batch``: BPF_MAP_LOOKUP_BATCH reads it.
    ``updatable``: user space sets its values by key with BPF_MAP_UPDATE_ELEM.
    ``metadata_only``: its values are the kernel's (descriptors, ids, per-object storage)
    or it holds no entries to list, so a listing shows its metadata only.
    ``storage``: local storage of an object (socket, inode, task, cgroup), looked up by the
    object's descriptor and never walked.
    ``stream``: a perf or ring buffer that programs submit events to.
    ``histogram``: a slot-indexed histogram (BCC's ``BPF_HISTOGRAM``) may live in it.
    """

    name: str
    type: int
    keyless: bool = False
    percpu: bool = False
    array: bool = False
    batch: bool = False
    updatable: bool = True
    metadata_only: bool = False
    storage: bool = False
    stream: bool = False
    histogram: bool = False


_KINDS = (
    MapKind("hash", 1, batch=True, histogram=True),
    MapKind("array", 2, array=True, batch=True, histogram=True),
    MapKind("prog_array", 3, array=True, metadata_only=True),
    MapKind("perf_event_array", 4, array=True, metadata_only=True, stream=True),
    MapKind("percpu_hash", 5, percpu=True, batch=True, histogram=True),
    MapKind("percpu_array", 6, percpu=True, array=True, batch=True, histogram=True),
    MapKind("stack_trace", 7, updatable=False),
    MapKind("cgroup_array", 8, array=True, metadata_only=True),
    MapKind("lru_hash", 9, batch=True, histogram=True),
    MapKind("lru_percpu_hash", 10, percpu=True, batch=True, histogram=True),
    MapKind("lpm_trie", 11, batch=True),
    MapKind("array_of_maps", 12, array=True, metadata_only=True),
    MapKind("hash_of_maps", 13, metadata_only=True),
    MapKind("devmap", 14, array=True, metadata_only=True),
    MapKind("sockmap", 15, metadata_only=True),
    MapKind("cpumap", 16, array=True, metadata_only=True),
    MapKind("xskmap", 17, array=True, metadata_only=True),
    MapKind("sockhash", 18, metadata_only=True),
    MapKind("cgroup_storage", 19),
    MapKind("reuseport_sockarray", 20, metadata_only=True),
    MapKind("percpu_cgroup_storage", 21, percpu=True),
    MapKind("queue", 22, keyless=True, updatable=False),
    MapKind("stack", 23, keyless=True, updatable=False),
    MapKind("sk_storage", 24, metadata_only=True, storage=True),
    MapKind("devmap_hash", 25, metadata_only=True),
    MapKind("struct_ops", 26),
    MapKind("ringbuf", 27, keyless=True, updatable=False, metadata_only=True, stream=True),
    MapKind("inode_storage", 28, metadata_only=True, storage=True),
    MapKind("task_storage", 29, metadata_only=True, storage=True),
    MapKind("bloom_filter", 30, keyless=True, updatable=False, metadata_only=True),
    MapKind("user_ringbuf", 31, keyless=True, updatable=False, metadata_only=True),
    MapKind("cgrp_storage", 32, metadata_only=True, storage=True),
    MapKind("arena", 33, keyless=True, updatable=False, metadata_only=True),
)

#: every map kind by name
KINDS: dict[str, MapKind] = {k.name: k for k in _KINDS}
#: map kind names by ``enum bpf_map_type``
BY_TYPE: dict[int, str] = {k.type: k.name for k in _KINDS}


def kind(name: str) -> MapKind:
    """The traits of map kind ``name``; a kind this table lacks has the plainest traits."""
    found = KINDS.get(name)
    return found if found is not None else MapKind(name, -1)


def type_name(map_type: int) -> str:
    """The name of ``enum bpf_map_type`` value ``map_type`` (``type33`` where unknown)."""
    return BY_TYPE.get(map_type, f"type{map_type}")
