"""Probe listings and struct layouts checked against the kernel's and the ELF files' own view."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from ebpf_magic import discover, probes
from ebpf_magic.errors import ProbeSpecError
from ebpf_magic.kernel import btf, tracefs
from ebpf_magic.kernel import host as kernel

TRACEFS = tracefs.root()
needs_tracefs = pytest.mark.skipif(
    TRACEFS is None or not os.access(TRACEFS / "available_events", os.R_OK),
    reason="tracefs is not readable here (not mounted, or no rights)")
needs_btf = pytest.mark.skipif(not kernel.btf_available(), reason="the kernel has no BTF")

# two exported functions and one USDT probe, the note written as <sys/sdt.h> writes it
LIBRARY_C = r"""
int alpha(int x)
{
    __asm__ __volatile__(
        "990: nop\n"
        ".pushsection .note.stapsdt,\"\",@note\n"
        ".balign 4\n"
        ".4byte 992f-991f, 994f-993f, 3\n"
        "991: .asciz \"stapsdt\"\n"
        "992: .balign 4\n"
        "993: .8byte 990b\n"
        ".8byte 0\n"
        ".8byte 0\n"
        ".asciz \"testprov\"\n"
        ".asciz \"tick\"\n"
        ".asciz \"-4@%edi\"\n"
        "994: .balign 4\n"
        ".popsection\n");
    return x + 1;
}

int beta(int x) { return x * 2; }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("lib")
    (where / "probed.c").write_text(LIBRARY_C)
    out = where / "libprobed.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-nostdlib", "-O1", "-o", str(out),
                    str(where / "probed.c")], check=True)
    return out


@needs_tracefs
def test_syscall_enter_tracepoints_are_tracefs_directories():
    found = probes.find("tracepoint:syscalls:sys_enter_*")
    on_disk = sorted(d.name for d in (TRACEFS / "events" / "syscalls").iterdir()
                     if d.is_dir() and d.name.startswith("sys_enter_"))
    assert list(found["probe"]) == [f"tracepoint:syscalls:{n}" for n in on_disk]
    assert set(found["kind"]) == {"tracepoint"} and found["attachable"].all()


@needs_tracefs
def test_verbose_lists_exactly_the_format_files_fields():
    found = probes.find("tracepoint:syscalls:sys_enter_openat", verbose=True)
    assert list(found["probe"]) == ["tracepoint:syscalls:sys_enter_openat"]
    text = (TRACEFS / "events/syscalls/sys_enter_openat/format").read_text()
    decls = [m.group(1) for m in re.finditer(r"field:([^;]*);", text)
             if not m.group(1).split()[-1].startswith("common_")]
    assert [d.replace(" ", "") for d in found["args"][0].split("; ")] == \
        [d.replace(" ", "") for d in decls]
    assert "filename" in found["args"][0]


def test_uprobe_and_usdt_of_a_built_library(library):
    found = probes.find(f"uprobe:{library}:*")
    assert list(found["probe"]) == [f"uprobe:{library}:alpha", f"uprobe:{library}:beta"]
    assert list(probes.find(f"uprobe:{library}:b*")["probe"]) == [f"uprobe:{library}:beta"]
    notes = probes.find(f"usdt:{library}:*", verbose=True)
    assert list(notes["probe"]) == [f"usdt:{library}:testprov:tick"]
    assert list(notes["args"]) == ["-4@%edi"]


def test_library_names_resolve_as_attach_specs_do():
    found = probes.find("uprobe:c:getpid")
    assert list(found["probe"]) == ["uprobe:c:getpid"]
    with pytest.raises(ProbeSpecError, match="no library or binary 'nosuchlib'") as info:
        probes.find("uprobe:nosuchlib:*")
    assert "uprobe:c:" in info.value.hint


