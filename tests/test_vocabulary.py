"""One vocabulary in the public face: magic options named as Program's arguments, settings
as ``%config BPFMagics`` traitlets, ``%bpf save``/``load`` alike, and every old spelling
still working for one release with a FutureWarning (the warning IPython shows) naming the
new one."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import ebpf_magic
from ebpf_magic import sessions
from ebpf_magic.internal import settings
from ebpf_magic.magics import bpftrace as bpftrace_magic
from ebpf_magic.magics import cell

from conftest import settle

RECORDINGS = Path(__file__).resolve().parents[1] / "notebooks" / "recordings"


def no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


# -- %%bpf and %%bpftrace options -------------------------------------------------------

NEW_AND_OLD = [
    ("p --global a=1 --global b=x", "p --set a=1 --set=b=x", "globals", [("a", 1), ("b", "x")],
     "--set is deprecated .* write %%bpf --global"),
    ("p --targets all", "p --on all", "targets", "all", "write %%bpf --targets"),
    ("p --targets 0,1 --profile fleet", "p --on 0,1 --cluster fleet", "profile", "fleet",
     "write %%bpf --profile"),
]


@pytest.mark.parametrize(("new", "old", "dest", "value", "says"), NEW_AND_OLD)
def test_cell_options_have_their_argument_names_and_old_ones_warn(new, old, dest, value,
                                                                   says):
    assert getattr(no_warning(lambda: cell.parse(new)), dest) == value
    with pytest.warns(FutureWarning) as caught:
        assert getattr(cell.parse(old), dest) == value
    assert any(re.search(says, str(w.message)) for w in caught)


def test_define_has_a_long_name_beside_d():
    assert no_warning(lambda: cell.parse("p -D A=1 --define B --define=C=3")).defines == [
        "A=1", "B", "C=3"]


def test_old_names_are_read_only_as_options():
    """``--set`` inside another option's value is that value, not the option."""
    assert no_warning(lambda: cell.parse("p --cflags '--set x'")).cflags == ["--set", "x"]


def test_bpftrace_options_match_the_cluster_arguments():
    args = no_warning(lambda: bpftrace_magic.parse("t --targets all --profile fleet"))
    assert (args.targets, args.profile) == ("all", "fleet")
    with pytest.warns(FutureWarning) as caught:
        args = bpftrace_magic.parse("t --on 0 --cluster fleet")
    assert [str(w.message).split(" is ")[0] for w in caught] == [
        "%%bpftrace --on", "%%bpftrace --cluster"]
    assert (args.targets, args.profile) == ("0", "fleet")


def test_help_shows_the_new_names_only():
    help_text = cell.PARSER.format_help()
    for new in ("--global VAR=VALUE", "--define NAME[=VALUE]", "--targets TARGETS",
                "--profile PROFILE"):
        assert new in help_text
    for old in ("--set", "--on ", "--cluster"):
        assert old not in help_text
    assert "BCC's dialect or libbpf's CO-RE C" in cell.DOC
    assert "(BCC dialect)" not in (ebpf_magic.Program.__doc__ or "")


# -- settings -----------------------------------------------------------------------------


@pytest.fixture
def ipshell(monkeypatch):
    """A real IPython shell with the extension; library settings restored afterwards."""
    from IPython.core.interactiveshell import InteractiveShell

    for name in ("compile_timeout", "compile_memory", "cache"):
        monkeypatch.setattr(settings, name, getattr(settings, name))
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "ebpf_magic")
    yield sh
    sh.run_line_magic("unload_ext", "ebpf_magic")
    InteractiveShell.clear_instance()


def test_config_lists_every_setting_with_its_help(ipshell, capsys):
    ipshell.run_line_magic("config", "BPFMagics")
    out = capsys.readouterr().out
    for name, current in (("compile_timeout", "60.0"), ("compile_memory", str(4 << 30)),
                          ("cache", "True"), ("max_rows", "1000000"), ("cost_after", "3.0"),
                          ("costly_cpu_pct", "1.0")):
        assert f"BPFMagics.{name}=" in out
        assert f"Current: {current}" in out.split(f"BPFMagics.{name}=")[1].split("BPFMagics.")[0]


def test_config_sets_what_the_library_reads(ipshell):
    no_warning(lambda: ipshell.run_line_magic("config", "BPFMagics.compile_timeout = 120"))
    ipshell.run_line_magic("config", "BPFMagics.compile_memory = 1 << 30")
    ipshell.run_line_magic("config", "BPFMagics.cache = False")
    assert (settings.compile_timeout, settings.compile_memory, settings.cache) == (
        120.0, 1 << 30, False)


def test_config_by_the_old_class_name_warns_and_still_sets(ipshell):
    with pytest.warns(FutureWarning, match="write %config BPFMagics.NAME"):
        ipshell.run_line_magic("config", "BpfMagics.compile_timeout = 90")
    assert settings.compile_timeout == 90.0
    assert ipshell._ebpf_magics.compile_timeout == 90.0


