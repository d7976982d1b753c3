"""What the backends hand the rest of the package: map handles, notes, offers; nothing else.

Each backend knows only the contract of ``backend/base.py``: neither names the other, a
map's id, histogram kind and keyless-ness are fields of its handle from the moment the
backend makes it, and a note the session shows once carries its key (no text is parsed).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

import ebpf_magic
from ebpf_magic import backend
from ebpf_magic.backend import GLOBALS, ITERATORS, KERNEL_HEADERS, STRUCT_READS, Note
from ebpf_magic.kernel import sysbpf
from ebpf_magic.magics import cell as cell_magic
from ebpf_magic.program import Program

from conftest import bpftool_json

ROOT = Path(ebpf_magic.__file__).parent
_OK, _WHY = backend.available("libbpf")
needs_libbpf = pytest.mark.skipif(not _OK, reason=f"libbpf backend unavailable: {_WHY}")


def _sources(folder: str) -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text()
            for p in sorted((ROOT / folder).rglob("*.py"))}


def test_the_bcc_backend_names_no_other_backend():
    found = [f"{path}: {m.group(0)}" for path, text in _sources("backend/bcc").items()
             for m in re.finditer(r"(?i)libbpf|CORE_READ|SEC\(\"", text)]
    assert not found, "\n".join(found)


def test_the_neutral_contract_names_no_backend():
    """base.py and the registry name backends only in the registry's table of modules."""
    for path in ("backend/base.py", "backend/__init__.py"):
        text = (ROOT / path).read_text().split('"""', 2)[2]  # after the module docstring
        code = [ln for ln in text.splitlines() if not ln.startswith("_MODULES = ")]
        found = [ln for ln in code if re.search(r"(?i)libbpf|clang|CORE_READ", ln)]
        assert not found, f"{path}: {found}"


def test_another_backend_is_offered_through_the_registry():
    other = backend.alternative(STRUCT_READS, "bcc")
    assert other is not None and other.name == "libbpf"
    assert "BPF_CORE_READ" in other.offer.how and "apt-get install clang" in other.install
    assert backend.alternative(GLOBALS, "bcc").name == "libbpf"
    assert backend.alternative(ITERATORS, "bcc").name == "libbpf"
    assert backend.alternative(STRUCT_READS, "libbpf") is None  # BCC offers none of them


def test_a_note_is_its_text_everywhere_a_string_goes():
    note = Note("the whole text", kind=KERNEL_HEADERS, key="k", brief="short", see="Sec")
    assert str(note) == note == "the whole text" and json.dumps([note]) == '["the whole text"]'
    copy = pickle.loads(pickle.dumps(note))
    assert (copy, copy.kind, copy.key, copy.brief, copy.see) == (
        "the whole text", KERNEL_HEADERS, "k", "short", "Sec")
    plain = backend.as_note("x")
    assert (plain.kind, plain.key, plain.brief) == (backend.PLAIN, "", "x")


def _shown(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(cell_magic, "display", lambda data, raw: shown.append(data["text/plain"]))
    return shown


def test_a_keyed_note_is_shown_once_per_session_by_its_key(monkeypatch):
    shown = _shown(monkeypatch)
    warned: set[str] = set()
    machine = Note("any words at all", key="the machine", brief="said once")
    again = Note("other words, same key", key="the machine", brief="not said")
    cell_magic.report_warnings(warned, [machine, "cell warning"])
    cell_magic.report_warnings(warned, [again, "cell warning"])
    assert shown == ["note: said once", "warning: cell warning", "warning: cell warning"]
    assert warned == {"the machine"}


def test_warning_text_is_never_parsed(monkeypatch):
    """A plain warning that reads like the headers note is shown as it is, every time."""
    shown = _shown(monkeypatch)
    text = "Kernel headers for 9.9 are not installed; compiling against 1.0 headers (/x)."
    cell_magic.report_warnings(set(), [text])
    cell_magic.report_warnings(set(), [text])
    assert shown == [f"warning: {text}"] * 2


@pytest.mark.kernel
def test_bcc_handles_carry_id_histogram_kind_and_keyless():
    src = r"""
    BPF_HISTOGRAM(linear);
    BPF_HISTOGRAM(logs);
    BPF_QUEUE(queue, u64, 4);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        u64 one = 1;
        linear.increment(one);
        logs.increment(bpf_log2l(one));
        queue.push(&one, 0);
        return 0;
    }
    """
    with Program(src) as prog:
        handles = {n: m.handle for n, m in prog.maps.items()}
        ids = {m["name"]: m["id"] for m in bpftool_json("map", "show")}
        for name, h in handles.items():
            assert h.id == sysbpf.map_info(h.fd).id == ids[name[:15]]
        assert {n: h.hist_kind for n, h in handles.items()} == {
            "linear": "linear", "logs": "log2", "queue": ""}
        assert {n: h.keyless for n, h in handles.items()} == {
            "linear": False, "logs": False, "queue": True}
        assert handles["queue"].key_dtype is None


@needs_libbpf
@pytest.mark.kernel
def test_libbpf_handles_carry_id_and_keyless():
    src = r"""
    #include <vmlinux.h>
    #include <bpf/bpf_helpers.h>
    struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 4096); } events SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_QUEUE); __type(value, u64); __uint(max_entries, 4); }
        fifo SEC(".maps");
    struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, u32); __type(value, u64);
             __uint(max_entries, 4); } counts SEC(".maps");
    SEC("tracepoint/syscalls/sys_enter_getppid")
    int on_getppid(void *ctx) { u64 one = 1; bpf_map_push_elem(&fifo, &one, 0); return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    with Program(src) as prog:
        handles = {n: m.handle for n, m in prog.maps.items()}
        ids = {m["name"]: m["id"] for m in bpftool_json("map", "show")}
        assert {n: (h.keyless, h.id == ids[n]) for n, h in handles.items()} == {
            "events": (True, True), "fifo": (True, True), "counts": (False, True)}
        assert handles["counts"].key_dtype is not None and handles["fifo"].key_dtype is None
        assert prog.map_ids() == [h.id for h in handles.values()]
        os.getppid()
        assert prog.maps["fifo"].pop() == 1
