"""Compiled programs kept per user and loaded again when a cell runs unchanged.

A program from the cache counts and streams exactly as a freshly compiled one; the key
changes with the source, the flags, the kernel and the compiler; and root never uses an
entry that the kernel's account (or anyone else) could have written.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from ebpf_magic.backend import libbpf
from ebpf_magic.backend.bcc import cached
from ebpf_magic.backend.libbpf import _compile
from ebpf_magic.internal import cache, settings
from ebpf_magic.kernel import host
from ebpf_magic.program import Program

N = 40
ACCOUNT = "ebpf-kernel"

BCC_CELL = """\
struct rec { u32 pid; u32 n; };
BPF_HASH(calls, u32, u64);
BPF_PERF_OUTPUT(recs);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID) return 0;
    u64 zero = 0, *n = calls.lookup_or_try_init(&pid, &zero);
    if (!n) return 0;
    (*n)++;
    struct rec r = {pid, (u32)*n};
    recs.perf_submit(args, &r, sizeof(r));
    return 0;
}
"""

LIBBPF_CELL = """\
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, u32);
    __type(value, u64);
} calls SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 16);
} recs SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count(void *ctx)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid != PID)
        return 0;
    u64 zero = 0, *n;
    bpf_map_update_elem(&calls, &pid, &zero, BPF_NOEXIST);
    n = bpf_map_lookup_elem(&calls, &pid);
    if (!n)
        return 0;
    __sync_fetch_and_add(n, 1);
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct { u32 pid; u32 n; u32 parent; } *r = bpf_ringbuf_reserve(&recs, sizeof(*r), 0);
    if (!r)
        return 0;
    r->pid = pid;
    r->n = *n;
    r->parent = BPF_CORE_READ(task, real_parent, tgid);
    bpf_ringbuf_submit(r, 0);
    return 0;
}
"""

needs_libbpf = pytest.mark.skipif(not libbpf.available()[0],
                                  reason=f"libbpf backend unavailable: {libbpf.available()[1]}")


@pytest.fixture
def objects(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own; the directory compiled programs are kept in."""
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(settings, "cache", True)
    return tmp_path / "cache" / cache.OBJECTS