def test_ipython_config_by_the_old_class_name_warns_and_still_sets(monkeypatch):
    """``c.BpfMagics.NAME`` in ipython_config.py, read as the extension loads."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.setattr(settings, "compile_timeout", settings.compile_timeout)
    config = Config()
    config.BpfMagics.compile_timeout = 77
    sh = InteractiveShell.instance(config=config)
    try:
        with pytest.warns(FutureWarning, match="write %config BPFMagics.NAME"):
            sh.run_line_magic("load_ext", "ebpf_magic")
        assert sh._ebpf_magics.compile_timeout == settings.compile_timeout == 77.0
    finally:
        sh.run_line_magic("unload_ext", "ebpf_magic")
        InteractiveShell.clear_instance()


def test_a_bad_setting_is_refused_and_changes_nothing(ipshell, caplog):
    ipshell.run_line_magic("config", "BPFMagics.compile_timeout = -1")
    assert settings.compile_timeout == 60.0
    assert "'compile_timeout' trait of a BPFMagics instance should not be less than 0.1" \
        in caplog.text


# -- ebpf_magic.save / load, is_live ------------------------------------------------------


def test_save_is_exported_beside_load(tmp_path):
    prog = ebpf_magic.load(RECORDINGS / "hello.bpfrec", "hello")
    path = no_warning(lambda: ebpf_magic.save(prog, tmp_path / "again.bpfrec"))
    again = ebpf_magic.load(path, "again")
    assert again.source == prog.source
    assert sorted(again.maps) == sorted(prog.maps)
    for name in prog.maps:
        assert again.maps[name].df.equals(prog.maps[name].df)


def test_is_live_is_a_bool_and_live_its_old_name(monkeypatch):
    monkeypatch.setenv(sessions.REPLAY_ENV, "1")
    assert no_warning(ebpf_magic.is_live) is False
    with pytest.warns(FutureWarning, match=r"ebpf_magic.live\(\) is deprecated.*is_live"):
        live = ebpf_magic.live
    assert live() is False and live is ebpf_magic.is_live


# -- %bpf load NAME [PATH] ----------------------------------------------------------------


def test_load_takes_name_then_path_like_save(ipshell):
    no_warning(lambda: ipshell.run_line_magic("bpf", f"load kinds {RECORDINGS}/kinds.bpfrec"))
    assert ipshell.user_ns["kinds"].name == "kinds"
    assert sorted(ipshell.user_ns["kinds"].maps) == ["by_fd", "by_size", "per_cpu", "sizes"]


def test_load_without_path_reads_the_recording_save_writes(ipshell, tmp_path):
    shutil.copy(RECORDINGS / "opens.bpfrec", tmp_path / "opens.bpfrec")
    sessions.set_recordings_dir(tmp_path)
    try:
        ipshell.run_line_magic("bpf", "load opens")
        assert ipshell.user_ns["opens"].recording.path == tmp_path / "opens.bpfrec"
        with pytest.raises(UsageError, match=r"there is no recording .*nothing\.bpfrec"):
            ipshell.run_line_magic("bpf", "load nothing")
    finally:
        sessions.set_recordings_dir(None)


def test_load_in_the_old_order_warns_and_still_loads(ipshell):
    with pytest.warns(FutureWarning, match="write %bpf load opens PATH"):
        ipshell.run_line_magic("bpf", f"load {RECORDINGS}/opens.bpfrec opens")
    assert ipshell.user_ns["opens"].name == "opens"


def test_load_reads_the_old_order_only_where_it_is_plain(ipshell, tmp_path, monkeypatch):
    """Two words that could each be a name: the one that is a file is the path."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(RECORDINGS / "opens.bpfrec", tmp_path / "rec")
    with pytest.warns(FutureWarning):
        ipshell.run_line_magic("bpf", "load rec opens")
    assert ipshell.user_ns["opens"].recording.path.name == "rec"
    with pytest.raises(UsageError, match=r"usage: %bpf load NAME \[PATH\]"):
        ipshell.run_line_magic("bpf", "load a/b c/d")


# -- the default max_rows reaches a live program ------------------------------------------

RING = """%%bpf {name} {options}-D PID={pid}
struct ev {{ u64 n; }};
BPF_RINGBUF_OUTPUT(events, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    if ((bpf_get_current_pid_tgid() >> 32) != PID) return 0;
    struct ev e = {{1}};
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}}"""


@pytest.mark.kernel
def test_max_rows_setting_caps_a_cell_s_streams_unless_the_line_says(no_leaks, shell):
    shell.run_line_magic("config", "BPFMagics.max_rows = 5")
    for name, options, kept in (("capped", "", 5), ("seven", "--max-rows 7 ", 7)):
        assert shell.run_cell(RING.format(name=name, options=options, pid=os.getpid())).success
        for _ in range(20):
            os.getppid()
        stream = shell.user_ns[name].events["events"]
        assert settle(lambda s=stream: s.stats["received"], 20) == 20
        assert len(stream.df) == kept
        assert stream.stats["dropped_cap"] == 20 - kept
        shell.run_line_magic("bpf", f"stop {name}")
