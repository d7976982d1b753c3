"""Writing files: never through a link planted at the target or beside it, all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from ebpf_magic.internal import files


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of someone else's that a planted link points at."""
    path = tmp_path / "elsewhere" / "victim"
    path.parent.mkdir()
    path.write_text("untouched\n")
    path.chmod(0o600)
    return path


def test_write_replaces_a_link_at_the_target_instead_of_following_it(tmp_path, victim):
    target = tmp_path / "out.bin"
    target.symlink_to(victim)
    assert files.write(target, b"new") == target
    assert victim.read_text() == "untouched\n"
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out.bin"]


def test_write_never_opens_an_existing_name(tmp_path, victim, monkeypatch):
    """Every name it creates is new (O_EXCL): a link planted at the next one is skipped."""
    names = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".out.bin.planted.tmp").symlink_to(victim)
    files.write(tmp_path / "out.bin", "text")
    assert victim.read_text() == "untouched\n"
    assert (tmp_path / "out.bin").read_text() == "text"
    assert (tmp_path / ".out.bin.planted.tmp").is_symlink()


def test_write_modes_are_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        files.write(tmp_path / "shared", b"x")
        files.write(tmp_path / "private", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
    target = tmp_path / "kept"
    target.write_text("old")

    def fail(out):
        out.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_make_dirs_sets_modes_without_following_links(tmp_path, victim):
    made = files.make_dirs(tmp_path / "a" / "b", 0o755, levels=2)
    assert made == tmp_path / "a" / "b"
    for d in (made, made.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    (tmp_path / "link").symlink_to(victim.parent)
    victim.parent.chmod(0o700)
    with pytest.raises(OSError):
        files.make_dirs(tmp_path / "link", 0o755)
    assert stat.S_IMODE(victim.parent.stat().st_mode) == 0o700


def test_replace_dir_swaps_whole_trees(tmp_path, victim):
    target = tmp_path / "tree"

    def first(tmp: Path) -> None:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.h").write_text("1")
        (tmp / "link.h").symlink_to(victim)

    files.replace_dir(target, first)
    assert (target / "sub" / "a.h").read_text() == "1"
    assert stat.S_IMODE((target / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((target / "sub" / "a.h").stat().st_mode) == 0o644
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600  # a link in the tree is not chmodded
    files.replace_dir(target, lambda tmp: (tmp / "b.h").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b.h"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "tree"]

    def broken(tmp: Path) -> None:
        (tmp / "c.h").write_text("3")
        raise RuntimeError("bpftool failed")

    with pytest.raises(RuntimeError):
        files.replace_dir(target, broken)
    assert sorted(p.name for p in target.iterdir()) == ["b.h"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "tree"]


def test_recording_save_replaces_planted_links(tmp_path, victim):
    """Saving a recording where links were planted at its name and at the old fixed
    temporary name (``NAME.bpfrec.tmp``) writes neither link's target."""
    import ebpf_magic

    recordings = Path(__file__).resolve().parent.parent / "notebooks" / "recordings"
    prog = ebpf_magic.load(recordings / "hello.bpfrec")
    for name in ("hello.bpfrec", "hello.bpfrec.tmp"):
        (tmp_path / name).symlink_to(victim)
    saved = prog.save(tmp_path / "hello.bpfrec")
    assert victim.read_text() == "untouched\n"
    assert not saved.is_symlink()
    pd.testing.assert_frame_equal(ebpf_magic.load(saved).maps["calls"].df,
                                  prog.maps["calls"].df)


def test_spill_file_is_written_beside_a_planted_link(tmp_path, victim):
    from ebpf_magic.data.eventstore import ParquetSpill

    path = tmp_path / "events.parquet"
    path.symlink_to(victim)
    spill = ParquetSpill(path, lambda records: pd.DataFrame({"x": records}))
    spill.write(pd.Series(range(5)).to_numpy())
    assert path.is_symlink()  # in place only once complete
    spill.close()
    assert victim.read_text() == "untouched\n"
    assert pd.read_parquet(path)["x"].tolist() == [0, 1, 2, 3, 4]


# Functions that write with plain calls, each into a private directory it (or the
# replace_dir() building it) has just made, which no one else can have planted a link in.
PRIVATE_WRITERS = {
    ("ebpf_magic/backend/bcc/headers.py", "build"),
    ("ebpf_magic/backend/bcc/btftypes.py", "build"),
    ("ebpf_magic/backend/libbpf/_compile.py", "_compile_text"),
    ("ebpf_magic/backend/libbpf/_compile.py", "_compile_subset"),
    ("ebpf_magic/setup/kernelspec.py", "build"),
    ("ebpf_magic/bpftrace/shim.py", "build"),
}
PATH_WRITERS = {"write_text", "write_bytes"}  # Path methods: always by name
SHUTIL_WRITERS = {"copy", "copy2", "copyfile", "copytree", "move"}
# these take a file object or a name: a name when it is a literal or a variable of paths
FRAME_WRITERS = {"to_parquet", "to_csv", "to_json", "to_feather", "savefig"}


def _plain_writes(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of each call in ``path`` that writes a file by name."""
    import ast

    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            if isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                mode = next((a.value for a in child.args[1:2] if isinstance(a, ast.Constant)),
                            next((k.value.value for k in child.keywords if k.arg == "mode"
                                  and isinstance(k.value, ast.Constant)), "r"))
                receiver = f.value if isinstance(f, ast.Attribute) else None
                target = ast.unparse(child.args[0]) if child.args else ""
                if (called in PATH_WRITERS
                        or (called in SHUTIL_WRITERS and isinstance(receiver, ast.Name)
                            and receiver.id == "shutil")
                        or (called in FRAME_WRITERS and child.args and (
                            isinstance(child.args[0], ast.Constant) or "path" in target))
                        or (called == "open" and isinstance(mode, str)
                            and set(mode) & set("wax+"))):
                    found.append((function, child.lineno))
            visit(child, name)

    visit(ast.parse(path.read_text()), "")
    return found


def test_every_file_the_package_writes_goes_through_the_helper():
    """A plain open(..., "w"), write_text() or to_parquet(path) follows a link planted at
    its target: only internal/files.py and writers into private directories may call them."""
    root = Path(files.__file__).resolve().parents[2]
    offenders = []
    for path in sorted((root / "ebpf_magic").rglob("*.py")):
        rel = str(path.relative_to(root))
        if rel == "ebpf_magic/internal/files.py":
            continue
        offenders += [f"{rel}:{line} in {fn or 'module'}()" for fn, line in _plain_writes(path)
                      if (rel, fn) not in PRIVATE_WRITERS]
    assert not offenders, "write through ebpf_magic.internal.files instead: " + ", ".join(
        offenders)