def _wait(stream, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while stream.received < want and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # anything beyond ``want`` would show up too


def _run(cell: str, **options) -> tuple[bool, dict, list[tuple]]:
    """Run ``cell`` for N getppid() calls: (from the cache?, the map, the records)."""
    me = os.getpid()
    with Program(cell, defines={"PID": me}, **options) as prog:
        from_cache = prog._compiled.cached
        for _ in range(N):
            os.getppid()
        stream = prog.events["recs"]
        _wait(stream, N)
        counts = {int(k): int(v) for k, v in zip(prog.maps["calls"].df["key"],
                                                  prog.maps["calls"].df["value"], strict=True)}
        rows = [tuple(int(x) for x in r) for r in
                stream.df[[c for c in ("pid", "n", "parent") if c in stream.df]].itertuples(
                    index=False)]
    return from_cache, counts, rows


def _expected(rows_of_parent: bool) -> list[tuple]:
    me, parent = os.getpid(), os.getppid()
    return [(me, i, parent) if rows_of_parent else (me, i) for i in range(1, N + 1)]


# -- the same maps and events, from the cache as freshly compiled ----------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["bcc", pytest.param("libbpf", marks=needs_libbpf)])
def test_a_cell_from_the_cache_counts_and_streams_as_compiled(objects, no_leaks, monkeypatch,
                                                             backend):
    cell = BCC_CELL if backend == "bcc" else LIBBPF_CELL
    first = _run(cell)
    second = _run(cell)
    monkeypatch.setattr(settings, "cache", False)
    fresh = _run(cell)
    assert (first[0], second[0], fresh[0]) == (False, True, False)
    for _cached, counts, rows in (first, second, fresh):
        assert counts == {os.getpid(): N}
        assert rows == _expected(backend == "libbpf")
    kind = cached.KIND if backend == "bcc" else _compile.OBJECTS
    assert len(list((objects / kind).iterdir())) == 1


# -- what the key is made of -----------------------------------------------------------------


@needs_libbpf
def test_libbpf_key_changes_with_source_flags_kernel_and_compiler(objects, monkeypatch,
                                                                 tmp_path):
    cell = LIBBPF_CELL.replace("PID", "1")

    def compiled(source: str, cflags=()) -> bool:
        return _compile.compile_cell(source, list(cflags)).cached

    assert not compiled(cell)
    assert compiled(cell)
    assert not compiled(cell.replace("1 << 16", "1 << 17"))  # the source
    assert not compiled(cell, ["-DUNUSED=1"])  # a flag
    assert compiled(cell) and compiled(cell, ["-DUNUSED=1"])
    build = host.build()
    monkeypatch.setattr(host, "build", lambda: build + " another kernel")
    assert not compiled(cell)  # the kernel
    monkeypatch.setattr(host, "build", lambda: build)
    wrapper = tmp_path / "clang"  # the same compiler under another name counts as another
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("clang")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("EBPF_MAGIC_CLANG", str(wrapper))
    assert not compiled(cell)  # the compiler
    assert compiled(cell)
    monkeypatch.delenv("EBPF_MAGIC_CLANG")
    assert compiled(cell)  # the first entry still stands


@pytest.mark.kernel
def test_bcc_key_changes_with_source_flags_kernel_and_compiler(objects, monkeypatch,
                                                               no_leaks):
    def compiled(source: str, cflags=()) -> bool:
        with Program(source, cflags=list(cflags), defines={"PID": 1}) as prog:
            return prog._compiled.cached

    assert not compiled(BCC_CELL)
    assert compiled(BCC_CELL)
    assert not compiled(BCC_CELL.replace("(*n)++", "(*n) += 1"))  # the source
    assert not compiled(BCC_CELL, ["-DUNUSED=1"])  # a flag
    build = host.build()
    monkeypatch.setattr(host, "build", lambda: build + " another kernel")
    assert not compiled(BCC_CELL)  # the kernel
    monkeypatch.setattr(host, "build", lambda: build)
    library = cached._library
    monkeypatch.setattr(cached, "_library", lambda bcc: library(bcc) + " another LLVM")
    assert not compiled(BCC_CELL)  # the compiler (BCC and the LLVM it links)
    monkeypatch.setattr(cached, "_library", library)
    assert compiled(BCC_CELL)


# -- nothing another user could have written --------------------------------------------------


def _account() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        pytest.skip(f"no account {ACCOUNT} (scripts/setup.sh creates it)")
    return entry.pw_uid, entry.pw_gid


def _plant(path: Path, how: str, uid: int, gid: int) -> None:
    """Leave ``path`` as the account could have: writable by others, or the account's own,
    or in a directory the account owns."""
    if how == "other-writable":
        path.chmod(0o666)
    elif how == "group-writable":
        path.chmod(0o660)
        os.chown(path, 0, gid)
    elif how == "the account's":
        os.chown(path, uid, gid)
    elif how == "in the account's directory":
        os.chown(path.parent, uid, gid)


PLANTED = ("other-writable", "group-writable", "the account's", "in the account's directory")


def _swap_in(entry: Path, cell: str, monkeypatch, elsewhere: Path) -> None:
    """Put in ``entry`` what running ``cell`` stores, as if someone wrote it there."""
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(elsewhere))
    _run(cell)
    [other] = (elsewhere / cache.OBJECTS / entry.parent.name).iterdir()
    entry.write_bytes(other.read_bytes())
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(entry.parent.parent.parent))


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["bcc", pytest.param("libbpf", marks=needs_libbpf)])
@pytest.mark.parametrize("how", ["root's own (the control)", *PLANTED])
def test_root_never_loads_a_program_the_account_could_have_written(objects, no_leaks, how,
                                                                   backend, monkeypatch,
                                                                   tmp_path):
    if os.geteuid() != 0:
        pytest.skip("root's side of the cache: run as root")
    uid, gid = _account()
    cell = BCC_CELL if backend == "bcc" else LIBBPF_CELL
    # What the account would put under the key of the cell root runs: a program that
    # counts every call twice.
    evil = cell.replace("(*n)++", "(*n) += 2").replace("__sync_fetch_and_add(n, 1)",
                                                       "__sync_fetch_and_add(n, 2)")
    assert evil != cell and _run(cell)[1] == {os.getpid(): N}
    [entry] = (objects / (cached.KIND if backend == "bcc" else _compile.OBJECTS)).iterdir()
    _swap_in(entry, evil, monkeypatch, tmp_path / "elsewhere")
    if how in PLANTED:
        _plant(entry, how, uid, gid)
    from_cache, counts, _rows = _run(cell)
    if how in PLANTED:
        assert not from_cache
        assert counts == {os.getpid(): N}  # the cell's own program
    else:  # the same entry, root's own and private: it is used, as the test relies on
        assert from_cache
        assert counts == {os.getpid(): 2 * N}