def test_usdt_of_a_running_python():
    python = "/usr/bin/python3"
    if not any(n.name == "function__entry" for n in discover.usdt_notes(os.path.realpath(python))):
        pytest.skip(f"{python} was built without USDT probes")
    proc = subprocess.Popen([python, "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(100):  # until the interpreter is mapped
            if "python" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
            time.sleep(0.02)
        found = probes.find(f"usdt:{proc.pid}:*function__entry", verbose=True)
    finally:
        proc.kill()
        proc.wait()
    assert len(found) == 1
    assert found["probe"][0].endswith(":python:function__entry")
    assert found["probe"][0].startswith(f"usdt:{os.path.realpath(python)}")


def test_summary_counts_kinds():
    table = probes.find()
    assert list(table.columns) == ["kind", "count", "attachable", "example"]
    rows = table.set_index("kind")
    assert rows.loc["software", "count"] == len(set(probes.SOFTWARE_EVENTS))
    assert rows.loc["xdp", "count"] == len(os.listdir("/sys/class/net"))
    assert rows.loc["kprobe", "attachable"] == kernel.kprobes_supported()


def test_devices_events_and_profile_forms():
    assert list(probes.find("xdp:*")["probe"]) == [f"xdp:{d}" for d in
                                                   sorted(os.listdir("/sys/class/net"))]
    assert list(probes.find("software:cpu*")["probe"]) == ["software:cpu", "software:cpu-clock",
                                                           "software:cpu-migrations"]
    assert list(probes.find("profile:hz*")["probe"]) == ["profile:hz:99"]


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ProbeSpecError, match="unknown probe kind 'tracepiont'"):
        probes.find("tracepiont:*")


def test_unreadable_tracefs_says_why(monkeypatch, tmp_path, shell, capsys):
    monkeypatch.setattr(tracefs, "root", lambda: tmp_path)
    with pytest.raises(discover.SourceUnavailable, match="cannot read .*available_events"):
        probes.find("tracepoint:*")
    # the magic says so in a line and the notebook goes on; the summary still counts the rest
    assert shell.run_line_magic("bpf", "probes tracepoint:syscalls:*") is None
    assert capsys.readouterr().out.startswith(f"cannot read {tmp_path}/available_events")
    rows = probes.find().set_index("kind")
    assert rows.loc["tracepoint", "example"].startswith("cannot read")
    assert rows.loc["xdp", "count"] == len(os.listdir("/sys/class/net"))


@needs_btf
def test_raw_tracepoints_and_kernel_functions_from_btf():
    spec = btf.vmlinux()
    found = probes.find("rawtracepoint:sched_switch", verbose=True)
    assert list(found["probe"]) == ["rawtracepoint:sched_switch"]
    proto = spec.resolve(spec.resolve(spec.find("btf_trace_sched_switch")[0].type).type)
    assert found["args"][0] == "; ".join(btf.c_decl(spec, p.type) for p in proto.params[1:])
    funcs = probes.find("kfunc:vfs_read", verbose=True)
    assert funcs["args"][0] == "struct file *file; char *buf; size_t count; loff_t *pos"
    assert not funcs["attachable"][0] or os.access(
        TRACEFS / "available_filter_functions", os.R_OK)


@needs_btf
def test_struct_offset_agrees_with_bpftool():
    table = btf.struct("task_struct")
    ours = int(table.loc[table["field"] == "tgid", "offset"].iloc[0])
    dump = subprocess.run(["bpftool", "btf", "dump", "file", btf.spec.VMLINUX, "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    block = re.search(r"\] STRUCT 'task_struct' size=\d+ vlen=\d+\n((?:\t.*\n)+)", dump).group(1)
    bits = int(re.search(r"'tgid' type_id=\d+ bits_offset=(\d+)", block).group(1))
    assert ours == bits // 8


@needs_btf
def test_struct_follows_members_and_pointers():
    outer = btf.struct("task_struct").set_index("field")
    se = btf.struct("task_struct.se")
    inner = btf.struct("sched_entity")
    assert list(se["field"]) == list(inner["field"])
    assert list(se["offset"]) == [o + outer.loc["se", "offset"] for o in inner["offset"]]
    assert list(btf.struct("task_struct.mm")["offset"]) == list(btf.struct("mm_struct")["offset"])
    assert btf.definition("list_head").splitlines() == [
        "struct list_head {", "\tstruct list_head *next;".ljust(48) + "/* 0 */",
        "\tstruct list_head *prev;".ljust(48) + "/* 8 */", "};"]
    with pytest.raises(btf.BTFError, match="task_struct has no member 'nope'"):
        btf.struct("task_struct.nope")
    with pytest.raises(btf.BTFError, match="task_struct.tgid is pid_t, not a struct"):
        btf.struct("task_struct.tgid.x")


@needs_tracefs
def test_probes_subcommand(shell):
    table = shell.run_line_magic("bpf", "probes 'tracepoint:syscalls:sys_enter_openat' -v")
    assert list(table["probe"]) == ["tracepoint:syscalls:sys_enter_openat"]
    with pytest.raises(UsageError, match="unrecognized arguments: extra"):
        shell.run_line_magic("bpf", "probes tracepoint:* extra")


@needs_tracefs
def test_probe_listing_shows_arguments_whole_and_text_left_aligned(shell):
    table = shell.run_line_magic("bpf", "probes 'tracepoint:sched:sched_switch' -v")
    args = "; ".join(f.decl for f in discover.tracepoint_fields("sched", "sched_switch"))
    assert len(args) > 60 and table["args"].tolist() == [args]
    html = table._repr_html_()
    assert f'<td style="text-align:left">{escape(args)}</td>' in html
    assert '<td style="text-align:left">tracepoint:sched:sched_switch</td>' in html
    assert args in repr(table)
    assert "tracepoint:alarmtimer" in repr(shell.run_line_magic("bpf", "probes"))  # no "..."
    none = shell.run_line_magic("bpf", "probes 'tracepoint:no_such_category:*'")
    assert none.empty and repr(none) == "no probe matches 'tracepoint:no_such_category:*'"
    assert none._repr_html_() == "<p>no probe matches &#x27;tracepoint:no_such_category:*&#x27;</p>"


@needs_tracefs
def test_probes_say_once_per_kind_why_rows_cannot_attach_and_can_leave_them_out(shell, capsys):
    capsys.readouterr()
    table = shell.run_line_magic("bpf", "probes '*openat*'")
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    cannot = list(dict.fromkeys(table.loc[~table["attachable"], "kind"]))
    assert notes == [f"note: {kind} rows cannot attach here: {discover.unattachable(kind)}; "
                     "--attachable leaves them out" for kind in cannot]
    if not kernel.kprobes_supported():
        assert "kprobe" in cannot
        assert "this kernel is built without kprobes (CONFIG_KPROBES is off)" in notes[0]
    shown = shell.run_line_magic("bpf", "probes '*openat*' --attachable")
    assert shown["probe"].tolist() == table.loc[table["attachable"], "probe"].tolist()
    assert shown["probe"].tolist() and shown["attachable"].all()
    assert not [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    kinds = shell.run_line_magic("bpf", "probes --attachable")
    assert kinds["attachable"].all() and "tracepoint" in kinds["kind"].tolist()


@needs_btf
def test_struct_of_a_field_that_is_no_struct_shows_that_fields_row(shell):
    whole = btf.struct("task_struct").set_index("field")
    tgid = btf.struct("task_struct.tgid")
    assert tgid.to_dict("records") == [{"field": "tgid", **whole.loc["tgid"].to_dict()}]
    shown = shell.run_line_magic("bpf", "struct task_struct.tgid")
    html = shown._repr_html_()
    assert html.count("<tr>") == 2 and '<td style="text-align:left">tgid</td>' in html
    assert btf.definition("task_struct.tgid") == \
        "\tpid_t tgid;".ljust(48) + f"/* {whole.loc['tgid', 'offset']} */"
    inner = btf.struct("sched_entity").set_index("field")
    vruntime = btf.struct("task_struct.se.vruntime")
    assert vruntime["offset"].tolist() == [whole.loc["se", "offset"] +
                                           inner.loc["vruntime", "offset"]]
    assert btf.struct("task_struct.comm")["c_type"].tolist() == ["char[16]"]


@needs_btf
def test_struct_subcommand(shell, capsys):
    table = shell.run_line_magic("bpf", "struct task_struct")
    assert "tgid" in list(table["field"])
    assert shell.run_line_magic("bpf", "struct list_head --c") is None
    assert capsys.readouterr().out.startswith("struct list_head {")


def test_help_unknown_and_unexpected_arguments(shell, capsys):
    shell.run_line_magic("bpf", "help")
    assert capsys.readouterr().out.strip() == shell.find_line_magic("bpf").__doc__.strip()
    with pytest.raises(UsageError, match="did you mean %bpf probes"):
        shell.run_line_magic("bpf", "probe")
    with pytest.raises(UsageError, match="(?s)takes no arguments.*%bpf probes PATTERN"):
        shell.run_line_magic("bpf", "list tracepoint:*open*")
    with pytest.raises(UsageError, match="unrecognized arguments: --force"):
        shell.run_line_magic("bpf", "doctor --force")
    with pytest.raises(UsageError, match="unrecognized arguments: x"):
        shell.run_line_magic("bpf", "help x")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_every_tracepoint_reader_reads_the_one_tracefs(monkeypatch, tmp_path):
    from ebpf_magic import suggest
    from ebpf_magic.kernel import link, tracefs
    from ebpf_magic.kernel.link.tracepoint import tracepoint_id

    (tmp_path / "available_events").write_text("sched:sched_switch\nsyscalls:sys_enter_zz\n")
    event = tmp_path / "events" / "syscalls" / "sys_enter_zz"
    event.mkdir(parents=True)
    (event / "id").write_text("4242\n")
    (event / "format").write_text(
        "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
        "\tfield:const char * filename;\toffset:16;\tsize:8;\tsigned:0;\n")
    (tmp_path / "available_filter_functions").write_text("zz_open\nzz_close [zzmod]\n")
    monkeypatch.setattr(tracefs, "root", lambda: tmp_path)
    discover.kernel_functions.cache_clear()
    try:
        assert discover.tracepoints() == ["sched:sched_switch", "syscalls:sys_enter_zz"]
        assert suggest.tracepoints() == ["sched:sched_switch", "syscalls:sys_enter_zz"]
        assert link.tracepoints("sys*:*zz") == [("syscalls", "sys_enter_zz")]
        assert tracepoint_id("syscalls", "sys_enter_zz") == 4242
        assert discover.tracepoint_fields("syscalls", "sys_enter_zz") == [
            discover.Field("filename", "const char *")]
        assert discover.kernel_functions() == ("zz_close", "zz_open")
        assert suggest.syscall_tracepoints("__x64_sys_zz", exit=False) == \
            ["syscalls:sys_enter_zz"]
    finally:
        discover.kernel_functions.cache_clear()
    monkeypatch.setattr(tracefs, "root", lambda: None)
    with pytest.raises(tracefs.NotMounted):
        tracefs.tracepoints()
    with pytest.raises(discover.SourceUnavailable, match="tracefs is not mounted"):
        discover.tracepoints()
    assert suggest.tracepoints() == []
    with pytest.raises(link.LinkError, match="tracefs is not mounted") as info:
        link.tracepoints("sched:*")
    assert "mount -t tracefs" in info.value.hint


def test_each_probe_says_its_sec_name():
    found = probes.find("tracepoint:syscalls:sys_enter_openat")
    assert list(found.columns) == ["probe", "kind", "attachable", "section"]
    assert found["section"][0] == "tracepoint/syscalls/sys_enter_openat"
    assert probes.find("xdp:lo")["section"][0] == "xdp"
    assert list(probes.find("tc:lo:*")["probe"]) == ["tc:lo:egress", "tc:lo:ingress"]
    libc = probes.find("uprobe:c:getpid")["section"][0]
    assert libc.startswith("uprobe//") and libc.endswith("libc.so.6:getpid")


def test_iterator_targets_from_btf():
    if discover.kernel_btf() is None:
        pytest.skip("the kernel has no BTF")
    found = probes.find("iter:task*", verbose=True).set_index("probe")
    assert {"iter:task", "iter:task_file", "iter:task_vma"} <= set(found.index)
    assert not [p for p in found.index if "__" in p]  # the verifier's variants are not targets
    assert found.loc["iter:task", "section"] == "iter/task"
    assert "struct task_struct * task" in found.loc["iter:task", "args"]
