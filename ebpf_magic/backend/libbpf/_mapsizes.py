"""Map attributes set between opening an object and loading it.

libbpf-style user space sizes some maps before loading them: a stack-trace map
declared with a key and no value size gets ``bpf_map__set_value_size(depth * 8)``,
a hash map with no ``max_entries`` gets the pid range. A cell sets them with
``--map NAME.max_entries=N`` (``Program(maps={"NAME": {"max_entries": N}})``);
what nobody sets gets a default here, with a note, instead of the kernel's EINVAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ebpf_magic.errors import BPFError
from ebpf_magic.suggest import near

ATTRIBUTES = ("max_entries", "value_size", "key_size", "map_flags")
STACK_DEPTH = 127  # frames (the kernel's PERF_MAX_STACK_DEPTH), 8 bytes each
DEFAULT_ENTRIES = 10240  # as BCC's BPF_HASH and friends default to
# map types (enum bpf_map_type) that need max_entries from their declaration
_SIZED = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 7: "stack_trace",
          9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie", 22: "queue", 23: "stack",
          30: "bloom_filter"}
STACK_TRACE = 7


@dataclass(frozen=True)
class MapDecl:
    """A map as the object declares it, before load."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int


def check(requested: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``requested`` with every attribute known and every value a positive whole number.

    Raises :class:`~ebpf_magic.errors.BPFError` saying what is allowed.
    """
    out: dict[str, dict[str, int]] = {}
    for name, attrs in requested.items():
        if not isinstance(attrs, Mapping):
            raise BPFError(f"map {name!r}: wants attributes as a dict, got {attrs!r}",
                           f"e.g. maps={{'{name}': {{'max_entries': 4096}}}}")
        for attr, value in attrs.items():
            if attr not in ATTRIBUTES:
                raise BPFError(f"map {name!r}: no attribute {attr!r} can be set",
                               f"Settable before load: {', '.join(ATTRIBUTES)}.")
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 <= value < 1 << 32 or (value == 0 and attr != "map_flags"):
                raise BPFError(f"map {name!r}: {attr} wants a whole number from 1 to 2**32-1, "
                               f"got {value!r}")
            out.setdefault(str(name), {})[attr] = value
    return out


def sizes(maps: list[MapDecl], requested: Mapping[str, Mapping[str, int]]
          ) -> tuple[dict[str, dict[str, int]], list[str]]:
    """``({map: {attribute: value}} to set, notes)``: what was asked, then the defaults.

    Raises :class:`~ebpf_magic.errors.BPFError` for a map the object does not declare.
    """
    names = [m.name for m in maps]
    for name in requested:
        if name not in names:
            close = near(name, names)
            raise BPFError(f"no map {name!r} in the program",
                           f"Its maps: {', '.join(close + [n for n in names if n not in close])}."
                           if names else "It declares no maps.")
    out = {name: dict(attrs) for name, attrs in requested.items()}
    notes = []
    for m in maps:
        asked = out.get(m.name, {})
        if m.type == STACK_TRACE and not m.value_size and "value_size" not in asked:
            out.setdefault(m.name, {})["value_size"] = STACK_DEPTH * 8
            notes.append(f"{m.name}: a stack-trace map without a value size holds "
                         f"{STACK_DEPTH} frames ({STACK_DEPTH * 8} bytes); --map "
                         f"{m.name}.value_size=N sets it")
        if m.type in _SIZED and not m.max_entries and "max_entries" not in asked:
            out.setdefault(m.name, {})["max_entries"] = DEFAULT_ENTRIES
            notes.append(f"{m.name}: no max_entries declared, {DEFAULT_ENTRIES} assumed; --map "
                         f"{m.name}.max_entries=N sets it")
    return out, notes