def test_trusted_is_this_user_s_and_root_s_own(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    uid, gid = _account()
    mine = tmp_path / "mine"
    mine.write_bytes(b"x")
    assert cache.trusted(mine)
    (tmp_path / "link").symlink_to(mine)
    assert cache.trusted(tmp_path / "link")
    for how in PLANTED:
        d = tmp_path / how.replace(" ", "_").replace("'", "")
        d.mkdir()
        f = d / "entry"
        f.write_bytes(b"x")
        _plant(f, how, uid, gid)
        assert not cache.trusted(f), how
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others may add, not replace
    (sticky / "root's").mkdir(mode=0o700)
    (sticky / "root's" / "entry").write_bytes(b"x")
    assert cache.trusted(sticky / "root's" / "entry")
    sticky.chmod(0o777)  # without the sticky bit, others could swap root's directory
    assert not cache.trusted(sticky / "root's" / "entry")


def test_entries_are_private_and_the_oldest_go(objects, monkeypatch):
    monkeypatch.setattr(cache, "MAX_OBJECTS", 3)
    for i in range(5):
        assert cache.store("kind", f"e{i}", cache.pack({"i": i}, b"blob"))
        os.utime(objects / "kind" / f"e{i}", (i, i))
    assert sorted(p.name for p in (objects / "kind").iterdir()) == ["e2", "e3", "e4"]
    assert cache.unpack(cache.lookup("kind", "e3")) == ({"i": 3}, b"blob")
    for p in (objects, objects / "kind"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
    assert stat.S_IMODE((objects / "kind" / "e3").stat().st_mode) == 0o600
    assert cache.unpack(b"not an entry") is None
    monkeypatch.setattr(settings, "cache", False)
    assert cache.lookup("kind", "e3") is None and not cache.store("kind", "e5", b"")


def test_a_header_tree_the_account_could_have_written_is_not_used(tmp_path, monkeypatch):
    from ebpf_magic.backend.bcc import headers

    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    uid, gid = _account()
    arch = tmp_path / "src" / "linux-headers-6.1.0-9-amd64"
    (arch / "include" / "linux").mkdir(parents=True)
    (arch / "include" / "linux" / "sched.h").write_text("/* real */\n")
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system")
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(tmp_path / "cache"))
    planted = tmp_path / "cache" / "headers" / arch.name
    (planted / "include" / "linux").mkdir(parents=True)
    (planted / "include" / "linux" / "sched.h").write_text("/* planted */\n")
    (planted / headers.STAMP).write_text("done\n")
    os.chown(planted, uid, gid)
    built = headers.merged_tree(arch, None)
    assert built == planted and (built / "include" / "linux" / "sched.h").read_text() == \
        "/* real */\n"
    assert os.stat(built).st_uid == 0


# -- the precompiled header for a cell that includes vmlinux.h itself ------------------------

INCLUDES = '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n'
BODY = ('SEC("tracepoint/syscalls/sys_enter_getppid")\n'
        "int f(void *ctx) { return 0; }\n")


def test_the_precompiled_header_stands_for_vmlinux_h_and_libbpf_s_headers_first():
    def precompiled(cell: str) -> bool:
        return _compile.prepare(cell).precompiled

    assert precompiled(BODY)  # no includes: the header is included for it
    assert precompiled("// a comment\n" + INCLUDES + "#include <bpf/usdt.bpf.h>\n" + BODY)
    assert precompiled('#include <vmlinux.h>\n#include "bpf/bpf_tracing.h"\n' + BODY)
    # something the headers could depend on comes first, or vmlinux.h is not first
    assert not precompiled("#define BPF_NO_GLOBAL_DATA\n" + INCLUDES + BODY)
    assert not precompiled("#include <bpf/bpf_helpers.h>\n#include \"vmlinux.h\"\n" + BODY)
    assert not precompiled(INCLUDES + "int x;\n#include <bpf/bpf_tracing.h>\n" + BODY)
    assert not precompiled("#include <linux/bpf.h>\n" + INCLUDES + BODY)


@needs_libbpf
def test_a_cell_clashing_with_a_header_it_did_not_include_still_compiles(objects, monkeypatch):
    monkeypatch.setattr(_compile, "SUBSET_TRIES", 0)  # the precompiled header, or none
    # bpf_core_read.h, in the precompiled header, declares this enum too
    cell = INCLUDES + "enum bpf_field_info_kind { MINE = 1 };\n" + BODY
    assert _compile.prepare(cell).precompiled
    assert _compile.compile_cell(cell, []).obj.startswith(b"\x7fELF")


# -- the confined kernel's cache is its own ------------------------------------------------

ACCOUNT_SPEC = "ebpf-cache-test"


@pytest.mark.kernel
def test_the_confined_kernel_keeps_its_programs_in_its_own_private_cache():
    import pwd
    import sys

    from test_kernelspec import execute, running_kernel

    from ebpf_magic.setup import kernelspec

    if os.geteuid() != 0:
        pytest.skip("only a kernel started by root changes user")
    uid, _gid = _account()
    home = Path(pwd.getpwuid(uid).pw_dir)
    objects = home / ".cache" / "ebpf_magic" / cache.OBJECTS / cached.KIND
    before = set(objects.iterdir()) if objects.exists() else set()
    roots = cache.SYSTEM_CACHE / cache.OBJECTS / cached.KIND
    roots_before = set(roots.iterdir()) if roots.exists() else set()
    kernelspec.install(ACCOUNT_SPEC, prefix=sys.prefix)
    cell = BCC_CELL.replace("PID", "1") + f"// {time.time_ns()}: a cell of its own\n"
    try:
        with running_kernel(ACCOUNT_SPEC) as (_, client, _pid):
            execute(client, "from ebpf_magic.program import Program")
            run = f"with Program({cell!r}) as p: print(p._compiled.cached)"
            runs = [execute(client, run).strip() for _ in range(2)]
    finally:
        kernelspec.uninstall(ACCOUNT_SPEC, prefix=sys.prefix)
    assert runs == ["False", "True"]
    [entry] = set(objects.iterdir()) - before
    info = entry.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o600)
    assert stat.S_IMODE(objects.stat().st_mode) == 0o700
    assert (set(roots.iterdir()) if roots.exists() else set()) == roots_before
    entry.unlink()


