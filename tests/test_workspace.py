"""The lab's working copy of the notebooks: kept up to date, the user's changes kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ebpf_magic.setup import workspace


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    src = tmp_path / "notebooks"
    (src / "recordings").mkdir(parents=True)
    for name in ("01_a.ipynb", "02_b.ipynb"):
        (src / name).write_text(json.dumps({"cells": [name]}))
    (src / "recordings" / "a.bpfrec").write_bytes(b"zip of a")
    (src / "refresh_recordings.py").write_text("root's script\n")
    return src


def test_first_start_copies_notebooks_and_recordings_only(checkout, tmp_path):
    lab = workspace.prepare(checkout, tmp_path / "lab")
    assert sorted(p.name for p in lab.iterdir() if not p.name.startswith(".")) == [
        "01_a.ipynb", "02_b.ipynb", "recordings"]
    assert (lab / "recordings" / "a.bpfrec").read_bytes() == b"zip of a"
    assert (lab / "01_a.ipynb").read_text() == (checkout / "01_a.ipynb").read_text()


def test_untouched_copies_follow_the_checkout_and_edited_ones_stay(checkout, tmp_path):
    lab = workspace.prepare(checkout, tmp_path / "lab")
    (lab / "02_b.ipynb").write_text("the user's work")
    (checkout / "01_a.ipynb").write_text("new version of a")
    (checkout / "02_b.ipynb").write_text("new version of b")
    (checkout / "recordings" / "a.bpfrec").write_bytes(b"refreshed a")
    (checkout / "03_c.ipynb").write_text("a new notebook")
    workspace.prepare(checkout, lab)
    assert (lab / "01_a.ipynb").read_text() == "new version of a"
    assert (lab / "02_b.ipynb").read_text() == "the user's work"
    assert (lab / "03_c.ipynb").read_text() == "a new notebook"
    assert (lab / "recordings" / "a.bpfrec").read_bytes() == b"refreshed a"
    (lab / "01_a.ipynb").unlink()  # deleted by the user: it comes back
    workspace.prepare(checkout, lab)
    assert (lab / "01_a.ipynb").read_text() == "new version of a"


def test_links_in_the_lab_are_replaced_not_followed(checkout, tmp_path):
    lab = workspace.prepare(checkout, tmp_path / "lab")
    victim = tmp_path / "victim"
    victim.write_text("someone else's")
    (lab / "01_a.ipynb").unlink()
    (lab / "01_a.ipynb").symlink_to(victim)
    (lab / "recordings" / "a.bpfrec").unlink()
    (lab / "recordings" / "a.bpfrec").symlink_to(victim)
    workspace.prepare(checkout, lab)
    assert victim.read_text() == "someone else's"
    assert not (lab / "01_a.ipynb").is_symlink()
    assert not (lab / "recordings" / "a.bpfrec").is_symlink()


def test_a_lab_folder_others_may_write_is_refused(checkout, tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    os.chmod(lab, 0o777)
    with pytest.raises(SystemExit, match="no one else"):
        workspace.prepare(checkout, lab)
    assert not (lab / "01_a.ipynb").exists()


def test_a_lab_folder_of_another_user_is_refused(checkout, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a folder of another user's needs root")
    lab = tmp_path / "lab"
    lab.mkdir(mode=0o755)
    os.chown(lab, 65534, 65534)
    with pytest.raises(SystemExit, match="uid 0"):
        workspace.prepare(checkout, lab)


def test_root_works_apart_from_the_checkout():
    if os.geteuid() != 0:
        pytest.skip("root's lab folder")
    assert workspace.default_dir() == Path("/var/lib/ebpf_magic/lab")
