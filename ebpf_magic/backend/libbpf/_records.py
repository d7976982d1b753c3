"""The record type of each perf and ring buffer, carried in the program's own BTF.

A record is often a struct declared inside the function that submits it, and clang's
BTF leaves such types out (only the DWARF of ``-g`` has them). So at each submission
(``bpf_perf_event_output``, ``bpf_ringbuf_output``, ``bpf_ringbuf_reserve``) :func:`mark`
declares a static variable of the submitted type, ``__typeof__`` what the size argument
measures, in a section libbpf skips (:data:`SECTION`): clang writes the variable and its
type into the object's BTF, where :func:`record_types` reads them, each variable naming
its own type even where two functions declare different structs of one name. Nothing
refers to the variables, so the program's code is what it was; the text keeps its lines.
"""

from __future__ import annotations

import numpy as np

from ebpf_magic.backend.libbpf import _source
from ebpf_magic.errors import BPFError
from ebpf_magic.kernel import btf

SECTION = ".ebpf_magic.records"
PREFIX = "__ebpf_magic_rec_"


def mark(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with a typed marker at each submission, and ``{marker: map}``."""
    markers: dict[str, str] = {}
    out = text
    for i, site in reversed(list(enumerate(_source.submission_sites(text)))):
        name = f"{PREFIX}{i}"
        record = " ".join(site.record.split())  # no new lines: the cell's lines stay put
        out = (out[:site.start] + f"({{ static __typeof__({record}) {name} "
               f"__attribute__((used, section(\"{SECTION}\"))); " + out[site.start:site.end]
               + "; })" + out[site.end:])
        markers[name] = site.map
    return out, markers


def record_types(spec: btf.Spec | None, markers: dict[str, str]) -> dict[str, list]:
    """``{map: [dtype of each marker's type, None where it has none]}`` from ``spec``.

    A function-local static is named ``function.variable`` in BTF: the part after the
    last dot names the marker.
    """
    out: dict[str, list] = {}
    if spec is None or not markers:
        return out
    for sec in spec.find(SECTION, "datasec"):
        for info in sec.secinfo:
            var = spec.type(info.type)
            m = markers.get(var.name.rpartition(".")[2]) if var.kind == "var" else None
            if m is not None:
                out.setdefault(m, []).append(_dtype(spec, var.type))
    return out


def _dtype(spec: btf.Spec, type_id: int) -> np.dtype | None:
    try:
        return btf.dtype(spec, type_id)
    except BPFError:
        return None