@pytest.mark.kernel
def test_a_kept_bcc_program_the_kernel_refuses_is_compiled_and_kept_anew(objects, no_leaks):
    assert _run(BCC_CELL)[0] is False
    [entry] = (objects / cached.KIND).iterdir()
    meta, _ = cache.unpack(entry.read_bytes())
    for function in meta["code"]["functions"].values():  # "exit" with r0 never set
        function["code"] = "95" + "00" * 7
    entry.write_bytes(cache.pack(meta))
    entry.chmod(0o600)
    from_cache, counts, rows = _run(BCC_CELL)
    assert not from_cache  # refused by the verifier: compiled instead
    assert counts == {os.getpid(): N} and rows == _expected(False)
    again = _run(BCC_CELL)  # and kept again, whole
    assert again == (True, {os.getpid(): N}, _expected(False))


def test_root_makes_no_cache_where_the_account_could_redirect_it(tmp_path, monkeypatch):
    from ebpf_magic.backend.bcc import headers

    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    uid, gid = _account()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, uid, gid)
    monkeypatch.setenv("EBPF_MAGIC_CACHE", str(theirs / "cache"))
    assert not cache.store("kind", "entry", b"x")
    arch = tmp_path / "src" / "linux-headers-6.1.0-9-amd64"
    (arch / "include").mkdir(parents=True)
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system")
    with pytest.raises(PermissionError):
        headers.merged_tree(arch, None)
    assert list(theirs.iterdir()) == []  # nothing made in it


def test_a_new_worker_removes_what_killed_workers_left_behind():
    import subprocess
    import tempfile

    from ebpf_magic.backend.bcc import client, worker
    from ebpf_magic.backend.bcc.locate import import_bcc
    from ebpf_magic.errors import BCCNotFoundError

    try:
        import_bcc()
    except BCCNotFoundError:
        pytest.skip("BCC is not installed")
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    folder = Path(tempfile.gettempdir())
    dead = folder / f"{worker._TYPES_FILE}{gone}-left.h"
    alive = folder / f"{worker._TYPES_FILE}{os.getpid()}-in-use.h"
    for path in (dead, alive):
        path.write_text("/* a part of vmlinux.h */\n")
    try:
        client.worker().close()  # the next request starts a new worker
        reply, _ = client.worker().request({"op": "ping"})
        assert reply["ok"]
        assert not dead.exists() and alive.exists()
    finally:
        for path in (dead, alive):
            path.unlink(missing_ok=True)
